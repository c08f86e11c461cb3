"""The op gate (issue 9): a graph file from outside may hold only pure computation ops, at every door.

The hostile graphs are built here with plain TensorFlow: a frozen .pb whose cut tensor depends on
``WriteFile(stolen, ReadFile(secret))``, one with a ``PyFunc``, one whose ``WriteFile`` sits in a
function nested in the function library, and a .meta whose ``saver_def.restore_op_name`` names a
``WriteFile`` op. Every door must refuse them, naming the op types and node names, and the file an
op would write must never appear. ``allow_unsafe_ops`` lets a harmless one through, with a warning.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BACKBONE, cli, compose_config

from finetune import graphs
from finetune import op_gate
from finetune import freezing
from finetune.compat import tf, tf1
from finetune.errors import FinetuneError
from finetune.export import optimize
from finetune.export.exporter import OUTPUTS, image_bytes_graph
from finetune.model.towers import build_export_tower
from finetune.pure_ops import PURE_OPS
from finetune.tools import main as tools_main

SIDE = 32  # the hostile graphs' input: images:0, float [None, 32, 32, 3]
IMPORTED = ["backbone.image_size=32", "backbone.cut=features:0", "backbone.params.input=images:0"]


@contextlib.contextmanager
def _root_logger_of_a_fresh_process():
    """The root logger without pytest's handlers while inside, as in a process of its own: the tools' own
    logging set-up (logging.basicConfig, a no-op when the root logger has handlers) then sends their warnings to
    the stderr that conftest.cli captures."""
    root = logging.getLogger()
    saved = list(root.handlers)
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = saved


def _classifier(effect) -> None:
    """images -> conv (a variable) -> ``effect`` -> features -> probabilities, in the default graph."""
    images = tf1.placeholder(tf.float32, [None, SIDE, SIDE, 3], name="images")
    weights = tf1.get_variable("conv/weights", initializer=np.full((3, 3, 3, 4), 0.1, np.float32))
    net = effect(tf.nn.relu(tf.nn.conv2d(images, weights, 1, "SAME")))
    features = tf.identity(net, name="features")
    logits = tf.matmul(tf.reduce_mean(features, [1, 2]), tf.constant(np.eye(4, 2, dtype=np.float32)))
    tf.nn.softmax(logits, name="probabilities")


def _frozen(path: Path, effect) -> Path:
    """The classifier frozen to ``path`` (written directly: save_graph_def would refuse it)."""
    with tf.Graph().as_default(), tf1.Session() as sess:
        _classifier(effect)
        sess.run(tf1.global_variables_initializer())
        frozen = freezing.freeze_session(sess, ["probabilities"])
    path.write_bytes(frozen.SerializeToString())
    return path


def _after(op_factory):
    """An ``effect`` that makes the net wait for the op ``op_factory()`` builds (a control dependency)."""
    def effect(net):
        with tf.control_dependencies([op_factory()]):
            return tf.identity(net)
    return effect


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The hostile files, the secret they read and the paths they would write."""
    folder = tmp_path_factory.mktemp("op_gate")
    secret = folder / "secret.txt"
    secret.write_text("the user's secret\n")
    out = {"folder": folder, "secret": secret}
    for name in ("stolen_pb", "stolen_function", "stolen_meta", "allowed"):
        out[name] = folder / f"{name}.txt"
    steal = _after(lambda: tf.io.write_file(str(out["stolen_pb"]), tf.io.read_file(str(secret), name="steal/read"),
                                            name="steal/write"))
    out["steal_pb"] = _frozen(folder / "steal.pb", steal)
    out["pyfunc_pb"] = _frozen(folder / "pyfunc.pb", lambda net: net + tf1.py_func(
        lambda: np.float32(0), [], tf.float32, name="callback"))

    @tf.function
    def leak(net):  # nested: the WriteFile is in a function that a function calls
        tf.io.write_file(str(out["stolen_function"]), tf.io.read_file(str(secret)))
        return net

    @tf.function
    def layer(net):
        return leak(net) * 1.0

    out["function_pb"] = _frozen(folder / "function.pb", layer)
    out["harmless_pb"] = _frozen(folder / "harmless.pb", _after(lambda: tf.io.write_file(
        str(out["allowed"]), "written because allowed", name="note/write")))

    # A SavedModel (a variable, restored by its own saver) whose forward pass waits for a ReadFile and WriteFile.
    with tf.Graph().as_default(), tf1.Session() as sess:
        _classifier(steal)
        sess.run(tf1.global_variables_initializer())
        tensor = tf1.get_default_graph().get_tensor_by_name
        signature = tf1.saved_model.predict_signature_def({"images": tensor("images:0")},
                                                          {"probabilities": tensor("probabilities:0")})
        builder = tf1.saved_model.Builder(str(folder / "steal_saved_model"))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()
    out["steal_saved_model"] = folder / "steal_saved_model"

    # A .meta with a clean forward pass and a checkpoint, whose saver_def.restore_op_name names a WriteFile.
    with tf.Graph().as_default(), tf1.Session() as sess:
        _classifier(lambda net: net)
        sess.run(tf1.global_variables_initializer())
        saver = tf1.train.Saver()
        prefix = saver.save(sess, str(folder / "model.ckpt"))
        out["clean_meta"] = Path(f"{prefix}.meta").read_bytes()
        tf.io.write_file(str(out["stolen_meta"]), tf.io.read_file(str(secret)), name="evil_restore")
        meta = saver.export_meta_graph()
    meta.saver_def.restore_op_name = "evil_restore"
    Path(f"{prefix}.meta").write_bytes(meta.SerializeToString())
    out["prefix"], out["meta"] = prefix, f"{prefix}.meta"
    return out


