"""Shared fixtures: compose the real configs, and build the demo assets once, kept between sessions."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import finetune.compat  # noqa: F401  (first, as in every entry point)
import pytest
from finetune import pipeline
from finetune.config import compose_config  # noqa: F401  (re-exported for the tests)
from finetune.data import demo_images
from finetune.resolve import resolve
from finetune.training import shared_graph
from finetune.training.loop import Listener

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def load_script(name: str):
    """scripts/NAME.py as a module (the scripts are not a package), registered under NAME: dataclasses look
    their module up by name."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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


@dataclass
class CliResult:
    """What a command line printed and how it exited (subprocess.CompletedProcess's fields)."""

    returncode: int
    stdout: str
    stderr: str


class _Capture(io.StringIO):
    """Captured output that a logging handler shut down mid-run cannot close (Hydra's logging setup shuts every
    handler down, and absl's closes any stream that is not the current sys.stderr)."""

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _streams_to(stdout: io.StringIO, stderr: io.StringIO):
    """sys.stdout and sys.stderr, and every logging handler writing to them, write to ``stdout`` and ``stderr``
    while inside: the handlers made before (TensorFlow's absl handler, pytest's) never see their real stream
    closed by a shutdown."""
    real = {id(sys.stdout): stdout, id(sys.stderr): stderr}
    moved = []
    for reference in list(logging._handlerList):
        handler = reference()
        stream = getattr(handler, "stream", None)
        # (absl's wrapper is no StreamHandler: the handler inside it is listed too; logging's last resort reads
        # sys.stderr anew each time)
        if isinstance(handler, logging.StreamHandler) and id(stream) in real \
                and not isinstance(getattr(type(handler), "stream", None), property):
            moved.append((handler, stream))
            handler.setStream(real[id(stream)])
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)


