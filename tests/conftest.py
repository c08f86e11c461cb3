"""Shared fixtures: compose the real configs, and build the demo assets once, kept between sessions."""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import finetune.compat  # noqa: F401  (first, as in every entry point)
import pytest
from finetune import demo, pipeline
from finetune.config import compose_config  # noqa: F401  (re-exported for the tests)
from finetune.data import demo_images
from finetune.model.backbones import mobilenet_v1
from finetune.resolve import resolve
from finetune.training.loop import Listener

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def run_cli(args: list[str], cwd: Path, cache: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m ARGS`` in a subprocess, as a user would type it. Sweeps skip their whole-sweep check before
    Hydra starts (tests/test_validate_sweep.py tests it) unless FINETUNE_SWEEP_CHECK is set: their jobs are
    checked where they run, and some tests need a bad job to fail there."""
    env = dict(os.environ)
    env.setdefault("FINETUNE_SWEEP_CHECK", "off")
    if cache is not None:
        env["FINETUNE_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_pipeline(cfg, run_dir: Path, **options) -> dict:
    """One run, as the command line runs it: the config's specs resolved, then :func:`pipeline.run`."""
    return pipeline.run(cfg, run_dir, resolve(cfg), **options)


class SignalAtStep(Listener):
    """Sends this process ``signum`` once global step ``step`` has run, as a cluster would before a time
    limit: the run's own listeners (after this one) see it at that step."""

    def __init__(self, step: int, signum: int = signal.SIGUSR1) -> None:
        self.step, self.signum = step, signum

    def step_ended(self, loop, result) -> None:
        if result.step == self.step:
            os.kill(os.getpid(), self.signum)


class CrashBeforeStep(Listener):
    """Raises ``RuntimeError("the machine went away")`` as global step ``step`` is about to run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def fetches(self, loop, step: int, phase: int) -> dict:
        if step + 1 == self.step:
            raise RuntimeError("the machine went away")
        return {}


def read_table(path: Path) -> dict[str, list[int]]:
    """A reference variable table: name -> shape."""
    table = {}
    for line in path.read_text().splitlines():
        name, shape, _dtype = line.split("\t")
        table[name] = [int(d) for d in shape.strip("[]").split(",") if d.strip()]
    return table


# What the demo assets are made from: the images and classes (finetune.data.demo_images), the recipe
# (finetune.demo), the variable
# names and shapes of the backbone (its definition), and the libraries that draw, train and write them.
DEMO_MODULES = (demo, demo_images, mobilenet_v1)
DEMO_LIBRARIES = ("tensorflow", "tf-slim", "numpy", "pillow")


def demo_assets_key() -> str:
    """A short hash naming one build of the demo assets; a change to what they are made from changes it.

    The rest of the package is left out on purpose: the tests need the assets to exist with the
    official variable names, and every test still runs the current pipeline on them, so editing,
    say, train.py must not cost a pretraining per session. CI starts without .pytest_cache.
    """
    digest = hashlib.sha256(platform.python_version().encode())
    for module in DEMO_MODULES:
        digest.update(module.__name__.encode() + b"\0" + Path(module.__file__).read_bytes())
    for library in DEMO_LIBRARIES:
        digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def demo_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the demo dataset and the pretrained demo backbone, made the way users get them.

    Built once and kept in pytest's cache folder (``.pytest_cache/d/demo_assets_KEY``) for later
    sessions; ``pytest --cache-clear`` rebuilds it. FINETUNE_TEST_CACHE names another cache to use.
    Two sessions building at once are safe: demo.py publishes each asset with one atomic rename.
    """
    reuse = os.environ.get("FINETUNE_TEST_CACHE")
    if reuse:
        cache = Path(reuse)
    elif getattr(request.config, "cache", None) is not None:
        cache = request.config.cache.mkdir(f"demo_assets_{demo_assets_key()}")
    else:  # the cache provider is off (-p no:cacheprovider): build for this session only
        cache = tmp_path_factory.mktemp("finetune_cache")
    demo_images.ensure_target_dataset(cache)
    demo.ensure_demo_checkpoint(cache)
    return cache
