"""Weight sources for restore.checkpoint (checkpoint, directory, frozen .pb, .npz), restore.rename, the
missing/shape-mismatch policies, verification, and the inspect / pb2ckpt tools.

The weights are those of test_mobilenet_v1 (MobileNet v1's Conv2d_0 and first three separable blocks, at
depth multiplier 0.25: 7 layers of 5 variables, under MobileNet v1's own names): every reader and policy
treats each tensor alike, and this backbone builds in a fraction of the whole net's time.
"""
import functools

import numpy as np
import pytest
from conftest import ROOT, cli, compose_config, run_pipeline, tiny_config, tiny_overrides

from finetune.model.backbones import get_network_fn
from finetune.weights.readers import bit_identical, checksum, frozen_variables, open_weights, write_checkpoint
from finetune.compat import tf, tf1
from finetune.config import RenameRule, RestoreConfig
from finetune.errors import FinetuneError
from finetune.graphs import save_graph_def
from finetune.freezing import freeze_session
from finetune.weights.restore import apply_restore, build_restore, format_report, plan_restore, verify_restored
from finetune.validate import check_restore, raise_problems
from finetune.tools import main as tools_main

BACKBONE = RestoreConfig(include=["MobilenetV1/"])
VARIABLES = 7 * 5  # Conv2d_0 and three depthwise/pointwise pairs; weights, BatchNorm beta, gamma, mean, variance


def _build_backbone() -> dict:
    """test_mobilenet_v1 0.25 at 32x32 (the tiny profile's backbone) in the current graph: its variables by name."""
    images = tf1.placeholder(tf.float32, [None, 32, 32, 3], name="input")
    features, _ = get_network_fn("test_mobilenet_v1", 0, depth_multiplier=0.25)(images)
    tf.identity(features, name="features")
    return {variable.op.name: variable for variable in tf1.global_variables()}


@functools.lru_cache(maxsize=None)
def _backbone_graph() -> tuple[tf.Graph, dict]:
    """One graph of the backbone for every restore of this module (each restore adds its own ops, and runs in a
    session of its own): the graph and its variables by name."""
    with tf.Graph().as_default() as graph:
        return graph, _build_backbone()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint (with .meta) of random weights and BatchNorm statistics, its frozen .pb, and an .npz."""
    folder = tmp_path_factory.mktemp("weights")
    rng = np.random.default_rng(7)
    with tf.Graph().as_default():
        variables = _build_backbone()
        with tf1.Session() as sess:
            feeds = {}
            for name, variable in variables.items():
                shape = variable.shape.as_list()
                value = rng.uniform(0.5, 2.0, shape) if "moving_variance" in name else rng.normal(0, 0.3, shape)
                feeds[variable.initializer.inputs[1]] = value.astype(np.float32)
            sess.run([variable.initializer for variable in variables.values()], feeds)
            prefix = tf1.train.Saver().save(sess, str(folder / "ckpt" / "model.ckpt"))
            save_graph_def(freeze_session(sess, ["features"]), folder / "frozen.pb")
    original = open_weights(prefix).read()
    np.savez(folder / "weights.npz", **original)
    return {"prefix": prefix, "dir": str(folder / "ckpt"), "pb": str(folder / "frozen.pb"),
            "npz": str(folder / "weights.npz"), "original": original, "folder": folder}


@pytest.fixture(scope="module")
def pb2ckpt_prefix(weights):
    out = str(weights["folder"] / "from_pb" / "model.ckpt")
    result = cli(["finetune.tools", "pb2ckpt", weights["pb"], out, "--scope", "MobilenetV1"], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{VARIABLES} variables" in result.stdout and "read back bit-identical" in result.stdout
    return out


@pytest.fixture(scope="module")
def foreign_pb(tmp_path_factory):
    """A frozen graph of ref variables (``X/read``) that are not MobileNet's."""
    path = tmp_path_factory.mktemp("foreign") / "foreign.pb"
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, [None, 3], name="x")
        w = tf1.get_variable("Dense/w", shape=[3, 2], use_resource=False)
        tf.identity(tf.matmul(x, w) * 2.0, name="y")
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            save_graph_def(freeze_session(sess, ["y"]), path)
    return str(path)


