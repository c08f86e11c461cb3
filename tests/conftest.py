"""Shared fixtures: compose the real configs, and build the demo assets once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import finetune.compat  # noqa: F401  (first, as in every entry point)
import pytest
from finetune.weights import demo
from finetune.config import compose_config  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def run_cli(args: list[str], cwd: Path, cache: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m ARGS`` in a subprocess, as a user would type it."""
    env = dict(os.environ)
    if cache is not None:
        env["FINETUNE_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def read_table(path: Path) -> dict[str, list[int]]:
    """A reference variable table: name -> shape."""
    table = {}
    for line in path.read_text().splitlines():
        name, shape, _dtype = line.split("\t")
        table[name] = [int(d) for d in shape.strip("[]").split(",") if d.strip()]
    return table


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the demo dataset and the pretrained demo backbone, made the way users get them.

    Fresh for every session unless FINETUNE_TEST_CACHE names a cache to reuse (a developer's shortcut).
    """
    reuse = os.environ.get("FINETUNE_TEST_CACHE")
    cache = Path(reuse) if reuse else tmp_path_factory.mktemp("finetune_cache")
    demo.ensure_target_dataset(cache)
    demo.ensure_demo_checkpoint(cache)
    return cache