def _written(files) -> list[str]:
    return [name for name in ("stolen_pb", "stolen_function", "stolen_meta") if files[name].exists()]


# ---------------------------------------------------------------------------------------------- the check


def test_the_list_is_sorted_unique_and_known_to_tensorflow():
    from tensorflow.python.framework import op_def_registry

    assert list(PURE_OPS) == sorted(set(PURE_OPS))
    assert not [op for op in PURE_OPS if op_def_registry.get(op) is None]
    assert not {"ReadFile", "WriteFile", "PyFunc", "EagerPyFunc", "SaveV2", "RestoreV2", "MatchingFiles",
                "ImmutableConst", "PrintV2", "FIFOQueueV2", "TFRecordDataset", "IteratorGetNext"} & set(PURE_OPS)


def test_a_file_op_is_refused_with_its_op_types_and_node_names(files):
    with pytest.raises(FinetuneError) as error:
        graphs.load_graph_def(files["steal_pb"])
    message = str(error.value)
    for text in (str(files["steal_pb"]), "ReadFile (file I/O; 1 node: steal/read)",
                 "WriteFile (file I/O; 1 node: steal/write)", "allow_unsafe_ops=true", "--allow-unsafe-ops",
                 "nothing from the file was imported or run"):
        assert text in message
    assert "\n" not in message and not _written(files)


def test_ops_in_nested_library_functions_and_python_callbacks_are_refused(files):
    with pytest.raises(FinetuneError, match=r"ReadFile \(file I/O; 1 node: __inference_leak_\d+/ReadFile\)"):
        graphs.load_graph_def(files["function_pb"])
    with pytest.raises(FinetuneError, match=r"PyFunc \(a Python callback; 1 node: callback\)"):
        graphs.load_graph_def(files["pyfunc_pb"])
    assert not _written(files)


def test_an_unknown_custom_op_is_refused():
    graph_def = graphs.GraphDef()
    graph_def.node.add(name="x", op="Const")
    for index in range(5):
        graph_def.node.add(name=f"mine_{index}", op="ExfiltrateEverything")
    with pytest.raises(FinetuneError, match=r"ExfiltrateEverything \(a custom op this TensorFlow does not know; "
                                            r"5 nodes: mine_0, mine_1, mine_2 and 2 more\)"):
        op_gate.check_ops(graph_def, "custom.pb")


def test_allow_unsafe_warns_once_and_goes_on(files, caplog):
    with caplog.at_level(logging.WARNING, logger="finetune.graphs"):
        graph_def = graphs.load_graph_def(files["steal_pb"], allow_unsafe=True)
    assert len(graph_def.node) > 0
    (record,) = [r for r in caplog.records if "allow_unsafe_ops is set" in r.getMessage()]
    assert "WriteFile" in record.getMessage() and "steal/write" in record.getMessage()
    assert not _written(files)  # loading runs nothing