def _restore(spec, restore_cfg: RestoreConfig = BACKBONE):
    """Plan, apply and verify ``spec`` into the backbone, in a fresh session (where no variable holds a value
    yet); the plan, the session values, the report."""
    graph, variables = _backbone_graph()
    with graph.as_default():
        shapes = {name: v.shape.as_list() for name, v in variables.items()}
        plan = plan_restore(shapes, spec, set(), restore_cfg)
        with tf1.Session() as sess:
            apply_restore(sess, build_restore(plan, variables))
            assert verify_restored(sess, plan, variables) == []
            values = sess.run(variables)
    return plan, values, format_report(plan, verified=True)


@pytest.mark.parametrize("source", ["prefix", "dir", "pb", "npz", "pb2ckpt"])
def test_every_source_restores_bit_identical_values(weights, pb2ckpt_prefix, source):
    spec = pb2ckpt_prefix if source == "pb2ckpt" else weights[source]
    plan, values, report = _restore(spec)
    kind = {"pb": "frozen_graph", "npz": "npz"}.get(source, "checkpoint")
    assert plan.source.kind == kind
    assert sorted(plan.restore) == sorted(weights["original"]) and len(plan.restore) == VARIABLES
    for name, value in weights["original"].items():
        assert bit_identical(values[name], value), name
        assert plan.checksums[name] == checksum(value)
    assert f"verified: {VARIABLES} tensors bit-identical to {plan.checkpoint}" in report
    name = "MobilenetV1/Conv2d_3_depthwise/BatchNorm/moving_variance"
    assert f"{name} <- {name}\t[32]\t{checksum(weights['original'][name])}" in report


def test_frozen_variables_of_ref_and_resource_graphs(weights, foreign_pb):
    from finetune.graphs import load_graph_def

    resource = frozen_variables(load_graph_def(weights["pb"]))  # read through .../ReadVariableOp
    assert len(resource) == VARIABLES and "MobilenetV1/Conv2d_0/BatchNorm/moving_mean" in resource
    ref = open_weights(foreign_pb)  # read through Dense/w/read; the constant 2.0 is no variable
    assert ref.shapes() == {"Dense/w": [3, 2]} and ref.dtypes() == {"Dense/w": "float32"}


def test_rename_restores_a_checkpoint_saved_under_another_scope(weights, tmp_path):
    old = {name.replace("MobilenetV1/", "Old/", 1): value for name, value in weights["original"].items()}
    prefix = write_checkpoint(old, tmp_path / "old.ckpt")
    rules = [RenameRule(pattern="Old/", replacement="MobilenetV1/")]
    plan, values, report = _restore(prefix, RestoreConfig(include=["MobilenetV1/"], rename=rules))
    assert plan.restore["MobilenetV1/Conv2d_0/weights"] == "Old/Conv2d_0/weights" and not plan.unused
    assert all(bit_identical(values[name], value) for name, value in weights["original"].items())
    assert "MobilenetV1/Conv2d_0/weights <- Old/Conv2d_0/weights" in report
    with pytest.raises(FinetuneError, match=r"restore\.rename\[0\].*'Older/'"):
        _restore(prefix, RestoreConfig(include=["MobilenetV1/"], rename=[RenameRule("Older/", "MobilenetV1/")]))
    with pytest.raises(FinetuneError, match="missing in checkpoint: MobilenetV1/Conv2d_0/weights"):
        _restore(prefix)


