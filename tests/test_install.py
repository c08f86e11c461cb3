"""Installed anywhere: a wheel carries the configs, and a user's own config folder joins ours.

The fast tests cover ``tools init`` and ``--config-dir`` / ``hydra.searchpath`` (in-process, through
conftest.cli); the slow one builds the wheel, installs it into a fresh virtualenv and runs a short job of
the tiny profile from outside the repository, through ``python -m finetune`` and the console script.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, TINY_BACKBONE, CliResult, cli
from omegaconf import OmegaConf

from finetune.config import Config, compose_config, with_config_dir

# What building a wheel must not see from a working tree: environments, caches, earlier builds, runs.
NOT_SOURCE = (".venv", ".git", "build", "dist", "*.egg-info", "*.whl", "__pycache__", ".pytest_cache", "outputs",
              "multirun")


def _init(user_dir: Path, cwd: Path, *extra: str) -> CliResult:
    return cli(["finetune.tools", "init", str(user_dir), *extra], cwd=cwd)


def test_init_writes_an_experiment_that_composes_and_validates(tmp_path):
    user_dir = tmp_path / "my configs"
    result = _init(user_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--config-dir" in result.stdout and "experiment=my_experiment" in result.stdout
    experiment = user_dir / "experiment" / "my_experiment.yaml"
    assert experiment.read_text().startswith("# @package _global_\n")
    assert not [path.name for path in user_dir.rglob("*") if path.suffix != ".yaml" and path.is_file()]

    cfg = compose_config(["experiment=my_experiment"], config_dir=user_dir)
    assert isinstance(OmegaConf.to_object(cfg), Config)  # every key typed by the schema
    # The starter is experiment=mobilenet_head spelled out, its head read from the user's folder.
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(compose_config(["experiment=mobilenet_head"]))
    # hydra.searchpath, Hydra's own way to add a folder, composes the same config.
    by_searchpath = compose_config([f"hydra.searchpath=[file://{user_dir}]", "experiment=my_experiment"])
    assert OmegaConf.to_container(by_searchpath) == OmegaConf.to_container(cfg)


def test_init_refuses_to_overwrite_unless_forced(tmp_path):
    user_dir = tmp_path / "conf"
    assert _init(user_dir, tmp_path).returncode == 0
    head = user_dir / "head" / "my_head.yaml"
    head.write_text("# edited by the user\n")

    refused = _init(user_dir, tmp_path)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert str(head) in refused.stderr and "--force" in refused.stderr
    assert head.read_text() == "# edited by the user\n"

    forced = _init(user_dir, tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert head.read_text() != "# edited by the user\n"
    assert sorted(path.name for path in user_dir.rglob("*") if path.is_file()) == ["my_experiment.yaml",
                                                                                   "my_head.yaml"]


def test_config_dir_joins_a_searchpath_the_user_gave(tmp_path):
    odd = tmp_path / "it's, odd"  # a quote, a comma and a space survive Hydra's override grammar
    (odd / "experiment").mkdir(parents=True)
    (odd / "experiment" / "odd_one.yaml").write_text("# @package _global_\ntrain:\n  steps: 7\n")
    other = tmp_path / "other"
    (other / "optimizer").mkdir(parents=True)
    (other / "optimizer" / "slow_sgd.yaml").write_text("name: sgd\nlearning_rate: 0.001\n")

    overrides = with_config_dir(["optimizer=slow_sgd", f"hydra.searchpath=[file://{other}]"], odd)
    assert len(overrides) == 2  # the two folders share one searchpath override
    cfg = compose_config(["experiment=odd_one", *overrides])
    assert (cfg.train.steps, cfg.optimizer.name, cfg.optimizer.learning_rate) == (7, "sgd", 0.001)


def test_config_dir_that_does_not_exist_fails_cleanly(tmp_path):
    result = cli(["finetune.tools", "plan", "--config-dir", str(tmp_path / "missing"), "experiment=x"], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(tmp_path / "missing") in result.stderr


@pytest.mark.slow
def test_plan_takes_config_dir(demo_cache, tiny_data, tmp_path):
    """The user's experiment, on the tiny profile's backbone and images: plan builds its graph."""
    user_dir = tmp_path / "conf"
    assert _init(user_dir, tmp_path).returncode == 0
    result = cli(["finetune.tools", "plan", "--config-dir", str(user_dir), "experiment=my_experiment", *TINY_BACKBONE,
                  f"data.root={tiny_data}"], cwd=tmp_path, cache=demo_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "head/" in result.stdout and "MobilenetV1/" in result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["conf"]  # a dry run writes nothing


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
    return result


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of a clean copy of the working tree (no stale build/ folder can leak into it)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(wheels), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("finetune-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new virtualenv holding the wheel, which sees this interpreter's dependencies through a .pth file."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # Installed before the .pth exists, so pip cannot mistake the editable install for this one.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    site_packages = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    # A directory named in a .pth joins sys.path without its own .pth files being run: this
    # interpreter's editable install of finetune (a .pth hook) stays out of the new venv.
    (site_packages / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repository(demo_cache, tiny_data, tmp_path):
    """Building and installing take seconds (no dependency is resolved: --no-deps, and the new venv borrows
    this one's); the run, a fresh TensorFlow through the console script, is the tiny profile's (the user's
    experiment on test_mobilenet_v1, which the wheel registers, and the tiny images), with the frozen graph
    exported."""
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(path.relative_to(ROOT / "conf").as_posix() for path in (ROOT / "conf").rglob("*.yaml"))
    assert "config.yaml" in shipped and "experiment/mobilenet_head.yaml" in shipped
    assert [name for name in shipped if f"finetune/conf/{name}" not in names] == []
    # Every module of the package (a subpackage missing from pyproject's list would be left out) and the demo
    # backbone's files.
    modules = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "finetune").rglob("*.py")
                     if "hydra_plugin" not in path.parts)
    assert [name for name in modules if name not in names] == []
    assert {f"finetune/demo_backbone/{name}" for name in ("model.ckpt.index", "model.ckpt.data-00000-of-00001",
                                                          "source_task.json")} <= names

    venv = _fresh_venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"  # neither the repository nor the venv
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["FINETUNE_CACHE"] = str(demo_cache)
    python, bin_dir = str(venv / "bin" / "python"), venv / "bin"
    located = _run([python, "-c", "import finetune.conf; print(finetune.conf.__file__)"], elsewhere, env)
    assert Path(located.stdout.strip()).is_relative_to(venv)

    _run([python, "-m", "finetune.tools", "init", "user_conf"], elsewhere, env)
    _run([str(bin_dir / "finetune-tools"), "--help"], elsewhere, env)
    job = ["--config-dir", "user_conf", "experiment=my_experiment", *TINY_BACKBONE, f"data.root={tiny_data}",
           "train.steps=3", "export.saved_model=false", "export.parity_images=4"]
    assert "experiment" in _run([python, "-m", "finetune", "--help"], elsewhere, env).stdout
    run_dir = elsewhere / "run"  # through the console script; restored from the demo backbone the wheel carries
    _run([str(bin_dir / "finetune"), *job, f"hydra.run.dir={run_dir}"], elsewhere, env)
    assert (run_dir / "metrics.json").is_file() and (run_dir / "export" / "frozen_graph.pb").is_file()
    assert Path(json.loads((run_dir / "run.json").read_text())["pretrained"]["path"]).is_relative_to(venv.resolve())
