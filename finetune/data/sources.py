"""Data sources: where a run's labelled images come from, behind one registry keyed by ``data.name``.

A source scans its files once, before any graph exists, and returns :class:`LabelledImages`: the class
names, each split's examples in a fixed order, and the bad files it skipped. It also says how the input
pipeline reads an example: a *reference* (a short string the training shuffle can hold for every example
of a split) and how to turn it into encoded image bytes. Everything downstream (the input pipeline, the
feature cache, export parity, the reports) sees only this, never a source's own layout.

- ``image_folder``: ``root/<class_name>/*.jpg``, split by a hash of each path (:mod:`.image_folder`);
- ``tfrecord``: the shards TF-Slim's dataset converters write (:mod:`.tfrecord`);
- ``csv``: ``path,label[,split]`` rows (:mod:`.csv`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol, Sequence

from finetune.compat import tf
from finetune.config import DataConfig, PathsConfig, SplitConfig
from finetune.errors import FinetuneError
from finetune.validate import DATA_SOURCES, implementations

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    key: str  # names it in reports: its path relative to data.root, or SHARD:INDEX for a TFRecord example
    label: int  # the index of its class in class_names
    reference: str  # what the input pipeline reads it from: an image file's path; a TFRecord shard's
    size: int  # its encoded bytes (for the data record: a changed file changes the data's hash)


@dataclass(frozen=True)
class BadExample:
    key: str
    split: str
    reason: str


class Reader(Protocol):
    """How a source's examples become encoded image bytes, in the graph and in Python."""

    def references(self, examples: Sequence[Example]) -> tf.data.Dataset:
        """A dataset of one string per example, in order: small enough to shuffle a whole split of."""

    def read(self, reference: tf.Tensor) -> tf.Tensor:
        """One reference -> the example's encoded image bytes (a scalar string tensor)."""

    def read_bytes(self, examples: Sequence[Example]) -> Iterator[bytes]:
        """The encoded bytes of ``examples``, in order, in Python (export parity, the feature cache)."""


class FileReader:
    """Examples that are image files: the reference is the file's path."""

    def references(self, examples: Sequence[Example]) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(tf.constant([e.reference for e in examples], tf.string))

    def read(self, reference: tf.Tensor) -> tf.Tensor:
        return tf.io.read_file(reference)

    def read_bytes(self, examples: Sequence[Example]) -> Iterator[bytes]:
        for example in examples:
            try:
                yield Path(example.reference).read_bytes()
            except OSError as error:
                raise FinetuneError(f"Cannot read the image {example.reference}: {error.strerror or error}. It was "
                                    "readable when the data was scanned; was it moved or deleted?") from None


@dataclass
class LabelledImages:
    """What a source found: classes, examples per split (fixed order), bad files skipped, and its reader."""

    name: str  # data.name
    root: Path  # data.root as resolved (the demo folder when unset)
    class_names: list[str]  # the label of a class is its index here
    examples: dict[str, list[Example]]  # split -> examples; every split present, possibly empty
    reader: Reader = field(default_factory=FileReader)
    bad: list[BadExample] = field(default_factory=list)  # skipped: unreadable, truncated, not an image
    scanned: dict[str, int] = field(default_factory=dict)  # split -> examples found, bad ones included

    def summary(self) -> str:
        counts = ", ".join(f"{split} {len(self.examples[split])}" for split in SPLITS)
        skipped = f"; {len(self.bad)} bad file(s) skipped" if self.bad else ""
        return f"{len(self.class_names)} classes from {self.root} ({self.name}: {counts} images{skipped})"

    def bad_files_report(self) -> dict:
        """bad_files.json: what was skipped and why, and how much of each split that was."""
        return {"scanned": dict(self.scanned),
                "skipped": {split: sum(b.split == split for b in self.bad) for split in SPLITS},
                "files": [{"file": b.key, "split": b.split, "reason": b.reason} for b in self.bad]}


def split_of(relative_path: str, split: SplitConfig) -> str:
    """The split of one file: a stable hash of its relative path, compared with the fractions. Adding
    files never moves existing ones between train, val and test."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64
    if position < split.train:
        return "train"
    if position < split.train + split.val:
        return "val"
    return "test"


def check_class_names(names: Sequence[str], where: str) -> None:
    """Refuse class names that cannot be one line of labels.txt (or of a JSON report)."""
    bad = [name for name in names if not name.strip() or any(c in name for c in "\n\r\x00") or
           not _utf8(name)]
    if bad:
        shown = ", ".join(repr(name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace"))
                          for name in bad[:5])
        raise FinetuneError(f"{where} has class name(s) {shown} that cannot be written as one line of labels.txt "
                            "(empty, a line break or NUL inside, or not valid UTF-8). Rename them.")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_splits(data: LabelledImages, data_cfg: DataConfig) -> None:
    """At least two classes, and images in the training and validation splits."""
    where = f"data.root={str(data.root)!r} (data.name={data.name})"
    if len(data.class_names) < 2:
        unit = "class folder(s)" if data.name == "image_folder" else "class(es)"
        raise FinetuneError(f"{where} holds {len(data.class_names)} {unit} with images; a classifier needs at least "
                            f"two. Expected: {ROOT_MEANINGS[data.name]}.")
    hints = {"train": f"data.split.train={data_cfg.split.train}", "val": f"data.split.val={data_cfg.split.val}"}
    for split, name in (("train", "training"), ("val", "validation")):
        if not data.examples[split]:
            raise FinetuneError(f"No image of {where} falls in the {name} split. Add images, or raise "
                                f"{hints[split]} (image_folder, csv without a split column), or check "
                                f"data.split_names.{split}={getattr(data_cfg.split_names, split)!r} (tfrecord shard "
                                "names, csv split column).")


@dataclass(frozen=True)
class Source:
    """One registered source: how to scan it, and (image_folder only) the folder used when data.root is unset."""

    scan: Callable[[Path, DataConfig], LabelledImages]
    default_root: Optional[Callable[[PathsConfig, bool], Path]] = None


def _sources() -> dict[str, Source]:
    from finetune.data import csv, image_folder, tfrecord

    return implementations(DATA_SOURCES, {
        "image_folder": Source(image_folder.scan_image_folder, image_folder.demo_root),
        "tfrecord": Source(tfrecord.scan_tfrecords),
        "csv": Source(csv.scan_csv),
    }, "data.name")


def open_source(data_cfg: DataConfig, paths_cfg: PathsConfig, create: bool = True) -> LabelledImages:
    """Scan the data ``data.name`` and ``data.root`` name (the demo dataset, made now unless ``create`` is
    off, when image_folder's root is unset); refuse it when it cannot be trained on."""
    source = _sources()[data_cfg.name]
    if data_cfg.root is not None:
        root = Path(data_cfg.root).expanduser()
    elif source.default_root is not None:
        root = source.default_root(paths_cfg, create)
    else:
        raise FinetuneError(f"Config key 'data.root' is unset; data.name={data_cfg.name} needs it: "
                            f"{ROOT_MEANINGS[data_cfg.name]}. Set data.root=PATH.")
    data = source.scan(root, data_cfg)
    check_splits(data, data_cfg)
    return data


ROOT_MEANINGS = {
    "image_folder": "a folder of root/<class_name>/<image> files",
    "tfrecord": "the folder holding the TFRecord shards ({prefix}_{split}_NNNNN-of-NNNNN.tfrecord) and labels.txt",
    "csv": "the CSV file of path,label[,split] rows",
}
