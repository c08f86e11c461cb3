"""Make TF-Slim usable on current TensorFlow. Import this module before anything touches TF-Slim.

Two things are done here, once, and nowhere else:

1. ``tf_slim.batch_norm`` (tf-slim 1.1.0, the last release) builds its layer through
   ``tensorflow.python.layers.normalization``, which lazily imports
   ``tf_keras.legacy_tf_layers.normalization``. tf-keras >= 2.16 ships that package as
   ``tf_keras.src.legacy_tf_layers`` only, so the import fails with
   ``No module named 'tf_keras.legacy_tf_layers'``. We register the shipped modules under the
   name TensorFlow asks for. The module objects are the real ones; nothing is re-implemented.
2. The pipeline is a TF1-style graph program: eager execution is switched off.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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


_alias_legacy_tf_layers()

import tensorflow as tf  # noqa: E402  (must follow the alias)

tf.compat.v1.disable_eager_execution()
tf.get_logger().setLevel("ERROR")
# TF-Slim calls the deprecated ``layer.apply`` and ``tf.layers.flatten``: warnings about TF-Slim, not the user.
warnings.filterwarnings("ignore", message=".*layer.apply.*is deprecated")
warnings.filterwarnings("ignore", message=".*tf.layers.flatten.*is deprecated")

import tf_slim as slim  # noqa: E402,F401  (re-exported for modules that build layers)

tf1 = tf.compat.v1

__all__ = ["tf", "tf1", "slim"]
