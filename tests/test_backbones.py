"""Every registered backbone builds with the variable names and shapes of its model-zoo checkpoint.

Graph construction only (no session), except small numerical checks. Each distinct build (backbone,
classes, image size, parameters with their defaults filled in) is made once per test process:
``build`` is cached, and tests/test_endpoints.py reads its num_classes=0 builds from the same cache.
Building costs the same at any image size (graph construction, not arithmetic), so the builds keep
the published sizes.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from finetune.model.backbones import get_backbone, get_network_fn, list_backbones
from finetune.model.backbones.imported import IMPORTED_BACKBONES
from finetune.compat import tf, tf1
from finetune.errors import FinetuneError

# The published families (not the graph-file backbones, not the test_ models of the registry).
PUBLISHED = [name for name in list_backbones(imported=False) if not name.startswith("test_")]
# The 152-layer ResNets are built by the code that builds the 101-layer ones, with more units in blocks 2 and 3:
# their variable tables are checked against the published ones; the tests of building behaviour (end points, no
# classifier) take the 101 for them, as the largest builds of the suite.
BUILT_LIKE_ANOTHER = ("resnet_v1_152", "resnet_v2_152")
BEHAVIOUR = [name for name in PUBLISHED if name not in BUILT_LIKE_ANOTHER]

DATA = Path(__file__).parent / "data"
CONF = Path(__file__).parent.parent / "conf" / "backbone"

# Classes of the published checkpoints: background + 1000 for the Google-trained nets,
# 1000 for the nets converted from Caffe (VGG, ResNet v1).
ZOO_CLASSES = {
    "mobilenet_v1": 1001, "mobilenet_v2": 1001, "inception_v1": 1001, "inception_v2": 1001, "inception_v3": 1001,
    "resnet_v1_50": 1000, "resnet_v1_101": 1000, "resnet_v1_152": 1000,
    "resnet_v2_50": 1001, "resnet_v2_101": 1001, "resnet_v2_152": 1001,
    "vgg_16": 1000, "vgg_19": 1000,
}

# table -> (backbone, params). The zoo's inception_v3.ckpt holds the auxiliary head too.
TABLES: dict[str, tuple[str, dict[str, Any]]] = {
    "mobilenet_v1_1.0_224": ("mobilenet_v1", {}),
    "mobilenet_v2_1.0_224": ("mobilenet_v2", {}),
    "mobilenet_v2_1.4_224": ("mobilenet_v2", {"depth_multiplier": 1.4}),
    "inception_v1": ("inception_v1", {}),
    "inception_v2": ("inception_v2", {}),
    "inception_v3": ("inception_v3", {"create_aux_logits": True}),
    **{f"resnet_v{v}_{n}": (f"resnet_v{v}_{n}", {}) for v in (1, 2) for n in (50, 101, 152)},
    "vgg_16": ("vgg_16", {}),
    "vgg_19": ("vgg_19", {}),
}

# Checked by hand against the published architectures, independently of the generated tables.
# Counts: BatchNorm without scale adds 3 variables per conv (Inception), with scale 4 (others).
EXPECTED_COUNTS = {
    "mobilenet_v1_1.0_224": 27 * 5 + 2,                   # 27 conv layers with BN(scale), logits w+b
    "mobilenet_v2_1.0_224": 5 + 10 + 16 * 15 + 5 + 2,     # stem, block 0 (no expand), 16 blocks, Conv_1, logits
    "mobilenet_v2_1.4_224": 5 + 10 + 16 * 15 + 5 + 2,
    "inception_v1": 57 * 4 + 2,                           # 3 stem convs + 9 modules x 6 convs
    "inception_v2": 3 + 2 * 4 + 8 * 28 + 2 * 20 + 2,      # separable stem (no BN), 8 modules x 7, 2 reductions x 5
    "inception_v3": 94 * 4 + 10 + 2,                      # 94 convs, aux head (2 convs + logits), logits
    "resnet_v1_50": 5 + 16 * 15 + 4 * 5 + 2,              # conv1, units x 3 convs, 4 shortcuts, logits
    "resnet_v1_101": 5 + 33 * 15 + 4 * 5 + 2,
    "resnet_v1_152": 5 + 50 * 15 + 4 * 5 + 2,
    "resnet_v2_50": 2 + 16 * 16 + 4 * 2 + 4 + 2,          # conv1 w+b, units (preact + 2 BN convs + conv3 w+b),
    "resnet_v2_101": 2 + 33 * 16 + 4 * 2 + 4 + 2,         # shortcuts w+b, postnorm, logits
    "resnet_v2_152": 2 + 50 * 16 + 4 * 2 + 4 + 2,
    "vgg_16": 16 * 2,
    "vgg_19": 19 * 2,
}
HAND_CHECKED: dict[str, dict[str, list[int]]] = {
    "mobilenet_v1_1.0_224": {
        "MobilenetV1/Conv2d_0/weights": [3, 3, 3, 32],
        "MobilenetV1/Conv2d_7_depthwise/depthwise_weights": [3, 3, 512, 1],
        "MobilenetV1/Logits/Conv2d_1c_1x1/weights": [1, 1, 1024, 1001],
    },
    "mobilenet_v2_1.0_224": {
        "MobilenetV2/Conv/weights": [3, 3, 3, 32],
        "MobilenetV2/expanded_conv/project/weights": [1, 1, 32, 16],
        "MobilenetV2/expanded_conv_14/expand/weights": [1, 1, 160, 960],
        "MobilenetV2/expanded_conv_16/project/weights": [1, 1, 960, 320],
        "MobilenetV2/Conv_1/weights": [1, 1, 320, 1280],
        "MobilenetV2/Logits/Conv2d_1c_1x1/weights": [1, 1, 1280, 1001],
    },
    "mobilenet_v2_1.4_224": {  # 32*1.4 -> 48, 16*1.4 -> 24, 160*1.4 -> 224, 1280*1.4 -> 1792
        "MobilenetV2/Conv/weights": [3, 3, 3, 48],
        "MobilenetV2/expanded_conv/project/weights": [1, 1, 48, 24],
        "MobilenetV2/expanded_conv_14/project/weights": [1, 1, 1344, 224],
        "MobilenetV2/Logits/Conv2d_1c_1x1/weights": [1, 1, 1792, 1001],
    },
    "inception_v1": {  # GoogLeNet table 1: inception (4b) = 192 | 96 -> 208 | 16 -> 48 | 64
        "InceptionV1/Conv2d_1a_7x7/weights": [7, 7, 3, 64],
        "InceptionV1/Mixed_4b/Branch_0/Conv2d_0a_1x1/weights": [1, 1, 480, 192],
        "InceptionV1/Mixed_4b/Branch_1/Conv2d_0b_3x3/weights": [3, 3, 96, 208],
        "InceptionV1/Logits/Conv2d_0c_1x1/weights": [1, 1, 1024, 1001],
    },
    "inception_v2": {  # separable 7x7 stem (depth multiplier 8), 5c 1x1 branch 352
        "InceptionV2/Conv2d_1a_7x7/depthwise_weights": [7, 7, 3, 8],
        "InceptionV2/Conv2d_1a_7x7/pointwise_weights": [1, 1, 24, 64],
        "InceptionV2/Mixed_5c/Branch_0/Conv2d_0a_1x1/weights": [1, 1, 1024, 352],
        "InceptionV2/Logits/Conv2d_1c_1x1/weights": [1, 1, 1024, 1001],
    },
    "inception_v3": {  # factorised 1x7 in 6b (128 channels), 7c 1x1 branch 320, aux head on 768
        "InceptionV3/Conv2d_1a_3x3/weights": [3, 3, 3, 32],
        "InceptionV3/Mixed_6b/Branch_1/Conv2d_0b_1x7/weights": [1, 7, 128, 128],
        "InceptionV3/Mixed_7c/Branch_0/Conv2d_0a_1x1/weights": [1, 1, 2048, 320],
        "InceptionV3/AuxLogits/Conv2d_2b_1x1/weights": [1, 1, 768, 1001],
        "InceptionV3/Logits/Conv2d_1c_1x1/weights": [1, 1, 2048, 1001],
    },
    "resnet_v1_50": {  # bottleneck 512 -> 1024 at block 3; 3x3 conv of block 4 on 512
        "resnet_v1_50/conv1/weights": [7, 7, 3, 64],
        "resnet_v1_50/conv1/BatchNorm/gamma": [64],
        "resnet_v1_50/block3/unit_1/bottleneck_v1/shortcut/weights": [1, 1, 512, 1024],
        "resnet_v1_50/block4/unit_3/bottleneck_v1/conv2/weights": [3, 3, 512, 512],
        "resnet_v1_50/logits/weights": [1, 1, 2048, 1000],
    },
    "resnet_v1_101": {  # 23 units in block 3
        "resnet_v1_101/block3/unit_23/bottleneck_v1/conv3/weights": [1, 1, 256, 1024],
        "resnet_v1_101/logits/weights": [1, 1, 2048, 1000],
    },
    "resnet_v1_152": {  # 8 units in block 2, 36 in block 3
        "resnet_v1_152/block2/unit_8/bottleneck_v1/conv1/weights": [1, 1, 512, 128],
        "resnet_v1_152/block3/unit_36/bottleneck_v1/conv2/weights": [3, 3, 256, 256],
        "resnet_v1_152/logits/weights": [1, 1, 2048, 1000],
    },
    "resnet_v2_50": {  # pre-activation: biased stem conv without BN, final postnorm
        "resnet_v2_50/conv1/weights": [7, 7, 3, 64],
        "resnet_v2_50/conv1/biases": [64],
        "resnet_v2_50/block1/unit_1/bottleneck_v2/preact/gamma": [64],
        "resnet_v2_50/postnorm/gamma": [2048],
        "resnet_v2_50/logits/weights": [1, 1, 2048, 1001],
    },
    "resnet_v2_101": {
        "resnet_v2_101/block3/unit_23/bottleneck_v2/preact/beta": [1024],
        "resnet_v2_101/logits/weights": [1, 1, 2048, 1001],
    },
    "resnet_v2_152": {
        "resnet_v2_152/block3/unit_36/bottleneck_v2/conv2/weights": [3, 3, 256, 256],
        "resnet_v2_152/logits/weights": [1, 1, 2048, 1001],
    },
    "vgg_16": {  # fc6 as a 7x7 conv over pool5 (7x7x512)
        "vgg_16/conv1/conv1_1/weights": [3, 3, 3, 64],
        "vgg_16/conv5/conv5_3/weights": [3, 3, 512, 512],
        "vgg_16/fc6/weights": [7, 7, 512, 4096],
        "vgg_16/fc8/weights": [1, 1, 4096, 1000],
    },
    "vgg_19": {
        "vgg_19/conv3/conv3_4/weights": [3, 3, 256, 256],
        "vgg_19/conv5/conv5_4/weights": [3, 3, 512, 512],
        "vgg_19/fc8/weights": [1, 1, 4096, 1000],
    },
}
# Heads, other than the classifier, that num_classes=0 leaves out.
OTHER_HEADS = {"inception_v3": ("InceptionV3/AuxLogits/",)}

# Networks that build in well under a second on two CPU cores (VGG: 16 or 19 layers, no BatchNorm). Every
# other network takes one to fifteen seconds per build: its cases are in the slow tier (``-m "not slow"``
# leaves them out). Every test of one network is marked alike, because the builds are cached and shared:
# a fast case would otherwise pay for the build.
SMALL_NETWORKS = ("vgg_",)


def network_of(value: str) -> str:
    """The backbone a case names: by its own name, a variable table's or a backbone config's."""
    if value in TABLES:
        return TABLES[value][0]
    config = CONF / f"{value}.yaml"
    return yaml.safe_load(config.read_text())["name"] if config.exists() else value


def network_marks(network: str) -> list:
    """The marks of a case of ``network``: slow unless the network is small, and its xdist group, so that under
    ``pytest -n N --dist loadgroup`` every case of one network (here and in tests/test_endpoints.py) runs in
    one worker and reads the builds cached there."""
    return [pytest.mark.xdist_group(network), *([] if network.startswith(SMALL_NETWORKS) else [pytest.mark.slow])]


def tiered(cases: list) -> list:
    """``cases`` for ``parametrize``, with the marks of the network their first value names."""
    def values(case: Any) -> tuple:
        return case if isinstance(case, tuple) else (case,)
    return [pytest.param(*values(case), marks=network_marks(network_of(values(case)[0]))) for case in cases]


@dataclass(frozen=True)
class Built:
    """What the tests read of one build. The graph itself is not kept: a large net's holds some 30 MB."""

    output: list  # the network's output shape
    end_points: dict  # end point -> tensor name, in the network's order
    tensors: dict  # tensor name -> shape (None: an unknown rank), every tensor of the graph
    variables: dict  # name -> shape