def test_restore_keys_compose_and_are_validated():
    cfg = compose_config(["experiment=mobilenet_head", "restore.rename=[{pattern: Old/, replacement: MobilenetV1/}]",
                          "restore.on_missing=init"]).restore
    assert cfg.rename[0].pattern == "Old/" and cfg.rename[0].replacement == "MobilenetV1/"
    assert cfg.on_missing == "init" and cfg.on_shape_mismatch == "error"
    with pytest.raises(FinetuneError, match="restore.on_shape_mismatch"):
        raise_problems(check_restore(RestoreConfig(on_shape_mismatch="skip")))
    with pytest.raises(FinetuneError, match=r"restore\.rename\[0\]\.pattern"):
        raise_problems(check_restore(RestoreConfig(rename=[RenameRule(pattern="(", replacement="")])))


def _damaged_npz(weights, path) -> str:
    tensors = dict(weights["original"])
    del tensors["MobilenetV1/Conv2d_1_depthwise/depthwise_weights"]
    del tensors["MobilenetV1/Conv2d_2_pointwise/BatchNorm/beta"]
    tensors["MobilenetV1/Conv2d_0/weights"] = np.zeros((3, 3, 3, 16), np.float32)
    tensors["MobilenetV1/Conv2d_3_pointwise/BatchNorm/gamma"] = np.ones((7,), np.float32)
    np.savez(path, **tensors)
    return str(path)


def test_missing_and_mismatched_name_every_offender_with_both_shapes(weights, tmp_path):
    spec = _damaged_npz(weights, tmp_path / "damaged.npz")
    with pytest.raises(FinetuneError) as error:
        _restore(spec)
    message = str(error.value)
    assert ("restore.checkpoint=" in message
            and "2 variable(s) to restore are missing and 2 have another shape" in message)
    assert "missing in checkpoint: MobilenetV1/Conv2d_1_depthwise/depthwise_weights [3, 3, 8, 1]" in message
    assert "missing in checkpoint: MobilenetV1/Conv2d_2_pointwise/BatchNorm/beta [32]" in message
    assert "shape mismatch: MobilenetV1/Conv2d_0/weights graph [3, 3, 3, 8] vs checkpoint [3, 3, 3, 16]" in message
    assert "shape mismatch: MobilenetV1/Conv2d_3_pointwise/BatchNorm/gamma graph [32] vs checkpoint [7]" in message
    with pytest.raises(FinetuneError, match="have another shape") as error:  # on_missing=init: mismatches remain
        _restore(spec, RestoreConfig(include=["MobilenetV1/"], on_missing="init"))
    assert "missing in checkpoint" not in str(error.value)


def test_init_policies_initialise_the_offenders_and_report_them(weights, tmp_path):
    spec = _damaged_npz(weights, tmp_path / "damaged.npz")
    plan, values, report = _restore(spec, RestoreConfig(include=["MobilenetV1/"], on_missing="init",
                                                        on_shape_mismatch="init"))
    offenders = {"MobilenetV1/Conv2d_1_depthwise/depthwise_weights", "MobilenetV1/Conv2d_2_pointwise/BatchNorm/beta",
                 "MobilenetV1/Conv2d_0/weights", "MobilenetV1/Conv2d_3_pointwise/BatchNorm/gamma"}
    assert set(plan.initialise) == offenders and len(plan.restore) == VARIABLES - 4
    assert all(bit_identical(values[name], weights["original"][name]) for name in plan.restore)
    assert "## Initialised (4)" in report and f"verified: {VARIABLES - 4} tensors bit-identical" in report
    assert "MobilenetV1/Conv2d_2_pointwise/BatchNorm/beta\t[32]  (missing in checkpoint, on_missing=init)" in report
    assert "MobilenetV1/Conv2d_0/weights\t[3, 3, 3, 8]  (shape mismatch: checkpoint [3, 3, 3, 16]" in report
    assert "of which 2 missing in the checkpoint, 2 of another shape" in report


