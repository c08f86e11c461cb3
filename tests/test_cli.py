"""The command line before any training: --help, config errors, validation, sweeps, shell completion.

What a user types is run in a subprocess. The probe below runs ``finetune.__main__.main()`` the way the
console script does and reports, as the process exits, whether TensorFlow was imported.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from conftest import ROOT, compose_config, run_cli
from omegaconf import OmegaConf

from finetune import validate as validation
from finetune import vocab
from finetune.__main__ import metric_value
from finetune.cli_help import description
from finetune.errors import FinetuneError

TF_MARKER = "TENSORFLOW_IMPORTED="
PROBE = f"""
import atexit, sys
atexit.register(lambda: print("{TF_MARKER}%s" % ("tensorflow" in sys.modules), flush=True))
sys.argv = ["finetune", *sys.argv[1:]]
from finetune.__main__ import main
main()
"""


def run_probe(args: list[str], cwd: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, bool]:
    """``finetune ARGS`` in a subprocess; the result (marker line removed) and whether TensorFlow was imported."""
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=120, env={**os.environ, **(env or {})})
    lines = result.stdout.splitlines()
    marker = [line for line in lines if line.startswith(TF_MARKER)]
    assert len(marker) == 1, result.stdout[-2000:] + result.stderr[-2000:]
    result.stdout = "\n".join(line for line in lines if not line.startswith(TF_MARKER))
    return result, marker[0] == f"{TF_MARKER}True"


def shipped(group: str) -> list[Path]:
    return sorted((p for p in resources.files("finetune.conf").joinpath(group).iterdir() if p.name.endswith(".yaml")),
                  key=lambda p: p.name)


# --help ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_experiments_groups_examples_without_tensorflow(flag, tmp_path):
    result, tensorflow = run_probe([flag], tmp_path)
    assert result.returncode == 0, result.stderr
    assert not tensorflow
    page = result.stdout
    assert page.startswith("Finetune") and "Usage: finetune" in page
    experiments = shipped("experiment")
    assert experiments
    for config in experiments:  # each experiment with its description, squeezed onto the page's lines
        name = config.name[:-len(".yaml")]
        assert description(config) and " ".join(description(config).split()) in " ".join(page.split())
        assert name in page
    for group in ("backbone", "head", "data", "optimizer"):
        assert f"{group}=" in page
        assert all(option.name[:-len(".yaml")] in page for option in shipped(group))
    for text in ("finetune experiment=mobilenet_head", "finetune -m experiment=mobilenet_head",
                 "train.steps=1000", "outputs/DATE/TIME/", "multirun/DATE/TIME/", "--hydra-help", "--cfg job",
                 "python -m finetune.tools --help", "-sc install=bash"):
        assert text in page, text
    assert not (tmp_path / "outputs").exists()


def test_description_is_the_first_comment_line_after_the_package_line(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("# @package _global_\n# Does one thing.\n# More detail.\ntrain:\n  steps: 3\n")
    assert description(config) == "Does one thing."
    config.write_text("train:\n  steps: 3  # not a description\n")
    assert description(config) == ""


# Config errors: before TensorFlow, no run directory ----------------------------------------------------

BAD_COMMANDS = {
    "misspelt key": (["optimizer.learnig_rate=0.1"], ["learnig_rate"]),
    "unknown nested key": (["+unknown.key=1"], ["'unknown.key' is not in the schema", "top level"]),
    "unknown top-level key": (["+foo=1"], ["'foo' is not in the schema"]),
    "misspelt added key": (["+optimizer.learnig_rate=0.1"], ["optimizer.learnig_rate", "learning_rate"]),
    "bad number": (["data.batch_size=0"], ["data.batch_size", "> 0"]),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_config_error_is_one_message_before_tensorflow_and_makes_no_run_dir(case, tmp_path):
    overrides, expected = BAD_COMMANDS[case]
    run_dir = tmp_path / "run"
    result, tensorflow = run_probe(["experiment=mobilenet_head", f"hydra.run.dir={run_dir}", *overrides], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert not tensorflow
    for fragment in expected:
        assert fragment in output, (fragment, output)
    assert not run_dir.exists()
    assert not (tmp_path / "outputs").exists()


def test_rejected_command_leaves_an_existing_run_dir_byte_identical(tmp_path):
    run_dir = tmp_path / "run"
    files = {"config.yaml": b"train:\n  steps: 7\n", "metrics.json": b'{"val": {"accuracy": 0.5}}',
             ".hydra/overrides.yaml": b"- train.steps=7\n", "finetune.log": b"the first run's log\n"}
    for relative, content in files.items():
        (run_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / relative).write_bytes(content)
    for overrides in (["train.steps=0"], ["+foo=1"], ["optimizer.learnig_rate=0.1"]):
        result, _ = run_probe(["experiment=mobilenet_head", f"hydra.run.dir={run_dir}", *overrides], tmp_path)
        assert result.returncode == 2, result.stderr
    found = {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert found == files


# validate(): every number and name, pure --------------------------------------------------------------

# override(s) -> fragments of the one paragraph expected
INVALID = {
    "data.batch_size=0": ["data.batch_size", "> 0"],
    "data.eval_batch_size=-4": ["data.eval_batch_size", "> 0"],
    "backbone.image_size=0": ["backbone.image_size", "> 0"],
    "backbone.num_classes=-1": ["backbone.num_classes", ">= 0"],
    "train.steps=0": ["train.steps", "> 0"],
    "train.log_every=0": ["train.log_every", "> 0"],
    "train.checkpoint_every=0": ["train.checkpoint_every", "> 0"],
    "train.histogram_every=-1": ["train.histogram_every", "> 0"],
    "train.eval_every=-1": ["train.eval_every", ">= 0"],
    "train.seed=-1": ["train.seed", "[0, 2**32)"],
    "data.num_parallel_calls=0": ["data.num_parallel_calls", "> 0", "-1"],
    "data.num_parallel_calls=-2": ["data.num_parallel_calls", "> 0", "-1"],
    "optimizer.learning_rate=0": ["optimizer.learning_rate", "> 0"],
    "optimizer.learning_rate=-0.1": ["optimizer.learning_rate", "> 0"],
    "optimizer.learning_rate=nan": ["optimizer.learning_rate", "> 0"],
    "optimizer.momentum=-0.9": ["optimizer.momentum", ">= 0"],
    "optimizer.name=adamw": ["optimizer.name", "sgd, momentum, adam, rmsprop", "Did you mean adam"],
    "optimizer.decay=linear": ["optimizer.decay", "constant, exponential, cosine, polynomial, piecewise"],
    "optimizer.warmup_steps=-1": ["optimizer.warmup_steps", ">= 0"],
    "optimizer.decay_rate=0": ["optimizer.decay_rate", "(0, 1]"],
    "optimizer.decay_steps=0": ["optimizer.decay_steps", "null (the phase's length) or an integer > 0"],
    "optimizer.end_learning_rate=-1": ["optimizer.end_learning_rate", ">= 0"],
    "optimizer.power=0": ["optimizer.power", "> 0"],
    "optimizer.clip_gradient_norm=-1": ["optimizer.clip_gradient_norm", ">= 0", "0: no clipping"],
    "optimizer.decay=piecewise": ["optimizer.boundaries", "non-empty list of increasing integers"],
    "optimizer.decay=piecewise optimizer.boundaries=[20,10] optimizer.factors=[1,1,1]": ["optimizer.boundaries",
                                                                                       "increasing"],
    "optimizer.decay=piecewise optimizer.boundaries=[10,20] optimizer.factors=[1,0.1]": ["optimizer.factors",
                                                                                       "3 numbers > 0"],
    "optimizer.lr_multipliers=[{pattern:'(Mob',factor:0.1}]": ["optimizer.lr_multipliers[0].pattern", "'(Mob'"],
    "optimizer.lr_multipliers=[{pattern:MobilenetV1/,factor:0}]": ["optimizer.lr_multipliers[0].factor", "> 0",
                                                                   "var_list"],
    "train.steps=null": ["train.steps", "null only with train.phases"],
    "train.label_smoothing=1": ["train.label_smoothing", "[0, 1)"],
    "train.moving_average_decay=1": ["train.moving_average_decay", "(0, 1)"],
    "train.top_k=0": ["train.top_k", "> 0"],
    "train.keep_best=val.acc train.eval_every=10": ["train.keep_best", "val.accuracy, val.top_k_accuracy, val.loss",
                                                    "Did you mean val.accuracy"],
    "train.keep_best=val.loss": ["train.eval_every", "when train.keep_best is set"],
    "train.early_stopping.metric=val.accuracy": ["train.eval_every", "when train.early_stopping.metric is set"],
    "train.early_stopping.patience=0": ["train.early_stopping.patience", "> 0"],
    "train.early_stopping.min_delta=-1": ["train.early_stopping.min_delta", ">= 0"],
    "train.steps=null train.phases=[{name:a,steps:3,epochs:1}]": ["'train.phases[0].steps' and 'train.phases[0].epochs'",
                                                                  "exactly one"],
    "train.steps=null train.phases=[{name:a}]": ["'train.phases[0].steps' and 'train.phases[0].epochs'"],
    "train.steps=null train.phases=[{name:a,epochs:0}]": ["train.phases[0].epochs", "> 0"],
    "train.steps=null train.phases=[{name:a,steps:3,warmup_steps:-2}]": ["train.phases[0].warmup_steps", ">= 0",
                                                                        "or null for optimizer.warmup_steps"],
    "train.steps=null train.phases=[{name:a,steps:3,optimizer_state:carry}]": ["train.phases[0].optimizer_state",
                                                                              "reset, keep"],
    "train.steps=null train.phases=[{name:a,steps:3,decay:piecewise,boundaries:[2]}]": ["optimizer.factors",
                                                                                       "2 numbers > 0"],
    "train.steps=null train.phases=[{name:a,steps:3},{name:b,steps:3,optimizer:adam,optimizer_state:keep}]": [
        "train.phases[1].optimizer_state", "'momentum'", "another optimizer's state cannot be kept"],
    "export.input=bytes": ["export.input", "float, image_bytes"],
    "export.parity_images=0": ["export.parity_images", "> 0"],
    "export.parity_tolerance=-1e-4": ["export.parity_tolerance", ">= 0"],
    "restore.on_missing=skip": ["restore.on_missing", "error, init"],
    "restore.on_shape_mismatch=ignore": ["restore.on_shape_mismatch", "error, init"],
    "data.split.train=0.5": ["data.split.train/val/test", "summing to 1"],
    "data.split.train=1.1 data.split.val=-0.1 data.split.test=0": ["data.split.train/val/test", "non-negative"],
    "data.split.train=0 data.split.val=0.5 data.split.test=0.5": ["data.split.train/val/test", "train > 0"],
    "restore.include=['(bad']": ["restore.include", "'(bad'", "regular expression"],
    "restore.exclude=[x,'[y']": ["restore.exclude", "'[y'"],
    "optimizer.var_list=[head/,'(bad']": ["optimizer.var_list", "'(bad'"],
    "restore.rename=[{pattern:'(Old',replacement:New}]": ["restore.rename[0].pattern", "'(Old'"],
    "head.layers.0.type=convolution": ["head.layers[0].type", "conv2d, separable_conv2d", "head.layers.0.type="],
    "head.layers.0.filters=0": ["head.layers[0].filters", "null or an integer > 0"],
    "head.layers.3.units=-1": ["head.layers[3].units", "null or an integer > 0"],
    "head.layers.0.kernel_size=0": ["head.layers[0].kernel_size", "> 0"],
    "head.layers.0.stride=0": ["head.layers[0].stride", "null or an integer > 0"],
    "head.layers.0.depth_multiplier=0": ["head.layers[0].depth_multiplier", "> 0"],
    "head.layers.0.padding=same": ["head.layers[0].padding", "SAME, VALID", "Did you mean SAME"],
    "head.layers.0.activation=gelu": ["head.layers[0].activation", "relu, relu6", "logits"],
    "head.layers.2.rate=1.0": ["head.layers[2].rate", "[0, 1)"],
    "head.layers.2.rate=-0.1": ["head.layers[2].rate", "[0, 1)"],
    "head.layers.1.type=activation": ["head.layers[1].activation", "type 'activation'"],
    "head.layers=[]": ["head.layers", "empty"],
    "head.weight_decay=-1": ["head.weight_decay", ">= 0"],
    "head.batch_norm_decay=1.5": ["head.batch_norm_decay", "[0, 1)"],
    "optimized_metric=val.acc": ["optimized_metric", "val.accuracy"],
    "optimized_metric=accuracy": ["optimized_metric", "val.accuracy"],
    "optimized_metric=export.parity.frozen_logits export.enabled=false": ["optimized_metric", "export.enabled"],
    "optimized_metric=test.accuracy data.split.val=0.2 data.split.test=0": ["optimized_metric", "no test split"],
    "+foo=1": ["'foo' is not in the schema", "optimized_metric"],
    "+head.layers.0.bar=2": ["'head.layers[0].bar' is not in the schema", "head.layers[0] has no key 'bar'"],
    "+data.split.tran=0.5": ["'data.split.tran'", "Did you mean train"],
}
VALID = ["train.eval_every=0", "data.num_parallel_calls=-1", "export.parity_tolerance=0", "head.layers.2.rate=0",
         "data.split.train=1 data.split.val=0 data.split.test=0", "head.layers.0.stride=null",
         "head.layers.3.units=7", "+backbone.params.min_depth=8", "optimizer.decay=cosine", "optimizer.name=sgd",
         "export.input=image_bytes", "restore.on_missing=init", "optimized_metric=test.loss",
         "optimized_metric=export.parity.frozen_logits", "restore.include=['MobilenetV1/Conv2d_[0-9]+_']",
         "optimizer.decay=exponential optimizer.decay_rate=1", "optimizer.decay=polynomial optimizer.power=0.5",
         "optimizer.decay=piecewise optimizer.boundaries=[10] optimizer.factors=[1,0.1]",
         "optimizer.lr_multipliers=[{pattern:MobilenetV1/,factor:0.1}]", "optimizer.clip_gradient_norm=0",
         "train.label_smoothing=0.1 train.moving_average_decay=0.999 train.top_k=1",
         "train.keep_best=val.loss train.eval_every=10 train.early_stopping.metric=val.accuracy",
         "optimized_metric=val.top_k_accuracy",
         "train.steps=null train.phases=[{name:a,epochs:1.5},{name:b,steps:3,optimizer_state:keep}]"]


def _config(overrides: str):
    return compose_config(["experiment=mobilenet_head", *overrides.split()])


@pytest.mark.parametrize("overrides", sorted(INVALID))
def test_validate_names_the_key_and_what_it_accepts(overrides):
    cfg = _config(overrides)
    found = validation.problems(cfg)
    assert len(found) == 1, found
    for fragment in INVALID[overrides]:
        assert fragment in found[0], (fragment, found[0])
    with pytest.raises(FinetuneError) as raised:
        validation.validate(cfg)
    assert str(raised.value) == found[0]


@pytest.mark.parametrize("overrides", VALID)
def test_validate_accepts_the_edges_of_each_range(overrides):
    validation.validate(_config(overrides))


@pytest.mark.parametrize("experiment", [p.name[:-len(".yaml")] for p in shipped("experiment")])
def test_every_shipped_experiment_validates(experiment):
    validation.validate(compose_config([f"experiment={experiment}", "restore.checkpoint=x"]))


def test_validate_reports_every_problem_at_once():
    with pytest.raises(FinetuneError) as raised:
        validation.validate(_config("data.batch_size=0 optimizer.name=adamw +foo=1"))
    message = str(raised.value)
    assert message.startswith("The configuration has 3 problems")
    assert all(key in message for key in ("data.batch_size", "optimizer.name", "'foo'"))


def test_implementations_must_match_the_valid_names():
    assert vocab.implementations(["a", "b"], {"b": 2, "a": 1}, "things") == {"a": 1, "b": 2}
    with pytest.raises(RuntimeError, match="things"):
        vocab.implementations(["a", "b"], {"a": 1}, "things")


def test_optimized_metric_is_read_from_the_metrics():
    metrics = {"val": {"accuracy": 0.75, "loss": 1.0}, "steps": 3, "restore": {"resumed": False}}
    assert metric_value(metrics, "val.accuracy") == 0.75 and metric_value(metrics, "steps") == 3.0
    for path in ("test.accuracy", "val", "restore.resumed"):
        with pytest.raises(FinetuneError, match="optimized_metric"):
            metric_value(metrics, path)
    assert math.isnan(metric_value({"val": {"loss": float("nan")}}, "val.loss"))


def test_config_yaml_names_the_validation_callback_and_the_objective():
    cfg = compose_config([])
    assert cfg.optimized_metric == "val.accuracy"
    root = OmegaConf.load(ROOT / "conf" / "config.yaml")
    assert root.hydra.callbacks.validate._target_ == "finetune.hydra_callbacks.ValidateBeforeRun"


# A sweep whose middle job is bad ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_bad_sweep_job_fails_alone_and_the_sweep_exits_non_zero(demo_cache, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["finetune", "-m", "experiment=mobilenet_head", "train.steps=2", "export.enabled=false",
                      "optimizer.learning_rate=0.01,-1,0.02", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                     cache=demo_cache)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    assert "optimizer.learning_rate' is -1.0" in output
    jobs = {p.name.split("_", 1)[0]: p for p in sweep.iterdir() if p.is_dir()}
    assert sorted(jobs) == ["0", "1", "2"]
    assert (jobs["0"] / "metrics.json").is_file() and (jobs["2"] / "metrics.json").is_file()
    assert not (jobs["1"] / "metrics.json").exists()


# Shell completion -----------------------------------------------------------------------------------------


def test_completion_query_lists_experiments_without_tensorflow(tmp_path):
    line = "finetune experiment=mob"
    result, tensorflow = run_probe(["-sc", "query=bash"], tmp_path, {"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert result.returncode == 0, result.stderr
    assert not tensorflow
    assert "experiment=mobilenet_head" in result.stdout.split()


def test_completion_installs_for_the_console_script_even_under_python_m(tmp_path):
    result = run_cli(["finetune", "-sc", "install=bash"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("-F hydra_bash_completion finetune")


@pytest.mark.skipif(shutil.which("bash") is None or not (Path(sys.executable).parent / "finetune").exists(),
                    reason="needs bash and the finetune console script beside this Python")
def test_bash_completes_an_experiment_through_the_installed_script(tmp_path):
    script = """
eval "$(finetune -sc install=bash)"
COMP_LINE="finetune experiment=mob"; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(finetune experiment=mob); COMP_CWORD=1
hydra_bash_completion
printf '%s\\n' "${COMPREPLY[@]}"
"""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "experiment=mobilenet_head" in result.stdout.split(), result.stdout + result.stderr
