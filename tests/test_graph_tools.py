"""Graph tools on a foreign model: a tiny TF-Slim net built here with plain tf.compat.v1, not by the pipeline.

conv + BN -> depthwise + BN -> separable (depthwise, pointwise) + BN -> mean -> dense -> ``logits``,
``probabilities``; batch-norm moving statistics are set to non-trivial values, and a training op, a
CheckNumerics and an Assert make the checkpoint graph look like a real one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CliResult, cli
from PIL import Image

from finetune import graphs
from finetune.export import exporter
from finetune import freezing
from finetune.export import formats
from finetune.data import images
from finetune.export import optimize
from finetune.compat import slim, tf, tf1
from finetune.errors import FinetuneError

IMAGE_SIZE = 32
NUM_CLASSES = 5
LABELS = ["apple", "banana", "cherry", "date", "elderberry"]
REPO = Path(__file__).resolve().parents[1]


def build_net(pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """float [N, 32, 32, 3] in [0, 255] -> (logits, probabilities), batch norms in inference mode."""
    with tf1.control_dependencies([tf1.assert_greater_equal(tf.shape(pixels)[0], 1, name="batch_check")]):
        net = tf.identity(pixels / 127.5 - 1.0)
    bn = {"is_training": False, "scale": True, "epsilon": 1e-3}
    with slim.arg_scope([slim.conv2d, slim.separable_conv2d], normalizer_fn=slim.batch_norm, normalizer_params=bn):
        net = slim.conv2d(net, 8, [3, 3], stride=2, scope="conv1")
        net = slim.separable_conv2d(net, None, [3, 3], depth_multiplier=1, scope="dw2")
        net = slim.separable_conv2d(net, 16, [3, 3], depth_multiplier=1, scope="sep3")
    net = tf.debugging.check_numerics(tf.reduce_mean(net, [1, 2]), "pool is not finite")
    logits = tf.identity(slim.fully_connected(net, NUM_CLASSES, activation_fn=None, scope="fc"), name="logits")
    return logits, tf.nn.softmax(logits, name="probabilities")


def randomise_variables(sess: tf1.Session, seed: int = 0) -> None:
    """Non-trivial weights and batch-norm statistics, so folding errors would show."""
    rng = np.random.default_rng(seed)
    for var in tf1.global_variables():
        shape = var.shape.as_list()
        if "moving_variance" in var.name or "gamma" in var.name:
            value = rng.uniform(0.5, 2.0, shape)
        elif "moving_mean" in var.name or "beta" in var.name:
            value = rng.uniform(-0.5, 0.5, shape)
        elif var.dtype.base_dtype == tf.float32:
            value = rng.normal(0.0, 0.5, shape)
        else:
            continue
        var.load(value.astype(np.float32), sess)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Checkpoint of the foreign net, a test batch and the session's outputs for it."""
    root = tmp_path_factory.mktemp("foreign")
    batch = np.random.default_rng(1).uniform(0, 255, (5, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        pixels = tf1.placeholder(tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3], name="input")
        logits, probabilities = build_net(pixels)
        labels = tf1.placeholder(tf.int64, [None], name="labels")
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
        tf1.summary.scalar("loss", loss)
        tf1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=tf1.train.get_or_create_global_step())
        saver = tf1.train.Saver()
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            randomise_variables(sess)
            expected = sess.run([logits, probabilities], {pixels: batch})
            prefix = saver.save(sess, str(root / "model.ckpt"), global_step=7)
    frozen = freezing.freeze_checkpoint(prefix, ["logits", "probabilities"])
    return {"root": root, "prefix": prefix, "batch": batch, "expected": expected, "frozen": frozen}


@pytest.fixture(scope="module")
def optimized(model):
    return optimize.optimize_for_inference(model["frozen"], ["input"], ["logits", "probabilities"])


def write_images(folder: Path, count: int = 3) -> list[str]:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)
        path = folder / f"image_{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def run_tools(*args: str) -> CliResult:
    """``python -m finetune.tools ARGS`` in this process (conftest.cli): these tests are about the tools'
    files, output and exit statuses, not the process."""
    return cli(["finetune.tools", *args], cwd=REPO)