def test_a_meta_graph_s_own_saver_passes_as_never_run_but_a_planted_restore_op_is_refused(files, tmp_path):
    clean = tmp_path / "clean.meta"
    clean.write_bytes(files["clean_meta"])
    graph_def = graphs.load_meta_graph_def(clean)
    assert {"SaveV2", "RestoreV2"} <= {node.op for node in graph_def.node}
    with pytest.raises(FinetuneError, match=r"WriteFile \(file I/O; 1 node: evil_restore\)"):
        graphs.load_meta_graph_def(files["meta"])
    # The outputs may not depend on one of the saver ops let through as never run.
    with pytest.raises(FinetuneError, match=r"RestoreV2 \(file I/O; 1 node: save/RestoreV2\)"):
        freezing.freeze_meta_graph(graph_def, files["prefix"], ["save/RestoreV2"], str(clean))


def test_the_meta_graph_s_saver_is_never_run_even_with_unsafe_ops_allowed(files):
    frozen = freezing.freeze_checkpoint(files["prefix"], ["probabilities"], allow_unsafe=True)
    assert not _written(files)  # our own Saver restored the variables: restore_op_name never ran
    assert not op_gate.refused_ops(frozen)
    batch = np.ones((2, SIDE, SIDE, 3), np.float32)
    (probabilities,) = graphs.run_graph_def(frozen, {"images:0": batch}, ["probabilities:0"])
    np.testing.assert_allclose(probabilities, 0.5, atol=1e-6)  # equal logits: the restored weights are used


def test_freezing_drops_library_functions_nothing_calls():
    """A training graph's tf.data functions read files; freezing keeps the whole library unless pruned."""
    @tf.function
    def read(_):
        return tf.io.read_file(__file__)

    @tf.function
    def double(x):
        return x * 2.0

    @tf.function
    def layer(x):
        return double(x) + 1.0

    with tf.Graph().as_default(), tf1.Session() as sess:
        x = tf1.placeholder(tf.float32, [None], name="x")
        read(x)
        tf.identity(tf.map_fn(lambda v: v + 1.0, layer(x)), name="y")
        frozen = freezing.freeze_session(sess, ["y"])
    kept = [function.signature.name for function in frozen.library.function]
    assert len(kept) == 4 and all(any(part in name for name in kept) for part in ("double", "layer", "body", "cond"))
    assert not op_gate.refused_ops(frozen)
    (y,) = graphs.run_graph_def(frozen, {"x": np.array([1.0, 2.0], np.float32)}, ["y"])
    np.testing.assert_array_equal(y, [4.0, 6.0])


def test_save_graph_def_refuses_what_the_gate_refuses(files, tmp_path):
    graph_def = graphs.read_graph_def(files["steal_pb"])
    with pytest.raises(FinetuneError, match=r"Not writing .*out.pb.*WriteFile"):
        graphs.save_graph_def(graph_def, tmp_path / "out.pb")
    assert not (tmp_path / "out.pb").exists()
    assert graphs.save_graph_def(graph_def, tmp_path / "out.pb", allow_unsafe=True) > 0
    assert sorted(os.listdir(tmp_path)) == ["out.pb"]  # written under a temporary name, then renamed


def test_files_too_large_empty_or_not_graphs_are_named(files, tmp_path, monkeypatch):
    empty, text = tmp_path / "empty.pb", tmp_path / "page.pb"
    empty.write_bytes(b"")
    text.write_bytes(b"<html>404 Not Found</html>\n" * 20)
    with pytest.raises(FinetuneError, match=f"{empty} holds no nodes: it is empty or not a GraphDef"):
        graphs.load_graph_def(empty)
    with pytest.raises(FinetuneError, match=f"{text} is not a GraphDef"):
        graphs.load_graph_def(text)
    with pytest.raises(FinetuneError, match="is not a meta graph"):
        graphs.load_meta_graph_def(text)
    monkeypatch.setattr(graphs, "MAX_GRAPH_BYTES", 100)
    for load in (graphs.load_graph_def, graphs.load_meta_graph_def):
        with pytest.raises(FinetuneError, match=r"bytes, more than the 100 bytes a .* can be"):
            load(files["steal_pb"] if load is graphs.load_graph_def else files["meta"])