def read_table(table: str) -> dict[str, list[int]]:
    rows = [line.split("\t") for line in (DATA / f"{table}.variables.tsv").read_text().splitlines()]
    assert all(dtype == "float32" for _, _, dtype in rows)
    assert [name for name, _, _ in rows] == sorted(name for name, _, _ in rows), "table not sorted by name"
    return {name: json.loads(shape) for name, shape, _ in rows}


@functools.lru_cache(maxsize=None)
def _build(name: str, num_classes: int, size: int, params: tuple) -> Built:
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [None, size, size, 3], name="images")
        output, end_points = get_network_fn(name, num_classes, is_training=False, **dict(params))(images)
        variables = {v.op.name: v.shape.as_list() for v in tf1.global_variables()}
    tensors = {t.name: None if t.shape.rank is None else t.shape.as_list()
               for op in graph.get_operations() for t in op.outputs}
    return Built(output.shape.as_list(), {key: t.name for key, t in end_points.items()}, tensors, variables)


def build(name: str, num_classes: int, size: int | None = None, **params: Any) -> Built:
    """``name`` with ``num_classes`` at ``size`` (default: the published size) and ``params``, built once: the
    parameters are keyed with their defaults filled in, so a config's ``depth_multiplier: 1.0`` and no
    parameter at all share one build."""
    info = get_backbone(name)
    merged = {**info.default_params, **params}
    return _build(name, num_classes, size or info.default_image_size, tuple(sorted(merged.items())))