# ---------------------------------------------------------------------------------------------- freezing


def test_freeze_checkpoint_matches_session(model):
    frozen = model["frozen"]
    ops = {node.op for node in frozen.node}
    assert not ops & {"VariableV2", "VarHandleOp", "Assign", "SaveV2", "RestoreV2", "ApplyGradientDescent"}
    assert not any(node.device for node in frozen.node)
    assert not any(node.name.startswith(("gradients/", "save/")) for node in frozen.node)
    logits, probs = graphs.run_graph_def(frozen, {"input:0": model["batch"]}, ["logits:0", "probabilities"])
    assert graphs.max_abs_diff(logits, model["expected"][0]) < 1e-5
    assert graphs.max_abs_diff(probs, model["expected"][1]) < 1e-5


def test_wrong_output_lists_likely_outputs(model):
    with pytest.raises(FinetuneError, match="probabilities") as info:
        freezing.freeze_checkpoint(model["prefix"], ["probabilty"])
    assert "save/" not in str(info.value) and "gradients/" not in str(info.value)


def test_likely_outputs_skip_bookkeeping(model):
    meta = tf1.MetaGraphDef()
    meta.ParseFromString(Path(model["prefix"] + ".meta").read_bytes())
    likely = graphs.likely_output_nodes(meta.graph_def)
    assert "probabilities" in likely
    assert not [name for name in likely if name.startswith(("save", "init", "gradients", "GradientDescent"))]


def test_missing_checkpoint_and_meta_are_named(model, tmp_path):
    with pytest.raises(FinetuneError, match="nowhere.ckpt"):
        freezing.freeze_checkpoint(str(tmp_path / "nowhere.ckpt"), ["logits"])
    with pytest.raises(FinetuneError, match="other.meta"):
        freezing.freeze_checkpoint(model["prefix"], ["logits"], meta=str(tmp_path / "other.meta"))
    with pytest.raises(FinetuneError, match="missing.pb"):
        graphs.load_graph_def(tmp_path / "missing.pb")


# ---------------------------------------------------------------------------------------------- optimising


def test_optimize_folds_batch_norms_and_strips_training_nodes(model, optimized):
    before = {node.op for node in model["frozen"].node}
    assert {"FusedBatchNormV3", "DepthwiseConv2dNative", "CheckNumerics", "Assert"} <= before
    ops = [node.op for node in optimized.node]
    assert not [op for op in ops if op.startswith(("FusedBatchNorm", "BatchNorm"))]
    assert not set(ops) & optimize.TRAINING_ONLY_OPS
    assert "DepthwiseConv2dNative" in ops and ops.count("BiasAdd") >= 4  # 3 folded norms + the dense layer
    assert len(optimized.node) < len(model["frozen"].node)
    placeholder = next(node for node in optimized.node if node.name == "input")
    assert placeholder.attr["dtype"].type == tf.float32.as_datatype_enum
    assert graphs.placeholder_shape(optimized, "input") == [None, IMAGE_SIZE, IMAGE_SIZE, 3]


@pytest.mark.parametrize("batch_size", [1, 5])
def test_optimized_matches_frozen_at_any_batch(model, optimized, batch_size):
    batch = model["batch"][:batch_size]
    expected = graphs.run_graph_def(model["frozen"], {"input": batch}, ["logits", "probabilities"])
    got = graphs.run_graph_def(optimized, {"input": batch}, ["logits", "probabilities"])
    for a, b in zip(got, expected):
        assert a.shape[0] == batch_size
        assert graphs.max_abs_diff(a, b) < 1e-4


