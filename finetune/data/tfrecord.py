"""The ``tfrecord`` source: the shards TF-Slim's dataset converters (``download_and_convert_flowers`` and
its siblings) write, and ``labels.txt`` beside them.

``data.root`` is the folder holding both. A shard is ``{prefix}_{split}_NNNNN-of-NNNNN.tfrecord`` (or,
unsharded, ``{prefix}_{split}.tfrecord``, as the cifar10 and mnist converters write); ``{split}`` is a
value of ``data.split_names`` (slim writes ``train`` and ``validation``; no test split is fine) and
``{prefix}`` is ``data.record_prefix`` (null: any, as long as only one prefix is present per split).
Each record is a ``tf.train.Example`` with ``image/encoded`` (bytes), ``image/class/label`` (int64)
and, ignored here because the bytes' own header says it, ``image/format``, ``image/height`` and
``image/width``. ``labels.txt`` holds ``ID:NAME`` lines; the class names are ordered by ID and a record's
label ID becomes the index of its class in that order (slim's IDs are 0..n-1 already, so nothing moves).

The scan reads every record once, streaming: a record with no image, a label ``labels.txt`` does not
name, or image bytes that fail :func:`finetune.data.bad_files.encoded_problem` is a bad example
(``SHARD:INDEX``), skipped and listed like a bad file. A shard that is not a TFRecord file at all (a
corrupt length or checksum) stops the scan, naming the file.

Reading in the graph: TensorFlow has no op that reads record ``i`` of a shard, so a split's references
are its serialized records themselves (the shards read in order, bad records filtered out) and reading
one parses its ``image/encoded``. The training shuffle therefore holds records, not names:
``data.shuffle_buffer`` bounds that memory (null: the whole split's encoded images).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from finetune.compat import tf, tf1
from finetune.config import DataConfig
from finetune.data.bad_files import drop_bad, encoded_problem, shown_name
from finetune.data.examples import SPLITS, Example, LabelledImages, check_class_names
from finetune.data.shards import LABELS_FILE, SHOWN, find_shards
from finetune.errors import FinetuneError

ENCODED = "image/encoded"
LABEL = "image/class/label"


def scan_tfrecords(root: Path, data_cfg: DataConfig) -> LabelledImages:
    """Read ``labels.txt`` and every record of every split's shards; drop the bad examples. A set without
    training shards scans (``tools evaluate`` scores a test split alone); training refuses it
    (:func:`finetune.data.sources.check_splits`)."""
    if not root.is_dir():
        raise FinetuneError(
            f"Config key 'data.root' points to {str(root)!r}, which is not a directory. For data.name=tfrecord "
            f"give the folder holding the TFRecord shards ({{prefix}}_{{split}}_NNNNN-of-NNNNN.tfrecord) and "
            f"{LABELS_FILE}.")
    ids = read_labels(root / LABELS_FILE)
    class_names = [ids[label_id] for label_id in sorted(ids)]
    check_class_names(class_names, str(root / LABELS_FILE))
    index_of = {label_id: index for index, label_id in enumerate(sorted(ids))}
    shards = {split: find_shards(root, split, data_cfg) for split in SPLITS}
    candidates = {split: [c for shard in shards[split] for c in _scan_shard(shard, index_of, data_cfg.max_pixels)]
                  for split in SPLITS}
    kept, bad, scanned = drop_bad(candidates, lambda c: c.problem, lambda c: c.example.key, data_cfg,
                                  f"data.root={str(root)!r} (data.name=tfrecord)")
    examples = {split: [c.example for c in kept[split]] for split in SPLITS}
    return LabelledImages("tfrecord", root, class_names, examples, reader=TFRecordReader(), bad=bad,
                          scanned=scanned)


def read_labels(path: Path) -> dict[int, str]:
    """``labels.txt``: label ID -> class name, from ``ID:NAME`` lines (blank lines ignored; a name may
    hold colons, as slim's own reader allows)."""
    fix = (f"Write one ID:NAME line per class (e.g. 0:daisy), as TF-Slim's converters do, into {LABELS_FILE} "
           "beside the shards.")
    try:
        # utf-8-sig: Windows editors (Notepad) start UTF-8 files with a byte-order mark, which is no part of ID 0
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise FinetuneError(f"data.name=tfrecord needs {shown_name(path)}, which does not exist: it names the "
                            f"classes of the records' image/class/label IDs. {fix}") from None
    except OSError as error:
        raise FinetuneError(f"Cannot read {shown_name(path)}: {error.strerror or error}. {fix}") from None
    except UnicodeDecodeError:
        raise FinetuneError(f"{shown_name(path)} is not UTF-8 text. {fix}") from None
    ids: dict[int, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        label_id, colon, name = line.partition(":")
        if not colon or not re.fullmatch(r"\s*-?\d+\s*", label_id):
            raise FinetuneError(f"{shown_name(path)} line {number} is {line[:80]!r}, not ID:NAME. {fix}")
        if int(label_id) in ids:
            raise FinetuneError(f"{shown_name(path)} line {number} repeats the label ID {int(label_id)} "
                                f"({ids[int(label_id)]!r} and {name!r}). Give each class its own ID.")
        ids[int(label_id)] = name
    repeated = sorted({name for name in ids.values() if list(ids.values()).count(name) > 1})
    if repeated:
        raise FinetuneError(f"{shown_name(path)} names the class(es) {', '.join(map(repr, repeated[:SHOWN]))} "
                            "under more than one ID. Give each class one ID (merge the records' labels).")
    return ids


@dataclass(frozen=True)
class _Candidate:
    example: Example
    problem: Optional[str]


def _scan_shard(shard: Path, index_of: dict[int, int], max_pixels: int) -> Iterator[_Candidate]:
    """Each record of ``shard`` as an example, with why it cannot be trained on (or None)."""
    for index, record in enumerate(_records(shard)):
        label_id, problem = _check_record(record, index_of, max_pixels)
        label = index_of.get(label_id, -1)
        yield _Candidate(Example(f"{shard.name}:{index}", label, f"{shard}:{index}", len(record)), problem)


def _check_record(record: bytes, index_of: dict[int, int], max_pixels: int) -> tuple[Optional[int], Optional[str]]:
    """A record's label ID, and why it cannot be trained on (or None)."""
    try:
        features = tf.train.Example.FromString(record).features.feature
    except DecodeError:
        return None, "not a tf.train.Example record"
    labels = features[LABEL].int64_list.value if LABEL in features else []
    encoded = features[ENCODED].bytes_list.value if ENCODED in features else []
    if len(labels) != 1:
        return None, f"{LABEL} holds {len(labels)} integers, not one"
    if labels[0] not in index_of:
        return labels[0], f"its label {labels[0]} is not an ID in {LABELS_FILE}"
    if len(encoded) != 1:
        return labels[0], f"{ENCODED} holds {len(encoded)} byte strings, not one image"
    problem = encoded_problem(encoded[0], max_pixels)
    return labels[0], None if problem is None else f"{ENCODED}: {problem}"


def _records(shard: Path) -> Iterator[bytes]:
    """The serialized records of one shard, checked against their CRCs as they are read."""
    try:
        yield from tf1.io.tf_record_iterator(str(shard))
    except tf.errors.OpError as error:
        raise FinetuneError(
            f"{shown_name(shard)} is not a readable TFRecord file ({error.message}). It may be cut short or damaged: "
            "write it again with the converter that made it, or move it out of data.root.") from None


class TFRecordReader:
    """Reads the examples of TFRecord shards: a reference is a serialized record (see the module docstring).

    ``examples`` handed to it must be in scan order (a split, or a part of one, in order): the shards are
    read front to back once.
    """

    def references(self, examples: Sequence[Example]) -> tf.data.Dataset:
        """The serialized records of ``examples``, in order: each shard holding some read up to the last of
        them, the other records filtered out."""
        plan = _plan(examples)
        if not plan:
            return tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string))
        limits = np.array([indices[-1] + 1 for _, indices in plan], np.int64)  # records read per shard
        offsets = np.concatenate([[0], np.cumsum(limits)[:-1]]).astype(np.int64)
        wanted = np.zeros(int(limits.sum()), bool)
        for offset, (_, indices) in zip(offsets, plan):
            wanted[offset + np.asarray(indices, np.int64)] = True
        shards = tf.data.Dataset.from_tensor_slices(
            (tf.constant([str(shard) for shard, _ in plan]), tf.constant(limits), tf.constant(offsets)))
        wanted_tensor = tf.constant(wanted)

        def records(path: tf.Tensor, limit: tf.Tensor, offset: tf.Tensor) -> tf.data.Dataset:
            return tf.data.TFRecordDataset(path).take(limit).enumerate().map(
                lambda index, record: (offset + index, record))

        return (shards.flat_map(records)
                .filter(lambda position, record: tf.gather(wanted_tensor, position))
                .map(lambda position, record: record))

    def read(self, reference: tf.Tensor) -> tf.Tensor:
        """A serialized record -> its image/encoded bytes."""
        return tf.io.parse_single_example(reference, {ENCODED: tf.io.FixedLenFeature([], tf.string)})[ENCODED]

    def read_bytes(self, examples: Sequence[Example]) -> Iterator[bytes]:
        for shard, indices in _plan(examples):
            wanted = iter(indices)
            target = next(wanted)
            for index, record in enumerate(_records(shard)):
                if index == target:
                    yield tf.train.Example.FromString(record).features.feature[ENCODED].bytes_list.value[0]
                    target = next(wanted, None)
                    if target is None:
                        break
            if target is not None:
                raise FinetuneError(f"{shown_name(shard)} ends before its record {target}, which was there when the "
                                    "data was scanned. Was the shard replaced during the run?")


def _plan(examples: Sequence[Example]) -> list[tuple[Path, list[int]]]:
    """``examples`` as (shard, record indices) in reading order; ValueError unless each shard's examples
    come together and in increasing index order (the order the scan gives)."""
    plan: list[tuple[str, list[int]]] = []
    seen: set[str] = set()
    for example in examples:
        shard, _, text = example.reference.rpartition(":")
        index = int(text)
        if plan and plan[-1][0] == shard:
            if index <= plan[-1][1][-1]:
                raise ValueError(f"TFRecord examples out of scan order at {example.key}")
            plan[-1][1].append(index)
        elif shard in seen:
            raise ValueError(f"TFRecord examples of one shard not together at {example.key}")
        else:
            seen.add(shard)
            plan.append((shard, [index]))
    return [(Path(shard), indices) for shard, indices in plan]
