"""Weight sources: where ``restore.checkpoint`` reads named tensors from (never pickles).

:func:`open_weights` turns a spec into a :class:`WeightSource`, chosen by the path:

- ``*.pb`` / ``*.pbtxt``: a frozen GraphDef, through the op gate first (:func:`finetune.op_gate.check_ops`:
  only constants are read, nothing is imported or run, but every door gives the same answer). Its frozen
  variables are read back by name: a ``Const`` node ``X`` counts as the variable ``X`` when it is read
  through an ``Identity`` named ``X/read`` (what ``convert_variables_to_constants`` writes for ref
  variables, and what the hand-written recipes feed from) or an ``Identity`` whose last name part is
  ``ReadVariableOp[_N]`` (what it writes for resource variables: the const keeps the variable's name,
  every read becomes an Identity such as ``.../Conv2D/ReadVariableOp``). Other constants are not weights.
- ``*.npz``: arrays by name, loaded with ``allow_pickle=False``.
- anything else: a checkpoint prefix, a ``.index``/``.data-*`` file, or a directory (its latest checkpoint).

Every source answers the same three questions: ``shapes()``, ``dtypes()``, ``read(names)``.
"""
from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from finetune.compat import tf, tf1
from finetune.errors import FinetuneError, closest, first_line, write_failed

FROZEN_GRAPH_SUFFIXES = (".pb", ".pbtxt")
NPZ_SUFFIX = ".npz"
_RESOURCE_READ = re.compile(r"ReadVariableOp(_\d+)?$")


def _subject(key: str, value: str) -> str:
    """``Config key 'restore.checkpoint' is 'x'`` for config keys, ``PB 'x'`` for command-line arguments."""
    return f"Config key '{key}' is {value!r}" if "." in key else f"{key} is {value!r}"


