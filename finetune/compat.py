"""Make TF-Slim usable on current TensorFlow. Import this module before anything touches TF-Slim.

Four things are done here, once, and nowhere else:

1. ``tf_slim.batch_norm`` (tf-slim 1.1.0, the last release) builds its layer through
   ``tensorflow.python.layers.normalization``, which lazily imports
   ``tf_keras.legacy_tf_layers.normalization``. tf-keras >= 2.16 ships that package as
   ``tf_keras.src.legacy_tf_layers`` only, so the import fails with
   ``No module named 'tf_keras.legacy_tf_layers'``. We register the shipped modules under the
   name TensorFlow asks for. The module objects are the real ones; nothing is re-implemented.
2. The pipeline is a TF1-style graph program: eager execution is switched off.
3. TensorFlow's C++ start-up chatter is silenced. On a CPU-only machine TF 2.21 writes lines such as
   ``oneDNN custom operations are on``, ``Could not find cuda drivers`` and ``failed call to cuInit``
   straight to file descriptor 2, before absl logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` no
   longer hides them. While TensorFlow loads and enumerates its devices (where those lines come
   from), fd 2 goes through a small filter process that drops the known start-up messages in
   :data:`STARTUP_NOISE` and passes every other line on at once, so nothing else (a real error, a
   traceback, the last words of a crash) is lost; then fd 2 is put back. ``FINETUNE_VERBOSE=1`` in the
   environment turns the filter off and shows TensorFlow's own messages, for ``python -m finetune`` and
   ``python -m finetune.tools`` alike.
4. tf-slim checks ``isinstance(x, ops.Tensor)`` (``tensorflow.python.framework.ops``) where a value may
   be a tensor, e.g. in ``smart_cond`` on the non-fused BatchNorm path that a dense layer with
   BatchNorm takes. TensorFlow 2.21 no longer exports ``Tensor`` there; we point the name back at
   ``tf.Tensor``, the same class, when it is missing.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import subprocess
import sys
import warnings
from typing import Iterator

VERBOSE_ENV = "FINETUNE_VERBOSE"
VERBOSE = os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")

# absl's line prefix: severity, date, time, thread id, then the source file that logged.
_ABSL = rb"[IWE]\d{4} [\d:.]+\s+\d+ "
# The known start-up lines, each pinned to the TF source file that writes it (see module docstring).
STARTUP_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|" + _ABSL + rb"port\.cc:\d+\] oneDNN custom operations are on\."
    rb"|" + _ABSL + rb"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine"
    rb"|" + _ABSL + rb"cuda_platform\.cc:\d+\] failed call to cuInit"
    rb"|" + _ABSL + rb"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU"
    rb"|To enable the following instructions: [A-Z0-9_ ]+, in other operations, rebuild TensorFlow with the"
    rb"|" + _ABSL + rb"cuda_(dnn|blas|fft)\.cc:\d+\] Unable to register cu(DNN|BLAS|FFT) factory"
    rb")"
)

if not VERBOSE:
    # Honoured by TF's C++ logging once absl is initialised: INFO and WARNING lines stay quiet later on.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# The filter runs in a child process so that what TensorFlow writes before a hard crash (an abort
# while loading its libraries) still reaches the terminal: the child drains the pipe after we die.
_FILTER_SCRIPT = """
import re, sys
noise = re.compile(sys.argv[1].encode())
for line in sys.stdin.buffer:
    if not noise.match(line):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


@contextlib.contextmanager
def startup_noise_filtered() -> Iterator[None]:
    """For the block, fd 2 goes through a filter that drops the known start-up lines and passes the rest."""
    if VERBOSE:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        yield
        return
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _FILTER_SCRIPT, STARTUP_NOISE.pattern.decode()],
                                 stdin=subprocess.PIPE, stdout=saved)
    except OSError:  # no interpreter to start (an embedded Python): leave stderr alone
        os.close(saved)
        yield
        return
    os.dup2(child.stdin.fileno(), 2)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        child.stdin.close()  # the last write end: the filter reads to the end, writes, and exits
        child.wait()


_LEGACY = "tf_keras.legacy_tf_layers"
_SHIPPED = "tf_keras.src.legacy_tf_layers"


def _alias_legacy_tf_layers() -> None:
    if _LEGACY in sys.modules:
        return
    try:
        importlib.import_module(_LEGACY)
        return  # a tf-keras that still ships the old name needs nothing
    except ImportError:
        pass
    package = importlib.import_module(_SHIPPED)
    sys.modules[_LEGACY] = package
    for sub in ("base", "convolutional", "core", "normalization", "pooling", "variable_scope_shim"):
        try:
            sys.modules[f"{_LEGACY}.{sub}"] = importlib.import_module(f"{_SHIPPED}.{sub}")
        except ImportError:
            continue


with startup_noise_filtered():
    _alias_legacy_tf_layers()

    import tensorflow as tf  # noqa: E402  (must follow the alias)

    # Device enumeration is where cuInit fails on a machine without a GPU: do it once, here, filtered.
    tf.config.list_physical_devices()

from tensorflow.python.framework import ops as _tf_ops  # noqa: E402

if not hasattr(_tf_ops, "Tensor"):
    _tf_ops.Tensor = tf.Tensor

tf.compat.v1.disable_eager_execution()
tf.get_logger().setLevel("INFO" if VERBOSE else "ERROR")
# TF-Slim calls the deprecated ``layer.apply`` and ``tf.layers.flatten``: warnings about TF-Slim, not the user.
warnings.filterwarnings("ignore", message=".*layer.apply.*is deprecated")
warnings.filterwarnings("ignore", message=".*tf.layers.flatten.*is deprecated")

import tf_slim as slim  # noqa: E402,F401  (re-exported for modules that build layers)

tf1 = tf.compat.v1


__all__ = ["tf", "tf1", "slim", "VERBOSE", "VERBOSE_ENV", "startup_noise_filtered"]