def build_table_case(table: str) -> Built:
    name, params = TABLES[table]
    return build(name, ZOO_CLASSES[name], **params)


def resolves(cut: str, built: Built) -> bool:
    """``cut`` names an end point or a tensor of the build (``NAME`` meaning ``NAME:0``)."""
    return cut in built.end_points or (cut if ":" in cut else f"{cut}:0") in built.tensors


# --- variable tables ----------------------------------------------------------------------------
def test_every_backbone_has_a_table():
    assert {name for name, _ in TABLES.values()} == set(PUBLISHED)
    assert set(ZOO_CLASSES) == set(PUBLISHED)


@pytest.mark.parametrize("table", sorted(HAND_CHECKED))
def test_table_agrees_with_published_architecture(table):
    variables = read_table(table)
    assert len(variables) == EXPECTED_COUNTS[table]
    for name, shape in HAND_CHECKED[table].items():
        assert variables.get(name) == shape, name


@pytest.mark.parametrize("table", tiered(sorted(TABLES)))
def test_variables_match_table(table):
    expected = read_table(table)
    got = build_table_case(table).variables
    assert sorted(set(expected) - set(got)) == [], "missing from the graph"
    assert sorted(set(got) - set(expected)) == [], "not in the checkpoint"
    assert {k: v for k, v in got.items() if expected[k] != v} == {}, "shape mismatch"


