"""The data vocabulary: what a source found (:class:`LabelledImages`), one labelled image
(:class:`Example`), a file it skipped (:class:`BadExample`), and how the input pipeline reads an
example (:class:`Reader`). Every module after the scan (input pipeline, feature cache, export parity,
reports, run record) speaks only this, never a source's own layout.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Protocol, Sequence

from finetune.compat import tf
from finetune.config import SplitConfig, SplitNamesConfig
from finetune.data.same_files import Duplicate
from finetune.errors import FinetuneError

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
    label: Optional[int] = None  # its class's index, where the source knows it (not in bad_files.json)


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
    fold: Optional[tuple[int, int]] = None  # (data.fold, data.folds) when val is one fold of the pool, else None
    duplicates: list[Duplicate] = field(default_factory=list)  # other spellings of a file listed once

    def summary(self) -> str:
        counts = ", ".join(f"{split} {len(self.examples[split])}" for split in SPLITS)
        skipped = f"; {len(self.bad)} bad file(s) skipped" if self.bad else ""
        twice = f"; {len(self.duplicates)} duplicate path(s) of listed files left out" if self.duplicates else ""
        fold = f"; validation is fold {self.fold[0]} of {self.fold[1]}" if self.fold else ""
        return f"{len(self.class_names)} classes from {self.root} ({self.name}: {counts} images{skipped}{twice}{fold})"

    def file_list_sha256(self) -> str:
        """The sha256 of the sorted lines ``KEY<tab>LABEL<tab>SIZE_IN_BYTES`` of every example: an added,
        removed, relabelled or resized image changes it."""
        lines = sorted(f"{example.key}\t{example.label}\t{example.size}\n"
                       for split in SPLITS for example in self.examples[split])
        return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()

    def splits_record(self) -> dict:
        """splits.json: the classes in label order, the fold, each split's examples as the source names them,
        and the file list's sha256. What a run was trained on: a resumed run must find the same."""
        return {"classes": list(self.class_names),
                "fold": None if self.fold is None else {"fold": self.fold[0], "folds": self.fold[1]},
                "splits": {split: [example.key for example in self.examples[split]] for split in SPLITS},
                "file_list_sha256": self.file_list_sha256()}

    def bad_files_report(self) -> dict:
        """bad_files.json: what was skipped and why, and how much of each split that was."""
        report = {"scanned": dict(self.scanned),
                  "skipped": {split: sum(b.split == split for b in self.bad) for split in SPLITS},
                  "files": [{"file": b.key, "split": b.split, "reason": b.reason} for b in self.bad]}
        if self.duplicates:  # only then: a run on data without duplicates writes the file as it always did
            report["duplicates"] = [{"file": d.key, "same_as": d.same_as} for d in self.duplicates]
        return report


def split_names(names: SplitNamesConfig) -> dict[str, str]:
    """What a split is called in the data (a split folder's name, a CSV's split column) -> the split: the names
    of ``data.split_names``, and ``val`` and ``validation`` both for validation (the two usual spellings)."""
    return {"val": "val", "validation": "val", **{getattr(names, split): split for split in SPLITS}}


def split_fractions(split: SplitConfig) -> SplitConfig:
    """``data.split`` as plain numbers, for :func:`split_of` once per file (a config node's attributes are slow)."""
    return SplitConfig(train=float(split.train), val=float(split.val), test=float(split.test))


def split_of(relative_path: str, split: SplitConfig) -> str:
    """The split of one file: a stable hash of its relative path, compared with the fractions (pass
    :func:`split_fractions` when splitting many). Adding files never moves existing ones between train, val
    and test."""
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
