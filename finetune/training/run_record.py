"""The run's reproducibility record, ``run.json``: what it takes to run it again and get the same numbers.

It holds the command-line overrides and the resolved config, the config fingerprint, the versions of
the libraries that compute, the Python, platform, CPU (with the instruction-set flags that change
floating-point results) and devices (on a GPU: the NVIDIA driver, CUDA and cuDNN), the git commit of
the package's source, the sha256 of the pretrained weight files, a fingerprint of the data (every
image's path, label and size), the phases, and one entry per process that worked in the run directory
(``starts``: it grows with every resume). Everything else in it is rewritten with each start, so it
describes the latest process. Files are hashed in chunks each time; nothing is cached.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from finetune.compat import tf
from finetune.data.examples import SPLITS, LabelledImages
from finetune.files import DATA_SHARD, write_json_atomically
from finetune.run_files import RUN_RECORD_FILE

log = logging.getLogger(__name__)

PACKAGES = ("finetune", "tensorflow", "tf-slim", "hydra-core", "omegaconf", "numpy", "pillow", "protobuf")
# CPU features that select different kernels (oneDNN, Eigen) and so can change the last bits of results.
NUMERIC_CPU_FLAGS = re.compile(r"^(avx|avx2|avx512\w*|avx_vnni|fma|amx\w*)$")
CPUINFO = Path("/proc/cpuinfo")
SOURCE_DIR = Path(__file__).resolve().parent.parent  # the finetune package: its git checkout, if any
GIT_TIMEOUT_S = 10
CHUNK_BYTES = 1 << 20


def write_run_record(run_dir: Path, cfg: DictConfig, *, fingerprint: str, pretrained: Optional[str],
                     data: LabelledImages, phases: list[dict], start: dict, gpu: Optional[dict] = None,
                     class_weights: Optional[tuple[float, ...]] = None) -> dict:
    """Write ``run_dir/run.json`` atomically and return what it holds.

    ``pretrained`` is the resolved weight path (``pipeline.pretrained_checkpoint``: a checkpoint
    prefix, a .pb, an .npz; None without restore). ``start`` (see :func:`start_entry`) is appended to
    the ``starts`` of the run.json already there; every other field is written afresh. ``gpu``: the GPU the
    run trains on, its driver and the CUDA and cuDNN versions (:func:`finetune.training.devices.gpu_record`);
    ``class_weights``: the training loss's weight per class, as ``train.class_weights`` resolved."""
    path = Path(run_dir) / RUN_RECORD_FILE
    record = {
        "overrides": command_line_overrides(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "fingerprint": fingerprint,
        "versions": package_versions(),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "devices": devices(),
        "gpu": gpu,
        "git": git_state(SOURCE_DIR),
        "pretrained": pretrained_files(pretrained),
        "data": {**data_record(data), "sampling": cfg.data.sampling,
                 "class_weights": None if class_weights is None else dict(zip(data.class_names, class_weights))},
        "phases": phases,
        "starts": previous_starts(path) + [start],
    }
    write_json_atomically(path, record)
    return record


def start_entry(step: int, why: str, data_change: Optional[dict] = None) -> dict:
    """One process's entry in ``starts``: when (ISO 8601, UTC), from which step, why, which process, and
    (``resume=accept_data_change``) how the data changed since the run's last start."""
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "step": step,
             "why": why, "pid": os.getpid(), "host": platform.node()}
    if data_change is not None:
        entry["data_change"] = data_change
    return entry


def previous_starts(path: Path) -> list[dict]:
    """The ``starts`` of the run.json at ``path``: [] when there is none (or it cannot be read)."""
    if not path.is_file():
        return []
    try:
        starts = json.loads(path.read_text()).get("starts", [])
    except (ValueError, AttributeError) as error:
        log.warning("%s cannot be read (%s); its list of earlier starts is lost and begins again.", path, error)
        return []
    return starts if isinstance(starts, list) else []


def command_line_overrides() -> Optional[list[str]]:
    """The overrides of this run's command line (Hydra's task overrides); None outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def package_versions() -> dict[str, Optional[str]]:
    """The installed version of each of :data:`PACKAGES` (None for one that is not installed)."""
    versions: dict[str, Optional[str]] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def cpu_description(cpuinfo: Path = CPUINFO) -> dict[str, Any]:
    """The CPU's model, core count and :data:`NUMERIC_CPU_FLAGS`, from ``cpuinfo`` (Linux); elsewhere the
    model from ``platform.processor()`` and ``flags`` None (unknown)."""
    fields: dict[str, str] = {}
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's lines
    flags = fields.get("flags")
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "count": os.cpu_count(),
        "flags": None if flags is None else sorted(flag for flag in flags.split() if NUMERIC_CPU_FLAGS.match(flag)),
    }


def devices() -> list[dict[str, Any]]:
    """TensorFlow's physical devices; a GPU's entry adds its model and compute capability when known."""
    found = []
    for device in tf.config.list_physical_devices():
        entry: dict[str, Any] = {"type": device.device_type, "name": device.name}
        if device.device_type == "GPU":
            details = tf.config.experimental.get_device_details(device)
            entry["model"] = details.get("device_name")
            capability = details.get("compute_capability")
            entry["compute_capability"] = list(capability) if capability else None
        found.append(entry)
    return found


def git_state(folder: Path) -> Optional[dict[str, Any]]:
    """``{"commit", "dirty"}`` of the git checkout whose tracked files include ``folder``; None when it is
    not in one (an installed package) or git is absent or does not answer. ``dirty``: a tracked file
    changed or an untracked, not ignored file exists anywhere in the checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=True).stdout.strip()

    try:
        # The folder's own files must be tracked: a package installed into a virtual environment that
        # lies inside some checkout is not that checkout's source.
        if not git("ls-files", "--", "."):
            return None
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def pretrained_files(pretrained: Optional[str]) -> Optional[dict[str, Any]]:
    """``{"path", "files": {name: sha256}}`` for the files the weights are read from: the file itself
    (.pb, .npz, a one-file V1 checkpoint) or a V2 checkpoint prefix's .index and .data shards."""
    if pretrained is None:
        return None
    path = Path(pretrained)
    if path.is_file():
        files = [path]
    else:
        shards = [p for p in path.parent.iterdir() if (m := DATA_SHARD.match(p.name)) and m["prefix"] == path.name]
        files = [p for p in [Path(f"{pretrained}.index"), *shards] if p.is_file()]
    return {"path": str(path.resolve()), "files": {p.name: sha256_file(p) for p in sorted(files)}}


def data_record(data: LabelledImages) -> dict[str, Any]:
    """The dataset's source, root, classes, images per split, bad files skipped and ``file_list_sha256``:
    the sha256 of the sorted lines ``KEY<tab>LABEL<tab>SIZE_IN_BYTES`` of every image (the key: its path
    relative to data.root, or SHARD:INDEX), so an added, removed, relabelled or resized image changes it."""
    return {
        "source": data.name,
        "root": str(Path(data.root).resolve()),
        "classes": list(data.class_names),
        "images": {split: len(data.examples[split]) for split in SPLITS},
        "bad_files_skipped": len(data.bad),
        "file_list_sha256": data.file_list_sha256(),
    }


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks (weight files can be larger than memory allows twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