def test_bad_sources_are_one_error_naming_the_key(weights, foreign_pb, tmp_path):
    (tmp_path / "broken.ckpt.index").write_bytes(b"not a checkpoint")
    (tmp_path / "garbage.pb").write_bytes(b"\xff\x00 not a graph")
    np.savez(tmp_path / "objects.npz", names=np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "float64.npz", **{name: v.astype(np.float64) for name, v in weights["original"].items()})
    cases = {
        str(tmp_path / "broken.ckpt"): "checkpoint cannot be read",
        str(tmp_path / "garbage.pb"): "is not a GraphDef",
        str(tmp_path / "nowhere.npz"): "no such file",
        str(tmp_path / "objects.npz"): "never unpickled",
        foreign_pb: f"{VARIABLES} variable(s) to restore are missing",  # a .pb without the named tensors
    }
    for spec, expected in cases.items():
        with pytest.raises(FinetuneError, match="restore.checkpoint") as error:
            _restore(spec)
        assert expected in str(error.value), (spec, str(error.value))
    with pytest.raises(FinetuneError,
                       match="dtype mismatch: MobilenetV1/Conv2d_0/weights graph float32 vs checkpoint float64"):
        _restore(str(tmp_path / "float64.npz"))


@pytest.mark.slow
def test_pipeline_restores_from_a_frozen_graph_and_fails_cleanly_on_a_foreign_one(weights, foreign_pb, tiny_data,
                                                                                   tmp_path):
    """A tiny run restores its whole backbone from the frozen graph; the command line refuses a foreign one."""
    cache = tmp_path / "cache"
    cfg = tiny_config(cache, tiny_data, f"restore.checkpoint={weights['pb']}", "train.steps=2", "export.enabled=false")
    metrics = run_pipeline(cfg, tmp_path / "run")
    assert metrics["restore"]["restored"] == VARIABLES and metrics["restore"]["verified_bit_identical"] is True
    report = (tmp_path / "run" / "restore_report.txt").read_text()
    assert f"verified: {VARIABLES} tensors bit-identical to {weights['pb']}" in report
    result = cli(["finetune", *tiny_overrides(cache, tiny_data, f"restore.checkpoint={foreign_pb}"),
                  f"hydra.run.dir={tmp_path}/bad"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert ("restore.checkpoint" in output
            and "missing in checkpoint: MobilenetV1/Conv2d_0/weights [3, 3, 3, 8]" in output)
    assert "Traceback" not in output


@pytest.mark.parametrize("source", ["prefix", "meta", "pb", "npz"])
def test_inspect_lists_names_shapes_dtypes_and_parameters(weights, capsys, source):
    path = weights["prefix"] + ".meta" if source == "meta" else weights[source]
    assert tools_main(["inspect", path]) == 0
    out = capsys.readouterr().out
    total = sum(value.size for value in weights["original"].values())
    assert f"{VARIABLES} tensors, {total:,} parameters" in out
    assert any(line.split() == ["MobilenetV1/Conv2d_0/weights", "[3,", "3,", "3,", "8]", "float32", "216"]
               for line in out.splitlines())


def test_inspect_ops_lists_graph_nodes(weights, capsys):
    assert tools_main(["inspect", weights["pb"], "--ops"]) == 0
    out = capsys.readouterr().out
    assert "FusedBatchNormV3" in out and any(line.split() == ["features", "Identity"] for line in out.splitlines())
    assert tools_main(["inspect", weights["prefix"], "--ops"]) == 0  # the .meta beside the checkpoint
    assert "VarHandleOp" in capsys.readouterr().out
    assert tools_main(["inspect", weights["npz"], "--ops"]) == 2
    assert "has no graph" in capsys.readouterr().err


def test_tools_fail_on_a_missing_file_without_traceback(tmp_path):
    for args in (["inspect", str(tmp_path / "nothing.ckpt")],
                 ["pb2ckpt", str(tmp_path / "no.pb"), str(tmp_path / "o")]):
        result = cli(["finetune.tools", *args], cwd=ROOT)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "error:" in result.stderr and str(tmp_path) in result.stderr