@pytest.mark.slow  # builds a backbone, a head of every layer type and the image decoder, then optimises twice
def test_every_graph_our_export_writes_passes_the_gate():
    """The export tower of a registered backbone with a head of every layer type, frozen and optimised,
    for both export inputs (image_bytes decodes in the graph). test_mobilenet_v1 is MobileNet v1's own code
    cut after three blocks: the same op types as the whole network."""
    head = ("head.layers=[{type: conv2d, filters: 8, batch_norm: true, activation: relu}, {type: separable_conv2d, "
            "filters: 8, activation: relu6}, {type: max_pool, kernel_size: 2}, {type: batch_norm}, {type: activation, "
            "activation: elu}, {type: avg_pool, kernel_size: 1}, {type: conv2d, filters: 8, activation: sigmoid}, "
            "{type: activation, activation: tanh}, {type: dropout}, {type: flatten}, {type: dense}]")
    cfg = compose_config(["backbone=mobilenet_v1", "backbone.name=test_mobilenet_v1", "backbone.cut=Conv2d_3_pointwise",
                          "backbone.image_size=64", "backbone.params.depth_multiplier=0.25", head])
    with tf.Graph().as_default(), tf1.Session() as sess:
        build_export_tower(cfg.backbone, cfg.head, 3)
        sess.run(tf1.global_variables_initializer())
        frozen = freezing.freeze_session(sess, list(OUTPUTS))
    as_bytes = image_bytes_graph(frozen, 64)
    exported = {"frozen": frozen, "optimized": optimize.optimize_for_inference(frozen, ["input"], list(OUTPUTS)),
                "bytes": as_bytes, "bytes_optimized": optimize.optimize_for_inference(as_bytes, ["image_bytes"],
                                                                                      list(OUTPUTS))}
    assert {name: op_gate.refused_ops(graph_def) for name, graph_def in exported.items()} == dict.fromkeys(exported, {})
    assert "DecodeImage" in {op for op, _ in op_gate.graph_ops(as_bytes)}


