"""``python -m finetune.tools endpoints ... --all``: every registered backbone and both imported kinds list
their cut points with readable shapes, every end point shown and the configured cut marked.

The registered backbones come from the registry, so a new one is covered without editing this file.
Each is also built here, independently of the tool, to know its real end points.
"""
from __future__ import annotations

import re

import pytest
from conftest import compose_config, run_cli

from finetune import graphs
from finetune import freezing
from finetune.model.backbones import PREPROCESSORS, get_backbone, get_network_fn, list_backbones
from finetune.model.backbones.imported import IMPORTED_BACKBONES
from finetune.compat import slim, tf, tf1
from finetune.tools import main
from finetune.tools.endpoints import build_listing, render

# The published families (not the graph-file backbones, not the test_ models of the registry).
PUBLISHED = [name for name in list_backbones(imported=False) if not name.startswith("test_")]

# Weights, variable bookkeeping, initialisers, regularisers, shape arithmetic, unused BatchNorm side
# outputs: nobody cuts there, so the --all listing of a registered backbone leaves them out.
NOISE = re.compile(r"ReadVariableOp|VarHandleOp|Initializer|L2Loss|/Shape|strided_slice|Assign|/Const"
                   r"|FusedBatchNormV3:[1-5]")
CUT = "Foreign/features:0"


def _marked(lines: list[str]) -> list[str]:
    """The printed rows marked as the cut (not the footer that explains the mark)."""
    return [line for line in lines if line.startswith("* ") and not line.startswith("* = ")]


def _end_points(backbone_cfg) -> dict[str, tuple[str, str]]:
    """End point -> (tensor name, shape as the tool should print it), from a build of our own."""
    info = get_backbone(backbone_cfg.name)
    size = backbone_cfg.image_size
    with tf.Graph().as_default():
        pixels = tf1.placeholder(tf.float32, [None, size, size, 3])
        network_fn = get_network_fn(info.name, backbone_cfg.num_classes, False, **backbone_cfg.params)
        _, end_points = network_fn(PREPROCESSORS[info.preprocessing](pixels))
    return {name: (t.name, str(t.shape.as_list())) for name, t in end_points.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED)
def test_all_lists_every_end_point_and_marks_the_cut(name):
    cfg = compose_config([f"backbone={name}"]).backbone
    expected = _end_points(cfg)
    listing = build_listing(cfg, show_all=True)
    rows = {row.tensor: row for row in listing.rows}
    assert len(rows) == len(listing.rows)  # each tensor once
    for end_point, (tensor, shape) in expected.items():
        assert end_point in rows[tensor].end_points.split(", "), (end_point, rows.get(tensor))
        assert rows[tensor].shape == shape
    assert listing.cut_error is None and listing.cut_tensor == expected[cfg.cut][0]
    assert len(listing.rows) > len(expected)  # the tensors between end points too
    assert not [row.tensor for row in listing.rows if NOISE.search(row.tensor)]
    lines = render(listing)
    marked = _marked(lines)
    assert len(marked) == 1 and cfg.cut in marked[0] and expected[cfg.cut][0] in marked[0]
    assert lines[-1].startswith(f"* = backbone.cut ({cfg.cut})")