@pytest.mark.parametrize("shared", ["conv_output", "weights"])
def test_optimize_stays_exact_when_folding_would_not_be(shared):
    """A conv whose output feeds another op, or weights two convs share, must not be rescaled in place."""
    rng = np.random.default_rng(3)
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 8, 8, 2], name="x")
        weights = tf.constant(rng.normal(size=(3, 3, 2, 2)), tf.float32)
        conv = tf.nn.conv2d(x, weights, 1, "SAME")
        params = [tf.constant(v, tf.float32) for v in rng.uniform(0.5, 1.5, (4, 2))]
        normed, _, _ = tf1.nn.fused_batch_norm(conv, *params, epsilon=1e-3, is_training=False)
        other = conv if shared == "conv_output" else tf.nn.conv2d(normed, weights, 1, "SAME")
        tf.add(tf.reduce_mean(normed, [1, 2]), tf.reduce_mean(other, [1, 2]), name="out")
        graph_def = graph.as_graph_def()
    optimized = optimize.optimize_for_inference(graph_def, ["x"], ["out"])
    assert not [n for n in optimized.node if n.op.startswith("FusedBatchNorm")]
    batch = rng.normal(size=(2, 8, 8, 2)).astype(np.float32)
    expected, = graphs.run_graph_def(graph_def, {"x": batch}, ["out"])
    got, = graphs.run_graph_def(optimized, {"x": batch}, ["out"])
    assert graphs.max_abs_diff(got, expected) < 1e-4


def test_optimize_refuses_batch_norm_in_training_mode():
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 4, 4, 2], name="x")
        conv = tf.nn.conv2d(x, tf.ones([1, 1, 2, 2]), 1, "SAME")
        tf.identity(tf1.nn.fused_batch_norm(conv, tf.ones([2]), tf.zeros([2]), is_training=True)[0], name="out")
    with pytest.raises(FinetuneError, match="is_training"):
        optimize.optimize_for_inference(graph.as_graph_def(), ["x"], ["out"])


# ---------------------------------------------------------------------------------------------- conversions


def test_saved_model_parity(model, optimized, tmp_path):
    export_dir = tmp_path / "saved_model"
    formats.write_saved_model(optimized, "input:0", {"logits": "logits:0", "probabilities": "probabilities:0"},
                                  export_dir)
    out = formats.run_saved_model(export_dir, model["batch"])
    assert set(out) == {"logits", "probabilities"}
    assert graphs.max_abs_diff(out["probabilities"], model["expected"][1]) < 1e-4
    assert graphs.max_abs_diff(out["logits"], model["expected"][0]) < 1e-4
    with pytest.raises(FinetuneError, match="already exists"):
        formats.write_saved_model(optimized, "input:0", {"logits": "logits:0"}, export_dir)


def test_tflite_parity_at_batch_1_and_5(model, optimized, tmp_path):
    path = tmp_path / "model.tflite"
    size = formats.write_tflite(optimized, "input", ["logits", "probabilities:0"], path, IMAGE_SIZE)
    assert size == path.stat().st_size > 0
    for batch_size in (1, 5):
        logits, probs = formats.run_tflite(path, model["batch"][:batch_size])
        assert logits.shape == (batch_size, NUM_CLASSES)
        assert graphs.max_abs_diff(logits, model["expected"][0][:batch_size]) < 1e-4
        assert graphs.max_abs_diff(probs, model["expected"][1][:batch_size]) < 1e-4


