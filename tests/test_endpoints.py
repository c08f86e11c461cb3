"""``python -m finetune.tools endpoints ... --all``: every registered backbone and both imported kinds list
their cut points with readable shapes, every end point shown and the configured cut marked.

The registered backbones come from the registry, so a new one is covered without editing this file.
The tool builds each one itself; the real end points it must list come from a build of our own, made
independently of the tool: tests/test_backbones.py's cached num_classes=0 build, shared with its tests
when both files run in one process. The documented command (inception_v3) is checked in full from the
output of a real subprocess, and the other backbones in-process.
"""
from __future__ import annotations

import re

import pytest
from conftest import compose_config, run_cli
from test_backbones import BEHAVIOUR, build, network_marks  # the cached builds of the registered backbones, their marks

from finetune import graphs
from finetune import freezing
from finetune.model.backbones import list_backbones
from finetune.model.backbones.imported import IMPORTED_BACKBONES
from finetune.compat import slim, tf, tf1
from finetune.tools import main
from finetune.tools.endpoints import build_listing, render

# The published families (not the graph-file backbones, not the test_ models of the registry).
PUBLISHED = [name for name in list_backbones(imported=False) if not name.startswith("test_")]
# The command docs/backbones.md shows: it runs in a subprocess, which checks that backbone's listing.
DOCUMENTED = "inception_v3"
DOCUMENTED_COMMAND = ["finetune.tools", "endpoints", f"backbone={DOCUMENTED}", "--all"]

# Weights, variable bookkeeping, initialisers, regularisers, shape arithmetic, unused BatchNorm side
# outputs: nobody cuts there, so the --all listing of a registered backbone leaves them out.
NOISE = re.compile(r"ReadVariableOp|VarHandleOp|Initializer|L2Loss|/Shape|strided_slice|Assign|/Const"
                   r"|FusedBatchNormV3:[1-5]")
CUT = "Foreign/features:0"


def _marked(lines: list[str]) -> list[str]:
    """The printed rows marked as the cut (not the footer that explains the mark)."""
    return [line for line in lines if line.startswith("* ") and not line.startswith("* = ")]


def _end_points(backbone_cfg) -> dict[str, tuple[str, str]]:
    """End point -> (tensor name, shape as the tool should print it), from a build of our own (the tool
    preprocesses the pixels first, which adds ops outside the network's scope only)."""
    built = build(backbone_cfg.name, backbone_cfg.num_classes, backbone_cfg.image_size, **backbone_cfg.params)
    return {name: (tensor, str(built.tensors[tensor])) for name, tensor in built.end_points.items()}


def _check_all_listing(lines: list[str], expected: dict[str, tuple[str, str]], cut: str) -> None:
    """``lines`` (title, header, rows, footer, as printed) list every end point of ``expected`` on its tensor
    with its shape, each tensor once, the tensors between end points too but no noise, and mark ``cut``."""
    header, *body, footer = lines[1:]
    tensor_at, shape_at = header.index("tensor"), header.rindex("shape")  # the columns, from the header
    assert header.startswith("  end point")
    rows = [(line[0], line[2:tensor_at].strip(), line[tensor_at:shape_at].strip(), line[shape_at:]) for line in body]
    assert {marker for marker, *_ in rows} <= {"*", " "}
    printed = {tensor: (names, shape) for _, names, tensor, shape in rows}
    assert len(printed) == len(rows)  # each tensor once
    for end_point, (tensor, shape) in expected.items():
        assert end_point in printed[tensor][0].split(", "), (end_point, printed.get(tensor))
        assert printed[tensor][1] == shape, (end_point, printed[tensor])
    assert len(rows) > len(expected)  # the tensors between end points too
    assert not [tensor for tensor in printed if NOISE.search(tensor)]
    assert [tensor for marker, _, tensor, _ in rows if marker == "*"] == [expected[cut][0]]
    assert footer.startswith(f"* = backbone.cut ({cut})")


@pytest.mark.slow  # the tool's own build of each network, and the listing of its thousands of tensors
@pytest.mark.parametrize("name", [pytest.param(name, marks=network_marks(name)) for name in BEHAVIOUR
                                  if name != DOCUMENTED])
def test_all_lists_every_end_point_and_marks_the_cut(name):
    cfg = compose_config([f"backbone={name}"]).backbone
    listing = build_listing(cfg, show_all=True)
    assert listing.cut_error is None
    _check_all_listing(render(listing), _end_points(cfg), cfg.cut)


@pytest.mark.slow
@pytest.mark.xdist_group(DOCUMENTED)
def test_the_documented_command_runs_in_a_subprocess(tmp_path):
    """The command of docs/backbones.md, as typed: it exits 0 and prints the full listing of its backbone."""
    assert DOCUMENTED in BEHAVIOUR  # with the in-process cases, every published backbone but the 152-layer ResNets
    result = run_cli(DOCUMENTED_COMMAND, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    marked = next(line for line in lines if line.startswith("* ") and "Mixed_7c" in line)
    assert "InceptionV3/InceptionV3/Mixed_7c/concat:0" in marked and "[None, 8, 8, 2048]" in marked
    cfg = compose_config([f"backbone={DOCUMENTED}"]).backbone
    title = next(index for index, line in enumerate(lines) if line.startswith(f"{DOCUMENTED}, image size"))
    _check_all_listing(lines[title:], _end_points(cfg), cfg.cut)


@pytest.mark.slow
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
