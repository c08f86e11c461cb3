"""The file names of a TFRecord set, read without TensorFlow: which shards each split has.

A shard is ``{prefix}_{split}_NNNNN-of-NNNNN.tfrecord`` (or, unsharded, ``{prefix}_{split}.tfrecord``);
``{split}`` is a value of ``data.split_names``, ``{prefix}`` is ``data.record_prefix`` (null: any, one per
split), and ``labels.txt`` lies beside them (:mod:`finetune.data.tfrecord` reads them all). Apart from it
so that a run can check the names before TensorFlow loads (:func:`shard_problems`, through
:func:`finetune.resolve.path_problems`): a wrong split name or record prefix is told at once.
"""
from __future__ import annotations

import re
from pathlib import Path

from finetune.config import DataConfig
from finetune.errors import FinetuneError

LABELS_FILE = "labels.txt"
SHARDED = r"(?P<prefix>{prefix})_{split}_(?P<index>\d+)-of-(?P<count>\d+)\.tfrecord"
UNSHARDED = r"(?P<prefix>{prefix})_{split}\.tfrecord"
SHOWN = 10  # file names listed in a message
SPLIT_KEYS = ("train", "val", "test")  # data.split_names' keys


def find_shards(root: Path, split: str, data_cfg: DataConfig) -> list[Path]:
    """The shards of one split (``train``, ``val`` or ``test``) under its ``data.split_names`` name, in
    shard order. FinetuneError when they are ambiguous (two prefixes) or incomplete (a shard missing)."""
    name = re.escape(getattr(data_cfg.split_names, split))
    prefix = ".+" if data_cfg.record_prefix is None else re.escape(data_cfg.record_prefix)
    patterns = [re.compile(pattern.format(prefix=prefix, split=name)) for pattern in (SHARDED, UNSHARDED)]
    found = {}
    for path in sorted(root.iterdir()):
        match = next((m for pattern in patterns if (m := pattern.fullmatch(path.name))), None)
        if match and path.is_file():
            found[path] = match
    prefixes = sorted({m["prefix"] for m in found.values()})
    if len(prefixes) > 1:
        raise FinetuneError(
            f"data.root={str(root)!r} holds shards of the {getattr(data_cfg.split_names, split)!r} split under "
            f"{len(prefixes)} prefixes ({', '.join(map(repr, prefixes[:SHOWN]))}). Pick one with "
            "data.record_prefix=NAME, or move the other data set's shards out of the folder.")
    _check_complete(root, found)
    return sorted(found, key=lambda path: int(found[path].groupdict().get("index") or 0))


def _check_complete(root: Path, found: dict[Path, re.Match]) -> None:
    """Either one unsharded file, or every shard NNNNN-of-TOTAL (one TOTAL) present: a half-copied data
    set would otherwise train on part of itself."""
    sharded = [m for m in found.values() if m.groupdict().get("count")]
    if len(found) <= 1 and not sharded:
        return
    totals = {int(m["count"]) for m in sharded}
    indices = sorted(int(m["index"]) for m in sharded)
    if len(sharded) == len(found) and len(totals) == 1 and indices == list(range(totals.pop())):
        return
    names = ", ".join(path.name for path in sorted(found)[:SHOWN])
    raise FinetuneError(
        f"The TFRecord shards of one split in data.root={str(root)!r} do not form one complete set "
        f"({len(found)} file(s): {names}): each of NNNNN-of-TOTAL must be there once, with one TOTAL. Copy the "
        "missing shards, or move the stray ones out of the folder.")


def no_training_shards(root: Path, data_cfg: DataConfig) -> str:
    """Why ``root`` has no training split: the .tfrecord files it holds, and the keys that name the shards."""
    prefix = data_cfg.record_prefix if data_cfg.record_prefix is not None else "{prefix}"
    present = sorted(path.name for path in root.glob("*.tfrecord*"))
    listed = f"The .tfrecord files there: {', '.join(present[:SHOWN])}." if present else "It holds no .tfrecord file."
    return (f"data.root={str(root)!r} (data.name=tfrecord) has no shard of the training split, named "
            f"{prefix}_{data_cfg.split_names.train}_NNNNN-of-NNNNN.tfrecord. {listed} Set data.split_names.train "
            "(and .val, .test) to the split names in the file names, and data.record_prefix to their prefix (null: "
            "any).")


def shard_problems(root: Path, data_cfg: DataConfig) -> list[str]:
    """What the file names in the folder ``root`` tell of a tfrecord set: labels.txt missing, no training
    shard under ``data.split_names.train``, a split's shards ambiguous or incomplete. One paragraph each."""
    found = []
    if not (root / LABELS_FILE).is_file():
        found.append(f"data.name=tfrecord needs {root / LABELS_FILE}, which does not exist: it names the classes of "
                     "the records' image/class/label IDs. Write one ID:NAME line per class (e.g. 0:daisy), as "
                     f"TF-Slim's converters do, into {LABELS_FILE} beside the shards.")
    for split in SPLIT_KEYS:
        try:
            if not find_shards(root, split, data_cfg) and split == "train":
                found.append(no_training_shards(root, data_cfg))
        except FinetuneError as error:
            found.append(str(error))
    return found