# --- metadata -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", tiered(PUBLISHED))
def test_end_points_exist_in_network_order(name):
    info = get_backbone(name)
    table = next(table for table, (backbone, _) in TABLES.items() if backbone == name)
    built = build_table_case(table)
    keys = list(built.end_points)
    missing = [point for point in info.end_points if point not in built.end_points]
    assert missing == []
    positions = [keys.index(point) for point in info.end_points]
    assert positions == sorted(positions), "BackboneInfo.end_points not in network order"
    assert info.default_cut in info.end_points
    assert info.preprocessing in ("inception", "vgg")
    assert info.classifier_scope.startswith(info.scope + "/")
    assert all(var.startswith(info.scope + "/") for var in built.variables)


@pytest.mark.parametrize("name", tiered(BEHAVIOUR))
def test_num_classes_zero_returns_pooled_features_only(name):
    info = get_backbone(name)
    table = next(table for table, (backbone, _) in TABLES.items() if backbone == name)
    built = build(name, 0)
    heads = (info.classifier_scope + "/", *OTHER_HEADS.get(name, ()))
    assert [var for var in built.variables if var.startswith(info.classifier_scope + "/")] == []
    assert built.variables == {k: v for k, v in read_table(table).items() if not k.startswith(heads)}
    shape = built.output
    assert len(shape) == 4 and shape[1:3] == [1, 1], shape
    assert info.default_cut in built.end_points