def test_inspect_ops_lists_and_marks_without_refusing_or_running(files, capsys):
    assert tools_main(["inspect", str(files["steal_pb"]), "--ops"]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    assert ["!", "steal/write", "WriteFile", "(file", "I/O)"] in lines and ["features", "Identity"] in lines
    assert "The op gate refuses 2 op type(s)" in out
    assert tools_main(["inspect", files["meta"], "--ops"]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    assert ["~", "save/RestoreV2", "RestoreV2"] in lines
    assert ["!", "evil_restore", "WriteFile", "(file", "I/O)"] in lines
    assert tools_main(["inspect", str(files["function_pb"]), "--ops"]) == 0
    assert any(line[:1] == ["!"] and line[2:3] == ["WriteFile"] and line[1].startswith("__inference_leak_")
               for line in (line.split() for line in capsys.readouterr().out.splitlines()))
    assert not _written(files)


# ---------------------------------------------------------------------------------------------- every door


def _doors(files, data_root: str, run_dir: Path) -> dict[str, list[str]]:
    pipeline = ["finetune", f"data.root={data_root}", "train.steps=2", f"hydra.run.dir={run_dir}"]
    steal_pb, meta = str(files["steal_pb"]), files["meta"]
    return {
        "frozen_graph": [*pipeline, "backbone=frozen_graph", f"backbone.params.graph={steal_pb}", *IMPORTED,
                         "restore.checkpoint=null"],
        "meta_graph": [*pipeline, "backbone=meta_graph", f"backbone.params.meta={meta}", *IMPORTED,
                       "restore.checkpoint=null"],
        "restore.checkpoint": [*pipeline, "experiment=mobilenet_head", *TINY_BACKBONE,
                               f"restore.checkpoint={steal_pb}"],
        "inspect pb": ["finetune.tools", "inspect", steal_pb],
        "inspect meta": ["finetune.tools", "inspect", meta],
        "endpoints frozen_graph": ["finetune.tools", "endpoints", "backbone=frozen_graph",
                                   f"backbone.params.graph={steal_pb}", "backbone.params.input=images:0"],
        "endpoints meta_graph": ["finetune.tools", "endpoints", "backbone=meta_graph", f"backbone.params.meta={meta}",
                                 "backbone.params.input=images:0"],
        "freeze": ["finetune.tools", "freeze", "--checkpoint", files["prefix"], "--outputs", "probabilities",
                   "--output", str(run_dir / "frozen.pb")],
        "predict": ["finetune.tools", "predict", steal_pb, str(files["secret"]), "--input", "images:0", "--output",
                    "probabilities:0"],
        "predict function": ["finetune.tools", "predict", str(files["function_pb"]), str(files["secret"]), "--input",
                             "images:0", "--output", "probabilities:0"],
        "pb2ckpt": ["finetune.tools", "pb2ckpt", steal_pb, str(run_dir / "model.ckpt")],
        "predict saved_model": ["finetune.tools", "predict", str(files["steal_saved_model"]), str(files["secret"])],
        "evaluate saved_model": ["finetune.tools", "evaluate", str(files["steal_saved_model"]),
                                 f"data.root={data_root}", "--output", str(run_dir / "evaluation")],
    }


@pytest.mark.parametrize("door", ["frozen_graph", "meta_graph",
                                  # the pipeline reads the restore source once its training graph is built
                                  pytest.param("restore.checkpoint", marks=pytest.mark.slow),
                                  "inspect pb", "inspect meta", "endpoints frozen_graph", "endpoints meta_graph",
                                  "freeze", "predict", "predict function", "pb2ckpt", "predict saved_model",
                                  "evaluate saved_model"])
def test_every_door_refuses_a_hostile_graph(files, demo_cache, tiny_data, tmp_path, door):
    """The command line, run in this process (conftest.cli): the subject is its message and exit status, and
    that the hostile op never ran (nothing it would write exists)."""
    command = _doors(files, str(tiny_data), tmp_path / "run")[door]
    result = cli(command, cwd=tmp_path, cache=demo_cache)
    output = result.stdout + result.stderr
    assert result.returncode == FinetuneError.exit_status, output[-3000:]
    assert "Traceback" not in output and "allow_unsafe_ops=true" in output, output[-3000:]
    if door in ("meta_graph", "inspect meta", "endpoints meta_graph", "freeze"):
        assert "WriteFile (file I/O; 1 node: evil_restore)" in output
    elif door == "predict function":
        assert "WriteFile (file I/O; 1 node: __inference_leak_" in output
    else:
        assert "ReadFile (file I/O; 1 node: steal/read)" in output
        assert "WriteFile (file I/O; 1 node: steal/write)" in output
    assert not _written(files)
    assert not (tmp_path / "run" / "frozen.pb").exists() and not list(tmp_path.glob("run/model.ckpt*"))
    assert not (tmp_path / "run" / "evaluation").exists()


@pytest.mark.slow
def test_allow_unsafe_ops_lets_a_tool_run_a_harmless_unlisted_op(files, tmp_path):
    from PIL import Image

    Image.fromarray(np.full((40, 48, 3), 200, np.uint8)).save(tmp_path / "image.png")
    command = ["finetune.tools", "predict", str(files["harmless_pb"]), str(tmp_path / "image.png"), "--input",
               "images:0", "--output", "probabilities:0"]
    with _root_logger_of_a_fresh_process():
        refused = cli(command, cwd=tmp_path)
        assert refused.returncode == FinetuneError.exit_status and "note/write" in refused.stderr
        assert not files["allowed"].exists()
        allowed = cli([*command, "--allow-unsafe-ops"], cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "allow_unsafe_ops is set" in allowed.stderr and "note/write" in allowed.stderr
    assert files["allowed"].read_text() == "written because allowed"  # the flag really lets the op run
    files["allowed"].unlink()


@pytest.mark.slow
def test_allow_unsafe_ops_lets_the_pipeline_train_on_a_harmless_unlisted_op(files, demo_cache, tiny_data, tmp_path):
    command = ["finetune", f"data.root={tiny_data}", "train.steps=2",
               "export.saved_model=false", f"hydra.run.dir={tmp_path}/run", "backbone=frozen_graph",
               f"backbone.params.graph={files['harmless_pb']}", *IMPORTED, "restore.checkpoint=null",
               "allow_unsafe_ops=true"]
    result = cli(command, cwd=tmp_path, cache=demo_cache)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "allow_unsafe_ops is set" in output and "note/write" in output
    assert files["allowed"].read_text() == "written because allowed"
    files["allowed"].unlink()
    exported = graphs.load_graph_def(tmp_path / "run/export/frozen_graph.pb", allow_unsafe=True)
    assert "WriteFile" in op_gate.refused_ops(exported)  # allowed in, so carried out: the user asked for it
