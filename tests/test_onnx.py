"""The ONNX export (issue 20, item 2): tf2onnx's model of a frozen graph computes the session's outputs within the
export tolerance for MobileNet v1 and v2 and a ResNet; a graph holding an op tf2onnx cannot convert fails the ONNX
format alone, naming the op; without the onnx extra, export.onnx is one message naming the install.

The parity tests take scripts/onnx_families.py's check (random weights of a trained network's scale, BatchNorm
statistics of the batch, logits of a trained classifier's spread) on each family's own building blocks at tiny
sizes: MobileNet v1 is the tiny profile's test_mobilenet_v1 (its first three blocks), MobileNet v2 three of its
inverted residuals, the ResNet TF-Slim's resnet_v1 with two small bottleneck blocks. The full-size families are
the script's table in docs/export.md. The exporter's ONNX format on a trained model (the tiny run's) is checked in
tests/test_quantize.py's export, which publishes it beside the other float formats.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_script
from omegaconf import OmegaConf

from finetune.compat import tf, tf1
from finetune.config import BackboneConfig, ExportConfig, HeadConfig, LayerConfig
from finetune.export import exporter, onnx
from finetune.model.backbones import PREPROCESSORS
from finetune.model.head import build_head
from finetune.validate import check_export

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32
TOLERANCE = ExportConfig.parity_tolerance  # 1e-4
HEAD = OmegaConf.structured(HeadConfig(layers=[LayerConfig(type="global_avg_pool"), LayerConfig(type="dense")]))


families = load_script("onnx_families")


def _tower(features_of):
    """``input:0`` -> preprocessing -> ``features_of(images)`` -> the head -> ``logits:0``, ``probabilities:0``."""
    def build():
        pixels = tf1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="input")
        features = features_of(pixels)
        logits = build_head(features, HEAD, 5, is_training=False)
        return pixels, tf.identity(logits, name="logits"), tf.nn.softmax(logits, name="probabilities"), HEAD.scope
    return build


def _mobilenet_v1():
    """The tiny profile's MobileNet v1 (test_mobilenet_v1: the stem and three depthwise-separable blocks) as the
    export builds it."""
    from finetune.model.towers import build_export_tower

    backbone = OmegaConf.structured(BackboneConfig(name="test_mobilenet_v1", image_size=SIZE, cut="Conv2d_3_pointwise",
                                                   params={"depth_multiplier": 0.5}))
    tower = build_export_tower(backbone, HEAD, 5)
    return tower.pixels, tower.logits, tower.probabilities, HEAD.scope


def _mobilenet_v2_blocks(pixels):
    """MobileNet v2's stem and three inverted residuals (no expansion; expansion with stride 2; with the residual
    add), with its layer defaults."""
    import tf_slim as slim

    from finetune.model.backbones.mobilenet_v1 import mobilenet_arg_scope
    from finetune.model.backbones.mobilenet_v2 import inverted_residual

    end_points: dict = {}
    with tf1.variable_scope("MobilenetV2"), slim.arg_scope(mobilenet_arg_scope(False, 0.0, 0.997)):
        net = slim.conv2d(PREPROCESSORS["inception"](pixels), 16, [3, 3], stride=2, scope="Conv")
        net = inverted_residual(net, 1, 8, 1, "expanded_conv", end_points)
        net = inverted_residual(net, 6, 16, 2, "expanded_conv_1", end_points)
        return inverted_residual(net, 6, 16, 1, "expanded_conv_2", end_points)


def _resnet_v1_blocks(pixels):
    """TF-Slim's ResNet v1 (conv1, max pool, bottleneck units) with two small blocks, VGG preprocessing."""
    import tf_slim as slim
    from tf_slim.nets import resnet_utils, resnet_v1

    blocks = [resnet_v1.resnet_v1_block("block1", base_depth=8, num_units=2, stride=2),
              resnet_v1.resnet_v1_block("block2", base_depth=16, num_units=1, stride=1)]
    with slim.arg_scope(resnet_utils.resnet_arg_scope()):
        net, _ = resnet_v1.resnet_v1(PREPROCESSORS["vgg"](pixels), blocks, num_classes=None, is_training=False,
                                     global_pool=False, scope="resnet_v1_tiny")
    return net


@pytest.mark.parametrize("build", [_mobilenet_v1, _tower(_mobilenet_v2_blocks), _tower(_resnet_v1_blocks)],
                         ids=["mobilenet_v1", "mobilenet_v2", "resnet_v1"])
def test_onnx_matches_the_session(build, tmp_path):
    result = families.convert_and_compare(build, SIZE, tmp_path, TOLERANCE)
    assert result["converts"], result.get("why")
    assert result["logit_std"] == pytest.approx(families.LOGIT_SPREAD, rel=1e-3)  # logits that differ: it can fail
    assert result["logits_diff"] <= TOLERANCE and result["probabilities_diff"] <= TOLERANCE, result
    assert result["opset"] == onnx.OPSET


def _hsv_backbone(tmp_path: Path) -> Path:
    """A frozen backbone whose first layer is a colour-space conversion (RGBToHSV, which tf2onnx lacks)."""
    graph = tf.Graph()
    with graph.as_default():
        pixels = tf1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="input")
        hsv = tf.image.rgb_to_hsv(pixels / 255.0)
        kernel = tf.constant(0.1, tf.float32, [3, 3, 3, 8])
        tf.nn.relu(tf.nn.conv2d(hsv, kernel, 1, "SAME"), name="features")
    path = tmp_path / "hsv.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def test_an_op_tf2onnx_cannot_convert_fails_the_onnx_format_alone(tmp_path):
    from finetune.model.towers import build_export_tower

    backbone = OmegaConf.structured(BackboneConfig(
        name="frozen_graph", image_size=SIZE, cut="features:0",
        params={"graph": str(_hsv_backbone(tmp_path)), "input": "input:0", "preprocessing": "none"}))
    export_cfg = OmegaConf.structured(ExportConfig(onnx=True, saved_model=False))
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        build_export_tower(backbone, HEAD, 5)
        sess.run(tf1.global_variables_initializer())
        written = exporter.write_formats(sess, tmp_path, export_cfg, SIZE)
    assert [fmt.name for fmt in written.formats] == ["frozen", "optimized"]
    why = written.errors["onnx"]
    assert "RGBToHSV" in why and "\n" not in why
    assert not (tmp_path / "model.onnx").exists() and "onnx" not in written.details


def test_export_onnx_without_the_extra_names_the_install(monkeypatch):
    import finetune.validate

    monkeypatch.setattr(finetune.validate, "missing_packages", lambda modules: list(modules))
    (problem,) = check_export(OmegaConf.structured(ExportConfig(onnx=True)))
    assert "export.onnx" in problem and 'pip install "finetune[onnx]"' in problem and "tf2onnx" in problem
    assert check_export(OmegaConf.structured(ExportConfig(onnx=False))) == []


def test_the_onnx_extra_holds_what_export_onnx_needs():
    import tomllib

    from finetune.validate import ONNX_PACKAGES

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [requirement.split(">")[0] for requirement in extras["onnx"]] == list(ONNX_PACKAGES)
    assert "finetune[onnx]" in extras["test"]  # CI runs the ONNX tests