def cli(args: list[str], cwd: Path, cache: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
    """``python -m ARGS`` (``finetune`` or ``finetune.tools``) run in this process, as :func:`run_cli` runs it in
    a subprocess: the same argv, working directory, environment (FINETUNE_CACHE=``cache``; sweeps' whole-sweep
    check off unless ``env`` says otherwise), captured output and exit status, without a second TensorFlow
    start. For tests about configs, messages and files; a test about the process itself (signals, exit on a
    kill, what gets imported) uses :func:`run_cli`."""
    from hydra.core.global_hydra import GlobalHydra

    import finetune.__main__ as entry
    from finetune.tools import main as tools_main

    module, *rest = args
    environment = {"FINETUNE_SWEEP_CHECK": "off", **({"FINETUNE_CACHE": str(cache)} if cache else {}), **(env or {})}
    stdout, stderr = _Capture(), _Capture()
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    code = 0
    try:
        os.environ.update(environment)
        os.chdir(cwd)
        sys.argv = [module, *rest]
        # Hydra re-raises instead of reporting when it thinks a debugger is attached, and it takes any trace
        # function for one: under coverage's tracer every bad command line would raise. A user's process has none.
        with _streams_to(stdout, stderr), mock.patch("hydra._internal.utils.is_under_debugger", return_value=False):
            try:
                if module == "finetune":
                    entry.main()
                elif module == "finetune.tools":
                    code = tools_main(rest)
                else:
                    raise ValueError(f"cli() runs finetune or finetune.tools, not {module}")
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:  # Hydra's console and log-file handlers of this run
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return CliResult(code, stdout.getvalue(), stderr.getvalue())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, each file's in its own order: parallel workers then end on short tests, instead
    of one worker finishing a long one while the others wait."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _no_graph_shared_between_tests():
    """A run of one test never trains on the graph and session a run of another left held
    (:mod:`finetune.training.shared_graph`): each test sees what a fresh process would."""
    yield
    shared_graph.release()


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


# What the demo dataset is made from: the images and classes (finetune.data.demo_images) and the libraries
# that draw and write them. (The demo backbone ships with the package.)
DEMO_MODULES = (demo_images,)
DEMO_LIBRARIES = ("numpy", "pillow")


def demo_assets_key() -> str:
    """A short hash naming one drawing of the demo dataset; a change to what it is made from changes it.
    CI starts without .pytest_cache."""
    digest = hashlib.sha256(platform.python_version().encode())
    for module in DEMO_MODULES:
        digest.update(module.__name__.encode() + b"\0" + Path(module.__file__).read_bytes())
    for library in DEMO_LIBRARIES:
        digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on ``lock_path`` while inside: parallel test workers (pytest -n) build a shared
    asset once, the others wait for it and then find it made."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _shared_folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder every worker of this session (pytest -n) sees: in pytest's cache folder, kept between
    sessions, when the cache provider is on; else beside the workers' temporary folders, for this session."""
    if getattr(request.config, "cache", None) is not None:
        return request.config.cache.mkdir(name)
    base = tmp_path_factory.getbasetemp()
    base = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def demo_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the demo dataset, drawn the way users get it (the demo backbone ships with the package).

    Built once and kept in pytest's cache folder (``.pytest_cache/d/demo_assets_KEY``) for later
    sessions; ``pytest --cache-clear`` rebuilds it. FINETUNE_TEST_CACHE names another cache to use.
    Parallel workers draw it once (a lock), and demo_images publishes it with one atomic rename.
    """
    reuse = os.environ.get("FINETUNE_TEST_CACHE")
    cache = Path(reuse) if reuse else _shared_folder(request, tmp_path_factory, f"demo_assets_{demo_assets_key()}")
    with _exclusive(cache.parent / f".{cache.name}.lock"):
        demo_images.ensure_target_dataset(cache)
    return cache


# --- the tiny profile: for tests of the pipeline's mechanics, not of what it learns ---------------------------
# test_mobilenet_v1 (MobileNet v1's first three blocks, restored from the demo backbone) at 32x32 pixels, on
# tiny_data: a run builds and trains about twice as fast as the demo experiment.
TINY_BACKBONE = ("backbone.name=test_mobilenet_v1", "backbone.cut=Conv2d_3_pointwise", "backbone.image_size=32")
TINY_IMAGES_PER_CLASS = 16


@pytest.fixture(scope="session")
def tiny_data(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small image folder: the demo's five target shapes, 16 images of each at 32x32 (about 64 to train,
    8 to validate, 8 to test). Drawn once; never write into it."""
    folder = _shared_folder(request, tmp_path_factory, f"tiny_data_{demo_assets_key()}")
    with _exclusive(folder / ".lock"):
        return demo_images.write_image_folder(folder / "images", demo_images.TARGET_CLASSES, TINY_IMAGES_PER_CLASS,
                                              32, seed=7)


def tiny_overrides(cache: Path, data: Path, *overrides: str) -> list[str]:
    """The tiny profile's command line: experiment=mobilenet_head on test_mobilenet_v1 and ``data``, 4 steps,
    one evaluation after training (train.eval_every=null: a test of evaluations during training sets it)."""
    return ["experiment=mobilenet_head", *TINY_BACKBONE, f"data.root={data}", "train.steps=4", "train.log_every=1",
            "train.eval_every=null", f"paths.cache_dir={cache}", *overrides]


def tiny_config(cache: Path, data: Path, *overrides: str):
    """The config of :func:`tiny_overrides`."""
    return compose_config(tiny_overrides(cache, data, *overrides))


@pytest.fixture(scope="session")
def tiny_run(demo_cache: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One finished tiny run, with every export format (SavedModel, TFLite, ONNX when the onnx extra is installed)
    and the default evaluations during training (once per epoch): its run directory and metrics. Shared by the
    tests that read what a run writes; never write into it."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    onnx = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("tf2onnx") is not None
    metrics = run_pipeline(tiny_config(demo_cache, tiny_data, "export.tflite=true", f"export.onnx={onnx}",
                                       "train.eval_every=epoch"), run_dir)
    return run_dir, metrics