def resolve_checkpoint(path: str, key: str = "restore.checkpoint") -> str:
    """The file or prefix a weight spec points at.

    A ``.pb``/``.pbtxt``/``.npz`` file is returned as given (it must exist). Anything else is a
    checkpoint: a prefix, a directory (its latest checkpoint) or a ``.index``/``.data`` file, returned
    as the prefix; or a single-file checkpoint of the old V1 format (the 2016/2017 TF-Slim zoo
    tarballs, e.g. ``inception_v3.ckpt``), returned as given.
    """
    candidate = Path(path).expanduser()
    if candidate.suffix in (*FROZEN_GRAPH_SUFFIXES, NPZ_SUFFIX):
        if not candidate.is_file():
            raise FinetuneError(f"{_subject(key, path)}, but there is no such file.")
        return str(candidate)
    if candidate.is_dir():
        latest = tf.train.latest_checkpoint(str(candidate))
        state = tf1.train.get_checkpoint_state(str(candidate)) if (candidate / "checkpoint").is_file() else None
        if latest is None and state is not None and state.model_checkpoint_path:
            named = state.model_checkpoint_path
            raise FinetuneError(
                f"{_subject(key, path)}: a directory whose 'checkpoint' file names {named}, which is not there "
                f"(no {named}.index). Point it at a checkpoint prefix that exists (DIR/model.ckpt-N), or fix or "
                "delete DIR/checkpoint."
            )
        if latest is None:
            raise FinetuneError(
                f"{_subject(key, path)}: a directory which holds no checkpoint (no 'checkpoint' index file). "
                "Point it at a checkpoint prefix such as DIR/model.ckpt, a frozen graph (.pb) or an .npz file."
            )
        return latest
    text = str(candidate)
    for suffix in (".index", ".meta"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    if ".data-" in text:
        text = text.split(".data-")[0]
    if not Path(text + ".index").exists():
        if candidate.is_file():  # V1 format: one file, no .index; TF's reader and Saver take its path
            return str(candidate)
        raise FinetuneError(
            f"{_subject(key, path)}, but no checkpoint is there (looked for {text + '.index'!r}). Give a "
            "checkpoint prefix (the path without .index/.data-*), a directory holding checkpoints, a frozen "
            "graph (.pb) or an .npz file."
        )
    return text


def checksum(value: np.ndarray) -> str:
    """The first 12 hex digits of the sha256 of the array's bytes (C order)."""
    value = np.asarray(value)
    if value.dtype == object:  # strings
        data = b"\0".join(item if isinstance(item, bytes) else str(item).encode() for item in value.ravel())
    else:
        data = np.ascontiguousarray(value).tobytes()
    return hashlib.sha256(data).hexdigest()[:12]


def bit_identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes (stricter than ``==``: NaN equals itself, -0.0 differs from 0.0)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return checksum(a) == checksum(b)
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


class WeightSource:
    """Named tensors to restore from. ``kind`` is ``checkpoint``, ``frozen_graph`` or ``npz``."""

    kind = ""

    def __init__(self, path: str, key: str) -> None:
        self.path = path
        self.key = key
        self._shapes: dict[str, list[int]] = {}
        self._dtypes: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def describe(self) -> str:
        return f"{self.path} ({self.kind.replace('_', ' ')})"

    def shapes(self) -> dict[str, list[int]]:
        """Every tensor name with its shape."""
        return dict(self._shapes)

    def dtypes(self) -> dict[str, str]:
        """Every tensor name with its TensorFlow dtype name (``float32``, ``int64``...)."""
        return dict(self._dtypes)

    def read(self, names: Optional[Iterable[str]] = None) -> dict[str, np.ndarray]:
        """The values of ``names`` (default: all), exactly as stored."""
        names = sorted(self._shapes) if names is None else list(names)
        unknown = [name for name in names if name not in self._shapes]
        if unknown:
            raise FinetuneError(
                f"{_subject(self.key, self.path)}, which holds no tensor {unknown[0]!r}"
                f"{f' (nor {len(unknown) - 1} more)' if len(unknown) > 1 else ''}. "
                f"Closest names: {', '.join(closest(unknown[0], self._shapes, n=3))}."
            )
        return {name: self._read(name) for name in names}

    def _read(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def _unreadable(self, what: str, error: BaseException) -> FinetuneError:
        text = str(error).strip().splitlines()
        return FinetuneError(
            f"{_subject(self.key, self.path)}, which cannot be read as {what} "
            f"({type(error).__name__}: {text[0] if text else ''})."
        )


class CheckpointSource(WeightSource):
    kind = "checkpoint"

    def __init__(self, prefix: str, key: str = "restore.checkpoint") -> None:
        super().__init__(prefix, key)
        try:
            self._reader = tf.train.load_checkpoint(prefix)
            self._shapes = {name: list(shape) for name, shape in self._reader.get_variable_to_shape_map().items()}
            self._dtypes = {name: dtype.name for name, dtype in self._reader.get_variable_to_dtype_map().items()}
        except (tf.errors.OpError, ValueError) as error:
            raise FinetuneError(
                f"{_subject(key, prefix)}: the checkpoint cannot be read ({error.__class__.__name__}: "
                f"{first_line(error)}). Check that its .index and .data files are complete."
            ) from None

    def _read(self, name: str) -> np.ndarray:
        try:
            return self._reader.get_tensor(name)
        except (tf.errors.OpError, ValueError) as error:
            raise self._unreadable(f"a checkpoint (tensor {name!r})", error) from None


def frozen_variables(graph_def: tf1.GraphDef) -> dict[str, object]:
    """The ``Const`` nodes of a frozen graph that were variables (see the module docstring), by name."""
    consts = {node.name: node for node in graph_def.node if node.op == "Const"}
    found = {}
    for node in graph_def.node:
        if node.op != "Identity" or not node.input or node.input[0] not in consts:
            continue
        source = node.input[0]
        if node.name == f"{source}/read" or _RESOURCE_READ.match(node.name.rsplit("/", 1)[-1]):
            found[source] = consts[source]
    return {name: found[name] for name in sorted(found)}


class FrozenGraphSource(WeightSource):
    kind = "frozen_graph"

    def __init__(self, path: str, key: str = "restore.checkpoint", allow_unsafe: bool = False,
                 graph_def: Optional[tf1.GraphDef] = None) -> None:
        """``allow_unsafe``: let ops outside the gate's list through (config key ``allow_unsafe_ops``).
        ``graph_def``: the file already parsed by the caller, who answers for the gate (``inspect --ops``)."""
        from finetune.graphs import load_graph_def

        super().__init__(path, key)
        if Path(path).name == "saved_model.pb":
            raise FinetuneError(
                f"{_subject(key, path)}: a SavedModel, not a frozen GraphDef. Its weights are the checkpoint "
                f"{str(Path(path).parent / 'variables' / 'variables')!r}: use that instead."
            )
        if graph_def is None:
            try:
                graph_def = load_graph_def(path, allow_unsafe)
            except FinetuneError as error:
                raise FinetuneError(f"{_subject(key, path)}: {error}") from None
        self.graph_def = graph_def
        self._nodes = frozen_variables(self.graph_def)
        for name, node in self._nodes.items():
            self._shapes[name] = [dim.size for dim in node.attr["value"].tensor.tensor_shape.dim]
            self._dtypes[name] = tf.dtypes.as_dtype(node.attr["dtype"].type).name

    def _read(self, name: str) -> np.ndarray:
        return tf.make_ndarray(self._nodes[name].attr["value"].tensor)


class NpzSource(WeightSource):
    kind = "npz"

    def __init__(self, path: str, key: str = "restore.checkpoint") -> None:
        super().__init__(path, key)
        try:
            with np.load(path, allow_pickle=False) as data:
                self._arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            hint = " (it holds Python objects, which are never unpickled)" if "allow_pickle" in str(error) else ""
            raise FinetuneError(
                f"{_subject(key, path)}, which cannot be read as an .npz of arrays{hint} "
                f"({type(error).__name__}: {first_line(error)})."
            ) from None
        for name, value in self._arrays.items():
            self._shapes[name] = list(value.shape)
            try:
                self._dtypes[name] = tf.dtypes.as_dtype(value.dtype).name
            except TypeError:
                self._dtypes[name] = str(value.dtype)

    def _read(self, name: str) -> np.ndarray:
        return self._arrays[name]


def open_weights(spec: str, key: str = "restore.checkpoint", allow_unsafe: bool = False) -> WeightSource:
    """The weight source ``spec`` names: ``.pb``/``.pbtxt``, ``.npz``, or a checkpoint prefix/file/directory.

    Every failure (no such file, unreadable, no tensors, a .pb the op gate refuses unless ``allow_unsafe``)
    is a FinetuneError naming ``key``.
    """
    path = resolve_checkpoint(spec, key)
    suffix = Path(path).suffix
    if suffix in FROZEN_GRAPH_SUFFIXES:
        source: WeightSource = FrozenGraphSource(path, key, allow_unsafe)
        if not source.shapes():
            consts = sum(node.op == "Const" for node in source.graph_def.node)
            raise FinetuneError(
                f"{_subject(key, spec)}: a GraphDef without frozen variables ({len(source.graph_def.node)} nodes, "
                f"{consts} Const). A frozen variable X is a Const read through an Identity named 'X/read' or "
                "'.../ReadVariableOp', as convert_variables_to_constants writes them. "
                f"List its nodes with: python -m finetune.tools inspect {spec} --ops"
            )
    elif suffix == NPZ_SUFFIX:
        source = NpzSource(path, key)
    else:
        source = CheckpointSource(path, key)
    if not source.shapes():
        raise FinetuneError(f"{_subject(key, spec)}, which holds no tensors.")
    return source


def read_checkpoint(prefix: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The tensors ``names`` (default: all) of the weight source ``prefix``."""
    return open_weights(prefix).read(names)


def write_checkpoint(tensors: dict[str, np.ndarray], prefix: str | Path,
                     fix: str = "write it to another folder") -> str:
    """Save ``tensors`` as variables of those names in a fresh graph; returns the prefix written.

    Values are fed, not embedded as constants, so the graph stays small whatever the model size. A write that
    fails (a full disk, a read-only folder) is a FinetuneError ending in ``fix``, and leaves no file of it.
    """
    prefix = Path(prefix)
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        before = set(os.listdir(prefix.parent))
    except OSError as error:
        raise write_failed(error, str(prefix), fix) from error
    graph = tf.Graph()
    with graph.as_default():
        feeds, variables = {}, {}
        for name, value in tensors.items():
            value = np.asarray(value)
            placeholder = tf1.placeholder(tf.dtypes.as_dtype(value.dtype), value.shape)
            variables[name] = tf1.get_variable(name, initializer=placeholder, trainable=False)
            feeds[placeholder] = value
        saver = tf1.train.Saver(var_list=variables, write_version=tf1.train.SaverDef.V2)
        with tf1.Session(graph=graph) as sess:
            sess.run([variable.initializer for variable in variables.values()], feeds)
            try:
                return saver.save(sess, str(prefix), write_meta_graph=False)
            except (OSError, tf.errors.OpError) as error:
                # A save that fails between its files (the .data written, the .index not) leaves a checkpoint
                # that looks whole to a glob: remove what this save made, so nothing half-written stays.
                for name in set(os.listdir(prefix.parent)) - before:
                    if name.startswith(prefix.name + ".") or name.startswith("checkpoint.tmp"):
                        (prefix.parent / name).unlink(missing_ok=True)
                raise write_failed(error, str(prefix), fix) from error
