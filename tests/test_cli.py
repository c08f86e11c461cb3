"""The command line before any training: --help, config errors, validation, sweeps, shell completion.

What gets imported is a property of a fresh process: the commands that must answer without TensorFlow
(--help, completion, config errors) run in one subprocess started for them all (``probes``), which runs
``finetune.__main__.main()`` as the console script does, once per command, and records after each whether
TensorFlow has been imported. Messages, exit statuses and files otherwise come from ``cli`` (in-process).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from conftest import ROOT, cli, compose_config, tiny_overrides
from omegaconf import OmegaConf

import finetune.__main__ as entry
from finetune import validate as validation
from finetune import vocab
from finetune.__main__ import metric_value
from finetune.cli_help import description
from finetune.errors import FinetuneError

RESULTS_MARKER = "PROBE_RESULTS="
# One fresh interpreter runs each command of sys.argv[1] (JSON: name -> argv, cwd, env) through main() in
# turn: its own argv (argv0: sys.argv[0], "finetune" as the console script sets it unless given), working
# directory and environment, output captured, Hydra's global state and log handlers reset after it. After
# each command it records whether TensorFlow is in sys.modules; at exit, once more (an import made at
# shutdown would show there). A command that imported TensorFlow taints the ones after it, never those before.
PROBE = f"""
import atexit, contextlib, io, json, logging, os, sys, time, traceback
results = {{}}
atexit.register(lambda: print("{RESULTS_MARKER}" + json.dumps(
    {{"commands": results, "tensorflow_at_exit": "tensorflow" in sys.modules}}), flush=True))
from hydra.core.global_hydra import GlobalHydra
import finetune.__main__ as entry
for name, command in json.loads(sys.argv[1]).items():
    saved_env, saved_cwd, root = dict(os.environ), os.getcwd(), logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    os.environ.update(command["env"])
    os.chdir(command["cwd"])
    sys.argv = [command.get("argv0", "finetune"), *command["args"]]
    started = time.perf_counter()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            entry.main()
        except SystemExit as exit_:  # as the interpreter turns it into an exit status
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:  # an uncaught exception: a traceback and status 1
            traceback.print_exc()
            code = 1
    GlobalHydra.instance().clear()
    for handler in root.handlers:
        if handler not in saved_handlers:
            handler.close()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    os.environ.clear()
    os.environ.update(saved_env)
    os.chdir(saved_cwd)
    results[name] = {{"returncode": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
                      "tensorflow": "tensorflow" in sys.modules, "seconds": time.perf_counter() - started}}
