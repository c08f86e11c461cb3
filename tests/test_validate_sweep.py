"""A sweep is checked whole before anything is queued (finetune/sweeps/validate_sweep.py, tools validate)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_BACKBONE, cli
from finetune.errors import USER_ERROR
from finetune.sweeps.validate_sweep import (CHECK_ENV, check_sweep, expand_sweep, refuse_bad_sweep,
                                            validate_sweep)
from finetune.tools import main as tools_main

LR = "optimizer.learning_rate"


def write_experiment(config_dir: Path, name: str, text: str) -> Path:
    (config_dir / "experiment").mkdir(parents=True, exist_ok=True)
    (config_dir / "experiment" / f"{name}.yaml").write_text("# @package _global_\n" + text)
    return config_dir


def test_expansion_is_hydras_cartesian_product_without_hydras_own_overrides():
    jobs = expand_sweep(["experiment=mobilenet_head", f"{LR}=0.1,0.01", "train.steps=range(1,4)",
                         "hydra.sweep.dir=/tmp/elsewhere", "optimizer=choice(sgd,adam)"])
    assert len(jobs) == 2 * 3 * 2
    assert jobs[0] == ["experiment=mobilenet_head", f"{LR}=0.1", "train.steps=1", "optimizer=sgd"]
    assert jobs[1] == ["experiment=mobilenet_head", f"{LR}=0.1", "train.steps=1", "optimizer=adam"]
    assert jobs[-1] == ["experiment=mobilenet_head", f"{LR}=0.01", "train.steps=3", "optimizer=adam"]
    assert not any(o.startswith("hydra") for job in jobs for o in job)
    # glob() lists a config group's options, as Hydra's sweeper does.
    assert expand_sweep(["head=glob(pool*)"]) == [["head=pool_dense"]]


def test_sweeper_params_of_a_config_are_swept(tmp_path):
    write_experiment(tmp_path, "grid", "hydra:\n  sweeper:\n    params:\n      optimizer.learning_rate: 0.1,0.01\n")
    assert expand_sweep(["experiment=grid", "train.steps=1,2"], tmp_path) == [
        [f"{LR}=0.1", "experiment=grid", "train.steps=1"], [f"{LR}=0.1", "experiment=grid", "train.steps=2"],
        [f"{LR}=0.01", "experiment=grid", "train.steps=1"], [f"{LR}=0.01", "experiment=grid", "train.steps=2"]]


@pytest.mark.slow  # Hydra composes every representative job of two searches: seconds
def test_search_sweeper_is_checked_at_the_ends_of_intervals_and_every_choice(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    write_experiment(tmp_path, "search", "defaults:\n  - override /hydra/sweeper: optuna\nhydra:\n  sweeper:\n"
                     "    params:\n      optimizer.learning_rate: tag(log, interval(0.001, 0.1))\n"
                     "      head: choice(pool_dense, conv_pool_dense)\n")
    check = check_sweep(["experiment=search", "train.steps=range(10,20)"], tmp_path, build_graphs=False)
    assert not check.exhaustive and check.problems == []
    assert sorted(tuple(job) for job in check.jobs) == sorted(
        (f"{LR}={lr}", f"head={head}", "experiment=search", f"train.steps={steps}")
        for lr in ("0.001", "0.1") for head in ("pool_dense", "conv_pool_dense") for steps in (10, 20))
    bad = validate_sweep(["experiment=search", "optimizer.momentum=interval(-0.5,0.9)"], tmp_path, build_graphs=False)
    assert len(bad) == 1 and "optimizer.momentum=-0.5" in bad[0] and "optimizer.momentum=0.9" not in bad[0]


def test_interval_without_a_search_sweeper_is_refused():
    [problem] = validate_sweep([f"{LR}=interval(0.1,1)"], build_graphs=False)
    assert "interval() needs a search sweeper" in problem


def test_one_bad_value_is_named_by_its_job():
    check = check_sweep(["experiment=mobilenet_head", f"{LR}=0.1,-1"], build_graphs=False)
    assert len(check.jobs) == 2
    [problem] = check.problems
    assert problem.startswith(f"Job #1 ({LR}=-1): Config key '{LR}'")


def test_relative_paths_are_refused_in_a_sweep_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images" / "a").mkdir(parents=True)
    sweep = validate_sweep(["experiment=mobilenet_head", "data.root=images", f"{LR}=0.1,0.01"], build_graphs=False)
    assert len(sweep) == 1 and sweep[0].startswith("All 2 jobs: Config key 'data.root' is 'images', a relative path")
    assert f"data.root={tmp_path / 'images'}" in sweep[0]
    single = check_sweep(["experiment=mobilenet_head", "data.root=images"], multirun=False, build_graphs=False)
    assert single.problems == [] and single.summary() == "1 job checked, all good"
    missing = validate_sweep(["experiment=mobilenet_head", f"restore.checkpoint={tmp_path}/none/model.ckpt"],
                             build_graphs=False)
    assert "Config key 'restore.checkpoint'" in missing[0] and "does not exist" in missing[0]


# The tiny profile's backbone (test_mobilenet_v1 at 32x32), whose graphs build faster than the demo's.
TINY_NET = [override for override in TINY_BACKBONE if not override.startswith("backbone.cut=")]


@pytest.mark.slow
def test_graph_checks_find_a_bad_cut_and_an_empty_var_list_once_per_model(demo_cache, tiny_data, monkeypatch):
    monkeypatch.setenv("FINETUNE_CACHE", str(demo_cache))
    check = check_sweep(["experiment=mobilenet_head", *TINY_NET, f"data.root={tiny_data}",
                         "backbone.cut=Conv2d_3_pointwise,Conv2d_99", f"{LR}=0.1,0.01",
                         "optimizer.var_list=[nothing/]"])
    assert len(check.jobs) == 4 and check.graphs == 2  # the learning rate does not change the graph
    assert len(check.problems) == 2
    var_list, cut = check.problems
    assert var_list.startswith("Jobs #0 (backbone.cut=Conv2d_3_pointwise optimizer.learning_rate=0.1), #1 ")
    assert "'optimizer.var_list'" in var_list and "selects no trainable variable" in var_list
    assert cut.startswith("Jobs #2 (backbone.cut=Conv2d_99") and "'backbone.cut' is 'Conv2d_99'" in cut




@pytest.mark.slow
def test_the_checked_graph_is_held_only_for_jobs_run_in_this_process(demo_cache, tiny_data, monkeypatch):
    from finetune.training import shared_graph

    monkeypatch.setenv("FINETUNE_CACHE", str(demo_cache))
    sweep = ["experiment=mobilenet_head", *TINY_BACKBONE, f"data.root={tiny_data}", f"{LR}=0.1,0.01"]
    check = check_sweep(sweep)
    assert (check.problems, check.graphs) == ([], 1) and shared_graph._held is not None  # the first job trains on it
    shared_graph.release()
    check = check_sweep([*sweep, "hydra/launcher=local_parallel"])  # the jobs run in worker processes
    assert (check.problems, check.graphs) == ([], 1) and shared_graph._held is None

def test_the_folds_and_seeds_of_a_cross_validation_share_one_graph_check():
    from finetune.config import compose_config
    from finetune.sweeps.validate_sweep import _graph_key

    def key(*overrides: str) -> str:
        return _graph_key(compose_config(["experiment=mobilenet_head", "data.folds=5", *overrides]))

    assert key("data.fold=0", "train.seed=1") == key("data.fold=4", "train.seed=3")
    assert key("data.fold=0") != key("data.fold=0", "data.folds=4")  # other pools: checked apart
    assert key("data.fold=0") != key("data.fold=0", "backbone.cut=Conv2d_3_pointwise")

@pytest.mark.slow
def test_demo_assets_not_made_yet_are_fine_and_not_made(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FINETUNE_CACHE", str(cache))
    check = check_sweep(["experiment=mobilenet_head", *TINY_BACKBONE, f"{LR}=0.1,0.01"])  # the demo's data and weights
    assert check.problems == [] and check.graphs == 1
    assert not cache.exists()  # the first job makes the demo assets, not the check


def test_tool_exit_statuses(capsys, tmp_path):
    assert tools_main(["validate", "-m", "experiment=mobilenet_head", f"{LR}=0.1,-1"]) == USER_ERROR
    assert f"Job #1 ({LR}=-1)" in capsys.readouterr().err
    assert tools_main(["validate", "--config-only", "-m", "experiment=mobilenet_head", f"{LR}=0.1,0.01"]) == 0
    assert capsys.readouterr().out.strip() == "2 jobs checked, all good"
    # Without -m the overrides are one run: a sweep value is refused, as `python -m finetune` refuses it.
    assert tools_main(["validate", "--config-only", "experiment=mobilenet_head", f"{LR}=0.1,0.01"]) == USER_ERROR
    assert "--multirun" in capsys.readouterr().err
    write_experiment(tmp_path, "mine", "optimizer:\n  learning_rate: -2\n")
    assert tools_main(["validate", "--config-dir", str(tmp_path), "-m", "experiment=mine"]) == USER_ERROR
    assert "Job #0 (experiment=mine)" in capsys.readouterr().err


def test_bad_configs_are_reported_before_tensorflow_is_imported():
    script = ("import sys; from finetune.tools import main; "
              f"status = main(['validate', '-m', 'experiment=mobilenet_head', '{LR}=0.1,-1']); "
              "print(status, 'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == [str(USER_ERROR), "False"], result.stderr


def test_the_sweep_command_line_is_refused_before_hydra_starts(monkeypatch):
    bad = ["-m", "experiment=mobilenet_head", f"{LR}=0.1,-1", "hydra.sweep.dir=/nonexistent/sweep"]
    refusal = refuse_bad_sweep(bad)
    assert refusal is not None and f"Job #1 ({LR}=-1)" in refusal and "Nothing was launched" in refusal
    assert refuse_bad_sweep(bad[1:]) is None  # a single run is Hydra's (and ValidateBeforeRun's)
    assert refuse_bad_sweep(["--cfg", "job", *bad]) is None  # Hydra prints the config, launches nothing
    monkeypatch.setenv(CHECK_ENV, "off")
    assert refuse_bad_sweep(bad) is None
    monkeypatch.setenv(CHECK_ENV, "config")
    assert refuse_bad_sweep(["-m", "experiment=mobilenet_head", f"{LR}=0.1,0.01"]) is None
    monkeypatch.setenv(CHECK_ENV, "sometimes")
    assert f"{CHECK_ENV} is 'sometimes'" in refuse_bad_sweep(bad)


def test_a_bad_job_is_rejected_before_anything_is_queued(tmp_path):
    sweep = tmp_path / "sweep"
    result = cli(["finetune", "-m", "experiment=mobilenet_head", f"{LR}=0.1,-1", f"hydra.sweep.dir={sweep}"],
                 cwd=tmp_path, cache=tmp_path / "cache", env={CHECK_ENV: "config"})  # config: no TensorFlow needed
    assert result.returncode == USER_ERROR, result.stderr
    assert f"Job #1 ({LR}=-1)" in result.stderr and "Nothing was launched" in result.stderr
    assert "Traceback" not in result.stderr
    assert not sweep.exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow  # a search's 12 representative jobs composed by Hydra, twice: seconds
def test_an_hparams_search_is_a_sweep_without_dash_m(capsys, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    monkeypatch.setenv(CHECK_ENV, "config")
    search = ["experiment=mobilenet_head", "hparams_search=optuna"]  # its config sets hydra.mode: MULTIRUN
    assert tools_main(["validate", "--config-only", *search]) == 0
    assert capsys.readouterr().out.startswith("12 jobs (representative jobs of a search sweeper")
    refusal = refuse_bad_sweep([*search, "optimizer.momentum=-1"])
    assert refusal is not None and "All 12 jobs: Config key 'optimizer.momentum'" in refusal
    # hydra.mode=RUN makes it one run again: Hydra's own callback checks that one, not this check.
    assert refuse_bad_sweep([*search, "hydra.mode=RUN", "optimizer.momentum=-1"]) is None
