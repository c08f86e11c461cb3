"""Where a run trains (``train.device``), the session that trains there, and what run.json records of it.

- ``auto``: a GPU when TensorFlow sees one, else the CPU; the log says which, once.
- ``cpu``: the session hides the GPUs.
- ``gpu``: stop before training, naming what is missing, when TensorFlow sees no GPU: a TensorFlow built
  without CUDA, no GPU device on the machine, GPUs hidden by ``CUDA_VISIBLE_DEVICES``, or CUDA
  libraries that could not be loaded (TensorFlow then falls back to the CPU without a word, and a
  cluster job runs many times slower).

Every session places ops softly (an op without a GPU kernel runs on the CPU) and takes GPU memory as
needed, so sweep jobs can share a GPU. With ``train.deterministic`` (the default) XLA stays off: its
fused kernels are not covered by TensorFlow's op determinism.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from finetune.compat import tf, tf1
from finetune.config import TrainConfig
from finetune.errors import FinetuneError

log = logging.getLogger(__name__)

NVIDIA_SMI_TIMEOUT_S = 10


@dataclass(frozen=True)
class Device:
    """Where the session trains: ``gpu`` (TensorFlow's GPUs, by name) or ``cpu``."""

    kind: str
    gpus: tuple[str, ...] = ()

    @property
    def gpu(self) -> bool:
        return self.kind == "gpu"


def visible_gpus() -> list[Any]:
    return tf.config.list_physical_devices("GPU")


def choose_device(train_cfg: TrainConfig, say: bool = True) -> Device:
    """The device ``train.device`` asks for, as this machine has it; FinetuneError for ``gpu`` without one.
    ``say``: log which (not for a check before the run)."""
    gpus = visible_gpus() if train_cfg.device != "cpu" else []
    if train_cfg.device == "gpu" and not gpus:
        raise FinetuneError(f"Config key 'train.device' is 'gpu', but TensorFlow sees no GPU: {why_no_gpu()} "
                            "Nothing was trained. Use train.device=auto to train on the CPU instead.")
    device = Device("gpu", tuple(gpu.name for gpu in gpus)) if gpus else Device("cpu")
    if not say:
        return device
    if device.gpu:
        models = [tf.config.experimental.get_device_details(gpu).get("device_name") or gpu.name for gpu in gpus]
        log.info("Training on the GPU: %s.", ", ".join(models))
    else:
        log.info("Training on the CPU%s.", " (train.device=cpu)" if train_cfg.device == "cpu" else
                 ": TensorFlow sees no GPU")
    return device


def why_no_gpu() -> str:
    """What keeps TensorFlow from a GPU here, in one sentence with the fix."""
    build = tf.sysconfig.get_build_info()
    if not build.get("is_cuda_build"):
        return ("this TensorFlow was built without CUDA (on Linux, pip install 'tensorflow[and-cuda]' brings a "
                "build with its CUDA libraries).")
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU from this process."
    if not list(Path("/dev").glob("nvidia[0-9]*")) and shutil.which("nvidia-smi") is None:
        return ("this machine shows no NVIDIA GPU (no /dev/nvidia* device, no nvidia-smi); on a cluster, ask the "
                "scheduler for one (hydra.launcher.gpus_per_node=1 with hydra/launcher=slurm).")
    return (f"a GPU device is present, but TensorFlow could not load the CUDA libraries it needs (this build wants "
            f"CUDA {build.get('cuda_version')} and cuDNN {build.get('cudnn_version')}); install them (pip install "
            "'tensorflow[and-cuda]') or fix LD_LIBRARY_PATH. FINETUNE_VERBOSE=1 shows TensorFlow's own messages.")


def session_config(device: Optional[Device] = None, mixed_precision: bool = False,
                   deterministic: bool = True) -> tf1.ConfigProto:
    """A session on ``device`` (None: wherever TensorFlow places ops): soft placement, GPU memory taken as
    needed; ``mixed_precision``: TF's automatic mixed precision graph rewrite (float16 on GPUs only);
    ``deterministic``: XLA off."""
    config = tf1.ConfigProto(allow_soft_placement=True)
    config.gpu_options.allow_growth = True
    if device is not None and not device.gpu:
        config.device_count["GPU"] = 0
    if mixed_precision:
        from tensorflow.core.protobuf import rewriter_config_pb2

        config.graph_options.rewrite_options.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
    if deterministic:
        config.graph_options.optimizer_options.global_jit_level = tf1.OptimizerOptions.OFF
    return config


def gpu_record(device: Device) -> Optional[dict[str, Any]]:
    """run.json's ``gpu`` (its ``devices`` name each GPU's model): the GPUs the session trains on, the NVIDIA
    driver, and the CUDA and cuDNN versions TensorFlow was built for; None on the CPU."""
    if not device.gpu:
        return None
    build = tf.sysconfig.get_build_info()
    return {"trains_on": list(device.gpus), "driver": _nvidia_driver(), "cuda": build.get("cuda_version"),
            "cudnn": build.get("cudnn_version")}


def _nvidia_driver() -> Optional[str]:
    """The NVIDIA driver's version from nvidia-smi; None when it is absent or does not answer."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


@contextlib.contextmanager
def op_determinism(enabled: bool) -> Iterator[None]:
    """TensorFlow's deterministic kernels for this run only (``train.deterministic``): TF's switch is
    process-wide, so put it back after. It also decides some gradients' ops when a graph is built."""
    from tensorflow.python.framework import config as tf_config

    was_enabled = tf_config.is_op_determinism_enabled()
    if enabled and not was_enabled:
        tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not was_enabled:
            tf_config.disable_op_determinism()