@pytest.mark.slow  # builds the image decoder (a map over a traced function) three times, optimises it
def test_image_bytes_input_decodes_like_load_images(model, tmp_path):
    paths = write_images(tmp_path / "images")
    graph = tf.Graph()
    with graph.as_default():
        _, (_, probabilities) = exporter.add_image_bytes_input(build_net, IMAGE_SIZE)
        with tf1.Session() as sess:
            tf1.train.Saver().restore(sess, model["prefix"])
            frozen = freezing.freeze_session(sess, ["probabilities"])
    got, = graphs.run_graph_def(frozen, {"image_bytes:0": images.read_image_bytes(paths)}, ["probabilities"])
    pixels = images.load_images(paths, IMAGE_SIZE)
    expected, = graphs.run_graph_def(model["frozen"], {"input": pixels}, ["probabilities"])
    assert graphs.max_abs_diff(got, expected) < 1e-5
    optimized = optimize.optimize_for_inference(frozen, ["image_bytes"], ["probabilities"])
    encoded = images.read_image_bytes(paths)
    again, = graphs.run_graph_def(optimized, {"image_bytes:0": encoded}, ["probabilities"])
    assert graphs.max_abs_diff(again, expected) < 1e-4

    graphs.save_graph_def(optimized, tmp_path / "bytes" / "model.pb")
    (tmp_path / "bytes" / "model.json").write_text(json.dumps({
        "input": "image_bytes:0", "input_type": "image_bytes", "image_size": IMAGE_SIZE,
        "outputs": {"probabilities": "probabilities:0"},
    }))
    # A PNG whose header and end are intact but whose pixels the graph's decoder refuses: skipped and listed
    garbled = bytearray(Path(paths[0]).read_bytes())
    garbled[60:-20] = bytes(byte ^ 0x5A for byte in garbled[60:-20])
    (tmp_path / "garbled.png").write_bytes(bytes(garbled))
    result = run_tools("predict", str(tmp_path / "bytes" / "model.pb"), *paths, str(tmp_path / "garbled.png"),
                       "--top-k", "1")
    assert result.returncode == 0, result.stderr
    assert [_top_label(result.stdout, p) for p in paths] == [str(i) for i in expected.argmax(axis=1)]
    assert f"{tmp_path / 'garbled.png'}: not a JPEG, PNG, GIF or BMP image TensorFlow can decode" in result.stderr


# ---------------------------------------------------------------------------------------------- command line


def _top_label(stdout: str, path: str) -> str:
    """The top-1 label of ``path`` in predict's table (a row: the image, then ``label score`` per class)."""
    return next(line.split()[1] for line in stdout.splitlines() if line.split()[:1] == [path])


@pytest.mark.slow
def test_cli_freeze_then_predict(model, tmp_path):
    out_pb = tmp_path / "export" / "frozen.pb"
    result = run_tools("freeze", "--checkpoint", model["prefix"], "--outputs", "logits",
                       "--outputs", "probabilities", "--output", str(out_pb))
    assert result.returncode == 0, result.stderr
    assert "nodes" in result.stdout and out_pb.is_file()

    frozen = graphs.load_graph_def(out_pb)
    paths = write_images(tmp_path / "images")
    probs, = graphs.run_graph_def(frozen, {"input": images.load_images(paths, IMAGE_SIZE)}, ["probabilities"])
    expected = [LABELS[i] for i in probs.argmax(axis=1)]

    # foreign: no model.json, tensors named on the command line, image size from the placeholder
    result = run_tools("predict", str(out_pb), *paths, "--input", "input:0", "--output", "logits:0", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    assert "scores" in result.stdout and "probabilities" not in result.stdout
    assert [_top_label(result.stdout, p) for p in paths] == [str(LABELS.index(label)) for label in expected]

    # ours: model.json and labels beside the .pb
    (out_pb.parent / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (out_pb.parent / "model.json").write_text(json.dumps({
        "input": "input:0", "input_type": "float", "image_size": IMAGE_SIZE, "labels": "labels.txt",
        "outputs": {"probabilities": "probabilities:0", "logits": "logits:0"},
    }))
    result = run_tools("predict", str(out_pb), *paths, "--top-k", "3")
    assert result.returncode == 0, result.stderr
    assert "probabilities" in result.stdout
    assert [_top_label(result.stdout, p) for p in paths] == expected

    result = run_tools("predict", str(out_pb), paths[0], "--json", "--top-k", "1")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert entry["top_k"][0]["label"] == expected[0]
    assert abs(entry["top_k"][0]["score"] - float(probs[0].max())) < 1e-5


def test_cli_errors_have_no_traceback(tmp_path):
    result = run_tools("freeze", "--checkpoint", str(tmp_path / "missing.ckpt"), "--outputs", "a,b",
                       "--output", str(tmp_path / "out.pb"))
    assert result.returncode == 2
    assert "missing.ckpt" in result.stderr and "Traceback" not in result.stderr
    result = run_tools("predict", str(tmp_path / "missing.pb"), str(tmp_path / "x.png"))
    assert result.returncode == 2 and "missing.pb" in result.stderr and "Traceback" not in result.stderr
