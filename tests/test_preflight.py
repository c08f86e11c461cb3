"""The command line read before Hydra starts (finetune/preflight.py, issue 19 item 5): what its words alone tell.

In this process: the check composes nothing and imports no TensorFlow (tests/test_cli.py's probe runs the
real entry point on such commands in a fresh process and checks both, and that nothing is written).
"""
from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT

from finetune import preflight
from finetune.preflight import command_line_problem

INSTALL = 'pip install "finetune[cluster]"'

GOOD = [
    [], ["experiment=mobilenet_head", "train.steps=1", "--cfg", "job"], ["hydra.run.dir=x"], ["+train.foo=1"],
    ["++train.steps=3"], ["~hparams_search"], ["-m", "backbone=glob(*)"], ["-m", "backbone=mobilenet_v1,mobilenet_v2"],
    ["backbone=choice(vgg_16,vgg_19)"], ["data=csv"], ["head=pool_dense"], ["experiment=null"], ["hydra.verbose=true"],
    ["backbone.params.depth_multiplier=0.5"], ["train.phases.0.steps=3"], ["resume=must"],
    ["optimizer.learning_rate=0.1"], ["-m", "data.fold=range(5)"], ["--info"], ["hydra/launcher=local_submitit"],
    ["hparams_search=optuna", "--cfg", "job"],
    ["-m", "optimizer.learning_rate=interval(0.1,1)", "hydra/sweeper=optuna"],
    ["hydra/launcher=slurm"],  # a single run ignores the launcher: no SLURM needed
]


@pytest.mark.parametrize("argv", GOOD, ids=" ".join)
def test_a_good_command_line_passes(argv, monkeypatch):
    monkeypatch.setattr(preflight, "missing_slurm_commands", lambda: ["sbatch", "srun"])
    assert command_line_problem(argv) is None


@pytest.mark.parametrize("argv, nearest", [
    (["backbone=resnet50"], "Did you mean backbone=resnet_v2_50 or backbone=resnet_v1_50?"),
    (["optimizer=adamw"], "Did you mean optimizer=adam?"),
    (["experiment=mobilenet_heads"], "Did you mean experiment=mobilenet_head?"),
    (["-m", "backbone=vgg_16,vgg19"], "Did you mean backbone=vgg_19?"),
    (["hydra/launcher=slrum"], "Did you mean hydra/launcher=slurm?"),
])
def test_a_wrong_group_option_names_the_closest_options_of_its_group(argv, nearest):
    problem = command_line_problem(argv)
    assert problem is not None and nearest in problem
    group = argv[-1].split("=")[0]
    assert f"the config group '{group}' has no option" in problem and "Its options:" in problem
    assert "search path" not in problem and "\n" not in problem  # one paragraph, not Hydra's listing


@pytest.mark.parametrize("argv, nearest", [
    (["optimiser.learning_rate=0.1"], "Did you mean optimizer.learning_rate=0.1?"),
    (["optimiser=adam"], "Did you mean optimizer=adam?"),
    (["trian.steps=3"], "Did you mean train.steps=3?"),
    (["hydra/launchr=slurm"], "Did you mean hydra/launcher=slurm?"),
])
def test_a_misspelt_group_suggests_the_group_never_a_plus_override(argv, nearest):
    problem = command_line_problem(argv)
    assert problem is not None and nearest in problem, problem
    assert "+" + argv[0].split("=")[0] not in problem and "To append" not in problem


def test_a_config_dir_that_is_not_a_folder_is_named(tmp_path):
    problem = command_line_problem(["--config-dir", str(tmp_path / "missing"), "experiment=mine"])
    assert problem.startswith(f"--config-dir {tmp_path / 'missing'} is not a folder") and "tools init" in problem