def test_the_documented_command_runs_in_a_subprocess(tmp_path):
    result = run_cli(["finetune.tools", "endpoints", "backbone=inception_v3", "--all"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    marked = next(line for line in result.stdout.splitlines() if line.startswith("* ") and "Mixed_7c" in line)
    assert "InceptionV3/InceptionV3/Mixed_7c/concat:0" in marked and "[None, 8, 8, 2048]" in marked


def test_a_cut_between_end_points_is_listed_and_marked_without_all():
    cut = "MobilenetV1/MobilenetV1/Conv2d_13_pointwise/Conv2D:0"
    listing = build_listing(compose_config(["backbone=mobilenet_v1", f"backbone.cut={cut}"]).backbone, False)
    tensors = [row.tensor for row in listing.rows]
    assert listing.cut_tensor == cut
    # Placed where the network computes it: after the depthwise end point, before the pointwise one.
    assert tensors.index("MobilenetV1/MobilenetV1/Conv2d_13_depthwise/Relu6:0") < tensors.index(cut) \
        < tensors.index("MobilenetV1/MobilenetV1/Conv2d_13_pointwise/Relu6:0")


@pytest.fixture(scope="module")
def foreign_files(tmp_path_factory) -> dict[str, str]:
    """A small foreign model whose input has an unknown rank, saved as .meta (with training ops) and as .pb."""
    folder = tmp_path_factory.mktemp("foreign_endpoints")
    with tf.Graph().as_default():
        images = tf1.placeholder(tf.float32, None, name="images")  # unknown rank, as some published graphs
        net = tf.reshape(tf.nn.relu(images), [-1, 16, 16, 3])
        net = slim.conv2d(net, 4, [3, 3], stride=2, scope="Foreign/conv1", normalizer_fn=slim.batch_norm,
                          normalizer_params={"is_training": False})
        features = tf.identity(net, name="Foreign/features")
        logits = slim.fully_connected(slim.flatten(features), 3, activation_fn=None, scope="Foreign/logits")
        labels = tf1.placeholder(tf.int32, [None], name="labels")
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
        tf1.train.GradientDescentOptimizer(0.1).minimize(loss)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            prefix = tf1.train.Saver().save(sess, str(folder / "foreign.ckpt"))
            frozen = freezing.freeze_session(sess, [logits.op.name])
    graphs.save_graph_def(frozen, folder / "foreign.pb")
    return {"meta_graph": f"backbone.params.meta={prefix}.meta",
            "frozen_graph": f"backbone.params.graph={folder / 'foreign.pb'}"}


def _imported_cfg(files: dict[str, str], kind: str, *overrides: str):
    return compose_config([f"backbone={kind}", files[kind], "backbone.params.input=images:0", *overrides]).backbone


@pytest.mark.parametrize("kind", IMPORTED_BACKBONES)
def test_imported_graph_lists_its_image_path_with_unknown_dims(foreign_files, kind):
    listing = build_listing(_imported_cfg(foreign_files, kind, f"backbone.cut={CUT}"), show_all=False)
    shapes = {row.tensor: row.shape for row in listing.rows}
    assert shapes["images:0"] == "<unknown>" and shapes[CUT] == "[None, 8, 8, 4]"
    assert listing.cut_tensor == CUT and listing.cut_error is None
    # Weights, BatchNorm side outputs, and the loss (it needs the labels too) are no cut points.
    assert not [name for name in shapes if "ReadVariableOp" in name or "loss" in name or "gradients" in name
                or name.endswith(("FusedBatchNormV3:1", "FusedBatchNormV3:5"))]
    marked = _marked(render(listing))
    assert len(marked) == 1 and CUT in marked[0]


@pytest.mark.parametrize("kind", IMPORTED_BACKBONES)
def test_imported_graph_with_all_lists_every_tensor(foreign_files, kind):
    listing = build_listing(_imported_cfg(foreign_files, kind, f"backbone.cut={CUT}"), show_all=True)
    shapes = {row.tensor: row.shape for row in listing.rows}
    assert shapes["Foreign/conv1/BatchNorm/FusedBatchNormV3:5"] == "<unknown>"  # an unknown rank, printed
    assert [name for name in shapes if "ReadVariableOp" in name]  # the weights' reads too
    assert listing.cut_tensor == CUT


def test_imported_graph_without_a_cut_lists_and_says_how_to_set_it(foreign_files):
    lines = render(build_listing(_imported_cfg(foreign_files, "frozen_graph"), show_all=False))
    assert not _marked(lines) and "backbone.cut is not set" in lines[-1]


@pytest.mark.parametrize("override, key, hint", [
    ("backbone.cut=Foreign/feature", "backbone.cut", "Foreign/features:0"),
    ("backbone.params.input=image:0", "backbone.params.input", "images:0"),
])
def test_a_wrong_name_fails_with_the_key_and_the_closest_names(foreign_files, capsys, override, key, hint):
    status = main(["endpoints", "backbone=frozen_graph", foreign_files["frozen_graph"],
                   "backbone.params.input=images:0", override])
    err = capsys.readouterr().err
    assert status == 2 and f"'{key}'" in err and hint in err and "Traceback" not in err


def test_a_missing_graph_path_is_named(capsys):
    status = main(["endpoints", "backbone=frozen_graph"])
    err = capsys.readouterr().err
    assert status == 2 and "backbone.params.graph" in err and "Traceback" not in err
