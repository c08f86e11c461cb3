"""Reading and writing TensorFlow checkpoints as plain name -> array maps (never pickles)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune.compat import tf, tf1
from finetune.errors import FinetuneError


def resolve_checkpoint(path: str, key: str = "restore.checkpoint") -> str:
    """A checkpoint prefix from a prefix, a directory (its latest checkpoint) or a ``.index``/``.data`` file."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        latest = tf.train.latest_checkpoint(str(candidate))
        if latest is None:
            raise FinetuneError(
                f"Config key '{key}' names the directory {str(candidate)!r}, which holds no checkpoint "
                "(no 'checkpoint' index file). Point it at a checkpoint prefix such as DIR/model.ckpt."
            )
        return latest
    text = str(candidate)
    for suffix in (".index", ".meta"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    if ".data-" in text:
        text = text.split(".data-")[0]
    if not Path(text + ".index").exists():
        raise FinetuneError(
            f"Config key '{key}' is {path!r}, but no checkpoint is there (looked for {text + '.index'!r}). "
            "Give a checkpoint prefix (the path without .index/.data-*) or a directory holding checkpoints."
        )
    return text


def checkpoint_shapes(prefix: str, key: str = "restore.checkpoint") -> dict[str, list[int]]:
    """Every tensor name of the checkpoint with its shape."""
    try:
        return {name: list(shape) for name, shape in tf.train.load_checkpoint(prefix).get_variable_to_shape_map().items()}
    except (tf.errors.OpError, ValueError) as error:
        raise FinetuneError(
            f"Config key '{key}': the checkpoint {prefix!r} cannot be read ({error.__class__.__name__}: "
            f"{str(error).splitlines()[0]}). Check that its .index and .data files are complete."
        ) from None


def read_checkpoint(prefix: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    names = names if names is not None else sorted(reader.get_variable_to_shape_map())
    return {name: reader.get_tensor(name) for name in names}


def write_checkpoint(tensors: dict[str, np.ndarray], prefix: str | Path) -> str:
    """Save ``tensors`` as variables of those names in a fresh graph; returns the prefix written."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        variables = {
            name: tf1.get_variable(name, initializer=tf.constant(value), trainable=False)
            for name, value in tensors.items()
        }
        saver = tf1.train.Saver(var_list=variables, write_version=tf1.train.SaverDef.V2)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.variables_initializer(list(variables.values())))
            return saver.save(sess, str(prefix), write_meta_graph=False)