def test_a_config_dir_adds_its_options(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\n")
    assert command_line_problem(["--config-dir", str(tmp_path), "experiment=mine"]) is None
    problem = command_line_problem(["--config-dir", str(tmp_path), "experiment=mien"])
    assert "Did you mean experiment=mine?" in problem


@pytest.mark.parametrize("argv, package", [
    (["hparams_search=optuna"], "hydra-optuna-sweeper"),
    (["-m", "hydra/sweeper=optuna", "optimizer.learning_rate=interval(0.01,0.1)"], "hydra-optuna-sweeper"),
    (["-m", "hydra/launcher=submitit_slurm", "train.steps=1,2"], "hydra-submitit-launcher"),
    (["-m", "hydra/launcher=slurm", "train.steps=1,2"], "hydra-submitit-launcher"),
    (["-m", "hydra/launcher=local_parallel", "train.steps=1,2"], "hydra-joblib-launcher"),
])
def test_a_plugin_that_is_not_installed_says_pip_install_the_cluster_extra(argv, package, monkeypatch):
    plugin = next(p for p in preflight.NEEDS_PLUGIN.values() if p.package == package)
    monkeypatch.setattr(preflight, "installed", lambda module: module != plugin.module)
    problem = command_line_problem(argv)
    assert problem is not None and INSTALL in problem and f"{package}, which is not installed" in problem, problem
    monkeypatch.setattr(preflight, "installed", lambda module: True)
    monkeypatch.setattr(preflight, "missing_slurm_commands", lambda: [])
    assert command_line_problem(argv) is None


def test_the_install_hint_names_the_extra_that_holds_every_plugin():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cluster = " ".join(extras["cluster"])
    assert preflight.INSTALL_HINT == INSTALL
    for plugin in set(preflight.NEEDS_PLUGIN.values()):
        assert plugin.package in cluster
        assert preflight.installed(plugin.module)  # the test extra installs them: the stand-ins are only for users


def test_a_slurm_sweep_on_a_machine_without_slurm_says_so(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda command: None if command == "srun" else f"/usr/bin/{command}")
    problem = command_line_problem(["-m", "hydra/launcher=slurm", "train.steps=1,2"])
    assert "hydra/launcher=slurm submits the sweep's jobs to SLURM" in problem and "no srun on PATH" in problem
    assert "hydra/launcher=local_submitit" in problem and "\n" not in problem
    problem = command_line_problem(["hparams_search=optuna", "hydra/launcher=submitit_slurm"])  # a sweep without -m
    assert "hydra/launcher=submitit_slurm submits" in problem
    monkeypatch.setattr(shutil, "which", lambda command: f"/usr/bin/{command}")
    assert command_line_problem(["-m", "hydra/launcher=slurm", "train.steps=1,2"]) is None


def test_the_sweep_check_refuses_a_slurm_launcher_on_a_machine_without_slurm(monkeypatch):
    """`tools validate -m` (and a sweep whose command line preflight let through) says it too."""
    from finetune.sweeps.validate_sweep import check_sweep

    monkeypatch.setattr(shutil, "which", lambda command: None)
    overrides = ["experiment=mobilenet_head", "hydra/launcher=submitit_slurm", "train.steps=1,2"]
    check = check_sweep(overrides, build_graphs=False)
    assert check.jobs == [] and len(check.problems) == 1
    assert check.problems[0].startswith("hydra/launcher=submitit_slurm submits the sweep's jobs to SLURM, but this "
                                        "machine has no sbatch and no srun on PATH")
    monkeypatch.setattr(shutil, "which", lambda command: f"/usr/bin/{command}")
    assert check_sweep(overrides, build_graphs=False).problems == []


@pytest.mark.parametrize("argv", [["-m", "--cfg", "job"], ["--multirun", "--cfg", "all", "train.steps=1,2"]])
def test_a_sweep_with_cfg_is_one_line(argv):
    problem = command_line_problem(argv)
    assert problem.startswith("-m and --cfg cannot go together") and "\n" not in problem


def test_every_problem_is_told_at_once():
    problem = command_line_problem(["backbone=resnet50", "optimiser.learning_rate=0.1"])
    assert "backbone=resnet50" in problem and "optimizer.learning_rate=0.1" in problem
    assert len(problem.split("\n\n")) == 2


def test_an_unparsable_command_line_is_left_to_hydra():
    assert command_line_problem(["backbone=[unclosed"]) is None


def test_the_check_reads_the_group_folders_of_the_package(tmp_path):
    """The options the check offers are the files of conf/<group>/ (plus the plugins' own)."""
    shipped = sorted(path.stem for path in (Path(ROOT) / "conf" / "optimizer").glob("*.yaml"))
    problem = command_line_problem(["optimizer=nadam"])
    assert f"Its options: {', '.join(shipped)}." in problem
