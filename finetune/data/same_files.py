"""One file, one example: the spellings a source lists of one file merged before anything is split.

A CSV may list an image as ``./imgs/x.png`` and ``imgs/x.png``; an image folder may hold a symlink
beside its target, or two symlinks to one file. Each spelling hashes to its own split, so one image
would be trained on and tested on at once. Files are told apart by what the file system says they
are (device and inode: symlinks, ``./`` and ``..``, hard links and, on a case-insensitive disk, another
case all resolve to one file); a missing file by its resolved path.

Of the spellings of one file, the example keeps the one written as the file system names the file (no
``./`` or ``..``, no symlink on the way below the source's folder, each name's case as on disk), else
the first listed; its key, and so its split, is that spelling's. A file listed once keeps its key and
split whatever its spelling, so data without duplicates splits exactly as before. The other spellings
are reported (``bad_files.json``'s ``duplicates``, the log); the same file under two labels (or, in a
CSV, two split columns) is refused by name.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Optional, Sequence

from finetune.errors import FinetuneError

SHOWN = 10  # conflicts named in a message


@dataclass(frozen=True)
class Listed:
    """One spelling of a file as a source lists it."""

    key: str  # how reports name it: the path as written (csv) or relative to data.root (image_folder)
    label: int
    path: Path  # the file it names
    where: str  # how a message names this listing: "line 7: ./x.png" or "a/x.png"
    split: Optional[str] = None  # the csv's split column, when it has one


@dataclass(frozen=True)
class Duplicate:
    """A spelling left out because another spelling of the same file is the example."""

    key: str
    same_as: str  # the key of the example kept


def file_identity(path: Path) -> Hashable:
    """What tells two files apart: device and inode, or for a missing file its resolved path."""
    try:
        stat = os.stat(path)
    except OSError:
        return ("missing", os.path.realpath(path))
    except ValueError:  # a NUL in the name: no file, named as bad by the scan
        return ("missing", str(path))
    return ("file", stat.st_dev, stat.st_ino)


def spelt_as_on_disk(base: Path, written: str) -> bool:
    """Whether ``written`` (relative to ``base``, or absolute) names its file as the file system does: no
    ``.``/``..``/doubled slash, no symlink on the way below ``base``, every name's case as on disk."""
    if not written or posixpath.normpath(written) != written:
        return False
    absolute = posixpath.isabs(written)
    start = "/" if absolute else os.path.realpath(base)
    try:
        if os.path.realpath(written if absolute else os.path.join(start, written)) != os.path.join(start, written):
            return False
    except ValueError:  # a NUL in the name
        return False
    folder = start
    for part in written.strip("/").split("/"):  # a case-insensitive disk resolves any case: ask the folder
        try:
            if part not in os.listdir(folder):
                return False
        except OSError:
            return False
        folder = os.path.join(folder, part)
    return True


def merge_same_files(listed: Sequence[Listed], base: Path, label_name: Callable[[int], str],
                     where: str, fix: str) -> tuple[list[Listed], list[Duplicate]]:
    """``listed`` with each file once (in the order listed; the spelling kept as the module docstring
    says) and the spellings left out. FinetuneError naming each file listed under two labels or splits;
    ``where`` names the source and ``fix`` says how to mend it."""
    groups: dict[Hashable, list[Listed]] = {}
    for item in listed:
        groups.setdefault(file_identity(item.path), []).append(item)
    conflicts = []
    kept_of: dict[int, Listed] = {}  # id of each member -> the member kept
    for members in groups.values():
        if len(members) == 1:
            kept_of[id(members[0])] = members[0]
            continue
        if len({m.label for m in members}) > 1 or len({m.split for m in members}) > 1:
            conflicts.append(" and ".join(
                f"{m.where} ({label_name(m.label)}{', ' + m.split if m.split else ''})" for m in members))
        kept = next((m for m in members if spelt_as_on_disk(base, m.key)), members[0])
        for member in members:
            kept_of[id(member)] = kept
    if conflicts:
        more = f"\n  ... and {len(conflicts) - SHOWN} more" if len(conflicts) > SHOWN else ""
        raise FinetuneError(
            f"{where} lists {len(conflicts)} file(s) more than once, under another label or split, so one image "
            "would be trained on as two classes or be in two splits at once:\n" +
            "\n".join(f"  {conflict}" for conflict in conflicts[:SHOWN]) + more + f"\n{fix}")
    kept = [item for item in listed if kept_of[id(item)] is item]
    duplicates = [Duplicate(item.key, kept_of[id(item)].key) for item in listed if kept_of[id(item)] is not item]
    return kept, duplicates