# The imported backbones (meta_graph, frozen_graph): tests/test_imported_backbones.py.
REGISTERED_CONFIGS = sorted(path.stem for path in CONF.glob("*.yaml") if path.stem not in IMPORTED_BACKBONES)


@pytest.mark.parametrize("config", tiered(REGISTERED_CONFIGS))
def test_backbone_config_cut_resolves(config):
    cfg = yaml.safe_load((CONF / f"{config}.yaml").read_text())
    reference = yaml.safe_load((CONF / "mobilenet_v1.yaml").read_text())
    assert set(cfg) == set(reference)
    assert cfg["num_classes"] == 0 and cfg["batch_norm_training"] is False
    info = get_backbone(cfg["name"])
    assert cfg["image_size"] == info.default_image_size
    built = build(cfg["name"], 0, cfg["image_size"], **(cfg["params"] or {}))
    assert resolves(cfg["cut"], built), cfg["cut"]


def test_every_backbone_has_a_config():
    names = {yaml.safe_load((CONF / f"{config}.yaml").read_text())["name"] for config in REGISTERED_CONFIGS}
    assert names == set(PUBLISHED)


# --- MobileNet specifics ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("multiplier, size, stem, last", [
    (0.25, 128, 8, 256), (0.5, 160, 16, 512), (0.75, 192, 24, 768),
])
def test_mobilenet_v1_multipliers_and_sizes(multiplier, size, stem, last):
    built = build("mobilenet_v1", 1001, size, depth_multiplier=multiplier)
    assert built.variables["MobilenetV1/Conv2d_0/weights"] == [3, 3, 3, stem]
    assert built.variables["MobilenetV1/Conv2d_13_pointwise/weights"] == [1, 1, last, last]
    assert built.tensors[built.end_points["Conv2d_13_pointwise"]] == [None, size // 32, size // 32, last]
    assert built.output == [None, 1001]


@pytest.mark.slow
def test_mobilenet_v2_140_cut_tensor():
    built = build_table_case("mobilenet_v2_1.4_224")
    cut = "MobilenetV2/expanded_conv_14/output:0"
    assert built.tensors[cut] == [None, 7, 7, 224]
    assert built.end_points["expanded_conv_14"] == cut
    for tensor, shape in [
        ("MobilenetV2/input:0", [None, 224, 224, 3]),
        ("MobilenetV2/Conv_1/Relu6:0", [None, 7, 7, 1792]),
        ("MobilenetV2/Logits/output:0", [None, 1001]),
        ("MobilenetV2/Predictions/Reshape_1:0", [None, 1001]),
    ]:
        assert built.tensors[tensor] == shape


@pytest.mark.slow
def test_mobilenet_v2_inference_is_a_distribution():
    """MobileNet v2 0.35 at 96x96, random weights and images: finite logits, rows of Predictions sum to 1."""
    with tf.Graph().as_default():
        images = tf1.placeholder(tf.float32, [None, 96, 96, 3])
        network_fn = get_network_fn("mobilenet_v2", 1001, is_training=False, depth_multiplier=0.35)
        logits, end_points = network_fn(images)
        assert end_points["Conv"].shape.as_list() == [None, 48, 48, 16]  # 32*0.35 rounds up to 16
        assert end_points["Conv_1"].shape.as_list() == [None, 3, 3, 1280]  # not thinned below 1.0
        batch = np.random.default_rng(0).uniform(-1.0, 1.0, size=(4, 96, 96, 3)).astype(np.float32)
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            values, predictions = session.run([logits, end_points["Predictions"]], {images: batch})
    assert values.shape == (4, 1001) and np.isfinite(values).all()
    assert np.isfinite(predictions).all() and (predictions >= 0).all()
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)