"""


def shipped(group: str) -> list[Path]:
    return sorted((p for p in resources.files("finetune.conf").joinpath(group).iterdir() if p.name.endswith(".yaml")),
                  key=lambda p: p.name)


# Config errors: before TensorFlow, no run directory, no Hydra text, within EARLY_SECONDS. case -> (overrides,
# fragments of the message)
BAD_COMMANDS = {
    "misspelt key": (["optimizer.learnig_rate=0.1"], ["learnig_rate"]),
    "unknown nested key": (["+unknown.key=1"], ["'unknown.key' is not in the schema", "top level"]),
    "unknown top-level key": (["+foo=1"], ["'foo' is not in the schema"]),
    "misspelt added key": (["+optimizer.learnig_rate=0.1"], ["optimizer.learnig_rate", "learning_rate"]),
    "bad number": (["data.batch_size=0"], ["data.batch_size", "> 0"]),
    # issue 19: refused before anything starts (finetune.preflight before Hydra; the paths in its callback)
    "wrong backbone option": (["backbone=resnet50"], ["backbone=resnet50", "Did you mean backbone=resnet_v2_50 or "
                                                      "backbone=resnet_v1_50?"]),
    "wrong experiment": (["experiment=mobilenet_heads"], ["Did you mean experiment=mobilenet_head?"]),
    "misspelt group": (["optimiser.learning_rate=0.1"], ["Did you mean optimizer.learning_rate=0.1?"]),
    "unknown backbone name": (["backbone.name=resnet50"], ["backbone.name", "resnet_v1_50", "backbone=NAME"]),
    "missing data root": (["data.root=/nonexistent/images"], ["data.root", "/nonexistent/images", "does not exist"]),
    "missing checkpoint": (["restore.checkpoint=/nonexistent/model.ckpt"], ["restore.checkpoint", "does not exist"]),
    "sweep with --cfg": (["-m", "--cfg=job", "train.steps=1,2"], ["-m and --cfg cannot go together"]),
    "slurm without slurm": (["-m", "hydra/launcher=slurm", "train.steps=1,2"],
                            ["no sbatch and no srun on PATH", "hydra/launcher=local_submitit"]),
}
# The environment of a bad command, where it matters: no SLURM commands on PATH.
BAD_COMMAND_ENV = {"slurm without slurm": {"PATH": os.devnull}}
EARLY_SECONDS = 1.0  # issue 19: a command line refused before anything starts answers within this
COMPLETION_LINE = "finetune experiment=mob"


def _probe_commands(base: Path) -> dict[str, dict]:
    """The commands of the probe: name -> argv, working directory (each its own, empty) and environment."""
    commands = {
        "--help": {"args": ["--help"]},
        "-h": {"args": ["-h"]},
        "completion query": {"args": ["-sc", "query=bash"],
                             "env": {"COMP_LINE": COMPLETION_LINE, "COMP_POINT": str(len(COMPLETION_LINE))}},
        # `python -m finetune` sets sys.argv[0] to the path of finetune/__main__.py.
        "completion install": {"args": ["-sc", "install=bash"], "argv0": entry.__file__},
    }
    for case, (overrides, _) in BAD_COMMANDS.items():
        flags = [arg for arg in overrides if arg.startswith("-")]  # before the overrides, as argparse wants them
        overrides = [arg for arg in overrides if arg not in flags]
        commands[case] = {"args": [*flags, "experiment=mobilenet_head", f"hydra.run.dir={base / case / 'run'}",
                                   *overrides],
                          "env": BAD_COMMAND_ENV.get(case, {})}
    for name, command in commands.items():
        (base / name).mkdir()
        command.update(cwd=str(base / name), env=command.get("env", {}))
    return commands


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict:
    """Every command of :func:`_probe_commands` run by the probe in one fresh process: name -> returncode,
    stdout, stderr, tensorflow (imported once it ended), cwd; "tensorflow_at_exit" -> imported at exit."""
    base = tmp_path_factory.mktemp("probes")
    commands = _probe_commands(base)
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], cwd=base, capture_output=True,
                            text=True, timeout=300)
    marker = [line for line in result.stdout.splitlines() if line.startswith(RESULTS_MARKER)]
    assert result.returncode == 0 and len(marker) == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(marker[0][len(RESULTS_MARKER):])
    assert sorted(report["commands"]) == sorted(commands)  # every command ran to its end
    for name, outcome in report["commands"].items():
        outcome["cwd"] = Path(commands[name]["cwd"])
    return {**report["commands"], "tensorflow_at_exit": report["tensorflow_at_exit"]}


def test_no_probe_command_imported_tensorflow_even_at_exit(probes):
    assert probes["tensorflow_at_exit"] is False


# --help ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_experiments_groups_examples_without_tensorflow(flag, probes):
    result = probes[flag]
    assert result["returncode"] == 0, result["stderr"]
    assert not result["tensorflow"]
    page = result["stdout"]
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
    assert list(result["cwd"].iterdir()) == []  # no outputs/ folder, nothing at all


def test_description_is_the_first_comment_line_after_the_package_line(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("# @package _global_\n# Does one thing.\n# More detail.\ntrain:\n  steps: 3\n")
    assert description(config) == "Does one thing."
    config.write_text("train:\n  steps: 3  # not a description\n")
    assert description(config) == ""


# Config errors: before TensorFlow, no run directory ----------------------------------------------------


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_config_error_is_one_message_before_tensorflow_and_makes_no_run_dir(case, probes):
    _, expected = BAD_COMMANDS[case]
    result = probes[case]
    output = result["stdout"] + result["stderr"]
    assert result["returncode"] == 2, output
    assert "Traceback" not in output
    assert not result["tensorflow"]
    for fragment in expected:
        assert fragment in output, (fragment, output)
    assert list(result["cwd"].iterdir()) == []  # neither hydra.run.dir nor outputs/ nor multirun/
    assert "search path" not in output and "HYDRA_FULL_ERROR" not in output and "+optimiser" not in output
    assert result["seconds"] < EARLY_SECONDS, result["seconds"]


def test_rejected_command_leaves_an_existing_run_dir_byte_identical(tmp_path):
    run_dir = tmp_path / "run"
    files = {"config.yaml": b"train:\n  steps: 7\n", "metrics.json": b'{"val": {"accuracy": 0.5}}',
             ".hydra/overrides.yaml": b"- train.steps=7\n", "finetune.log": b"the first run's log\n"}
    for relative, content in files.items():
        (run_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / relative).write_bytes(content)
    for overrides in (["train.steps=0"], ["+foo=1"], ["optimizer.learnig_rate=0.1"]):
        result = cli(["finetune", "experiment=mobilenet_head", f"hydra.run.dir={run_dir}", *overrides], cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert overrides[0].split("=")[0].lstrip("+") in result.stderr  # refused for this key, not another reason
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
    "train.eval_every=-1": ["train.eval_every", "'epoch'", "an integer > 0", "or null"],
    "train.eval_every=0": ["train.eval_every", "0 no longer means 'only after training': null does"],
    "train.eval_every=epochs": ["train.eval_every", "'epoch' (an evaluation each time"],
    "train.epochs=0": ["train.epochs", "> 0"],
    "train.steps=null train.epochs=2 train.phases=[{name:a,steps:3}]": ["'train.epochs' is 2", "train.phases is set",
                                                                       "train.phases.N.epochs"],
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
    "train.steps=null": ["train.steps", "null only with train.phases or train.epochs"],
    "train.label_smoothing=1": ["train.label_smoothing", "[0, 1)"],
    "train.moving_average_decay=1": ["train.moving_average_decay", "(0, 1)"],
    "train.top_k=0": ["train.top_k", "> 0"],
    "train.keep_best=val.acc train.eval_every=10": ["train.keep_best", "val.accuracy, val.balanced_accuracy, "
                                                    "val.macro_f1, val.top_k_accuracy, val.loss",
                                                    "Did you mean val.accuracy"],
    "train.keep_best=val.loss train.eval_every=null": ["train.eval_every", "when train.keep_best is set"],
    "train.early_stopping.metric=val.accuracy train.eval_every=null": ["train.eval_every",
                                                                       "when train.early_stopping.metric is set"],
    "train.early_stopping.patience=0": ["train.early_stopping.patience", "> 0"],
    "train.early_stopping.min_delta=-1": ["train.early_stopping.min_delta", ">= 0"],
    "train.steps=null train.phases=[{name:a,steps:3,epochs:1}]": [
        "'train.phases[0].steps' and 'train.phases[0].epochs'", "exactly one"],
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
    "optimized_metric=export.parity.frozen_logits data.folds=3": ["optimized_metric", "cross-validation fold"],
    "optimized_metric=test.accuracy data.split.train=0.8 data.split.val=0.2 data.split.test=0": [
        "optimized_metric", "no test split"],
    "+foo=1": ["'foo' is not in the schema", "optimized_metric"],
    "+head.layers.0.bar=2": ["'head.layers[0].bar' is not in the schema", "head.layers[0] has no key 'bar'"],
    "+data.split.tran=0.5": ["'data.split.tran'", "Did you mean train"],
}
VALID = ["train.eval_every=null", "train.eval_every=epoch", "train.eval_every=1", "train.keep_best=val.loss",
         "train.epochs=0.5", "train.steps=null train.epochs=2", "data.num_parallel_calls=-1",
         "export.parity_tolerance=0", "head.layers.2.rate=0",
         "data.split.train=1 data.split.val=0 data.split.test=0", "head.layers.0.stride=null",
         "head.layers.3.units=7", "+backbone.params.min_depth=8", "optimizer.decay=cosine", "optimizer.name=sgd",
         "export.input=image_bytes", "restore.on_missing=init", "optimized_metric=test.loss",
         "optimized_metric=export.parity.frozen_logits", "optimized_metric=export.parity.frozen_logits data.folds=3 "
         "export.enabled=true", "restore.include=['MobilenetV1/Conv2d_[0-9]+_']",
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


# Job folders are named after their overrides (hydra.job.override_dirname), and a name longer than 255
# characters cannot be made: the tiny profile's keys, the same in every job, are left out of the names.
TINY_KEYS_OUT_OF_JOB_DIRS = ("hydra.job.config.override_dirname.exclude_keys=[experiment,hparams_search,backbone.name,"
                             "backbone.cut,backbone.image_size,data.root,paths.cache_dir,train.log_every]")


@pytest.mark.slow
def test_a_bad_sweep_job_fails_alone_and_the_sweep_exits_non_zero(demo_cache, tiny_data, tmp_path):
    """Hydra's basic launcher (our local one) runs the jobs in this process; the tiny profile, 2 steps. The
    jobs share the feature cache: the last one finds every entry the first one wrote."""
    sweep = tmp_path / "sweep"
    result = cli(["finetune", "-m", *tiny_overrides(demo_cache, tiny_data, "train.steps=2", "export.enabled=false"),
                  "optimizer.learning_rate=0.01,-1,0.02", f"hydra.sweep.dir={sweep}", TINY_KEYS_OUT_OF_JOB_DIRS],
                 cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]  # a sweep with a failed job: status 1, not a config error's 2
    assert "Traceback" not in output
    assert "optimizer.learning_rate' is -1.0" in output
    jobs = {p.name.split("_", 1)[0]: p for p in sweep.iterdir() if p.is_dir()}
    assert sorted(jobs) == ["0", "1", "2"]
    assert (jobs["0"] / "metrics.json").is_file() and (jobs["2"] / "metrics.json").is_file()
    assert not (jobs["1"] / "metrics.json").exists()
    fills = re.findall(r"Feature cache (\S+), train split: (\d+) images' features reused, (\d+) computed", output)
    assert len(fills) == 2 and fills[0][0] == fills[1][0]  # one key for both jobs
    assert fills[1][1:] == (str(int(fills[0][1]) + int(fills[0][2])), "0")  # the second reuses every entry


# Shell completion -----------------------------------------------------------------------------------------


def test_completion_query_lists_experiments_without_tensorflow(probes):
    result = probes["completion query"]
    assert result["returncode"] == 0, result["stderr"]
    assert not result["tensorflow"]
    assert "experiment=mobilenet_head" in result["stdout"].split()


def test_completion_installs_for_the_console_script_even_under_python_m(probes):
    result = probes["completion install"]  # argv[0] as `python -m finetune` sets it: .../finetune/__main__.py
    assert result["returncode"] == 0, result["stderr"]
    assert result["stdout"].rstrip().endswith("-F hydra_bash_completion finetune")


@pytest.mark.slow
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


def test_a_command_after_an_in_process_sweep_still_reports_bad_input(monkeypatch, tmp_path):
    """main() run again in one process (tests, notebooks): a sweep an earlier command launched does not make
    this command's bad override look like a failed job (exit 1 instead of 2)."""
    from finetune.sweeps import launchers

    monkeypatch.setattr(launchers, "_launched", True)  # what an earlier in-process sweep leaves behind
    result = cli(["finetune", "experiment=mobilenet_head", "train.steps=ten"], tmp_path)
    assert result.returncode == 2 and "train.steps" in result.stderr, result.stderr