# --- towers and errors --------------------------------------------------------------------------
@pytest.mark.parametrize("name, num_classes, size", tiered([
    ("mobilenet_v2", 0, 96), ("inception_v1", 0, 96), ("vgg_16", 0, 224), ("resnet_v2_50", 5, 64),
]))
def test_two_towers_share_variables(name, num_classes, size):
    """As the pipeline builds train and eval towers: name scopes differ, variables are reused."""
    info = get_backbone(name)
    with tf.Graph().as_default() as graph:
        counts, cuts = [], []
        for tower in ("train", "eval"):
            with tf1.name_scope(tower), tf1.variable_scope(tf1.get_variable_scope(), reuse=tf1.AUTO_REUSE):
                images = tf1.placeholder(tf.float32, [None, size, size, 3])
                output, end_points = get_network_fn(name, num_classes, is_training=False)(images)
            counts.append(len(tf1.global_variables()))
            cuts.append(end_points[info.default_cut])
            assert output.op.name.startswith(f"{tower}/{info.scope}/")
        assert counts[0] == counts[1]
        assert cuts[0].name.startswith("train/") and cuts[1].name.startswith("eval/")
        assert graph.get_tensor_by_name(cuts[1].name) is cuts[1]


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(FinetuneError) as error:
        get_backbone("mobilenet_v3")
    for name in list_backbones():
        assert name in str(error.value)


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(FinetuneError, match="weight_decay"):
        get_network_fn("resnet_v1_50", 0, depth_multiplier=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name, reference", [
    ("inception_v1", "InceptionV1/Logits/MaxPool_0a_7x7/AvgPool:0"), ("vgg_16", "vgg_16/fc7/Relu:0"),
])
def test_features_equal_those_of_the_full_tf_slim_net(name, reference):
    """num_classes=0 builds TF-Slim's trunk and pooling outside its net function: same numbers."""
    with tf.Graph().as_default() as graph:
        images = tf1.placeholder(tf.float32, [1, 224, 224, 3])
        get_network_fn(name, ZOO_CLASSES[name], is_training=False)(images)
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=True):
            features, _ = get_network_fn(name, 0, is_training=False)(images)
        statistics = [v for v in tf1.global_variables() if v.op.name.endswith(("moving_mean", "moving_variance"))]
        randomise = [v.assign(tf.random.uniform(v.shape, 0.5, 1.5, seed=1)) for v in statistics]
        batch = np.random.default_rng(0).uniform(-1.0, 1.0, size=(1, 224, 224, 3)).astype(np.float32)
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            session.run(randomise)
            ours, theirs = session.run([features, graph.get_tensor_by_name(reference)], {images: batch})
    np.testing.assert_array_equal(ours, theirs)


def test_the_list_checked_before_tensorflow_loads_is_the_registry():
    """validate.py checks backbone.name against vocab.BACKBONES (no TensorFlow); it must be the registry's
    names exactly, and every conf/backbone/*.yaml must name one of them."""
    from finetune import vocab

    assert sorted(vocab.BACKBONES) == list_backbones()
    named = {path.stem: yaml.safe_load(path.read_text())["name"] for path in CONF.glob("*.yaml")}
    assert named and all(name in vocab.BACKBONES for name in named.values()), named
