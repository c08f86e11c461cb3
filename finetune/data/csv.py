"""The ``csv`` source: a CSV file of ``path,label`` rows, with an optional third ``split`` column.

``data.root`` is the CSV file itself (UTF-8, a byte order mark allowed). A first row that is a header
is skipped, and the log says which columns it named: one whose names are common spellings
(:data:`HEADER_NAMES`: ``filename,label``, ``Image,Class,Split``, in any order), or one no data row
can be (its label is no other row's class and its path is no file); a header that is taken for data
would become a class of its own. Blank lines are skipped; fields are stripped of
surrounding spaces and may be quoted (a path holding a comma). A relative path is resolved against the
CSV's folder, so the CSV can travel with its images; an example is named in reports by its path as
written. Labels are class names; the classes are the sorted labels. The ``split`` column holds the
``data.split_names`` values (``train``, ``validation``, ``test`` by default; ``val`` also means validation);
without it, each image's split comes from a hash of its path as written, by ``data.split`` (stable when rows
are added). Two spellings of one file (``./x.png`` and ``x.png``) are one example (:mod:`.same_files`).

A row that cannot be read (another number of columns, an empty path or label, an unknown split, a path
listed twice) stops the scan, naming its line. A listed file that is missing, unreadable or not an
image is a bad file: skipped and listed, up to ``data.max_bad_fraction`` of a split.
"""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from finetune.config import DataConfig
from finetune.data.bad_files import drop_bad, file_problem
from finetune.data.examples import (SPLITS, Example, FileReader, LabelledImages, check_class_names, split_fractions,
                                     split_names, split_of)
from finetune.data.same_files import Listed, merge_same_files
from finetune.errors import FinetuneError

log = logging.getLogger(__name__)

# A header row's names for the path, label and split columns (case, spaces, _ and - ignored).
HEADER_NAMES = ({"path", "file", "filename", "filepath", "image", "imagepath", "imagefile"},
                {"label", "class", "classname", "category", "target"},
                {"split", "subset", "set", "partition"})
SHOWN = 10  # malformed rows listed in a message


@dataclass(frozen=True)
class Row:
    line: int  # its line in the CSV, from 1
    path: str  # as written
    label: str
    split: Optional[str]  # "train" | "val" | "test"; None: no split column


def scan_csv(root: Path, data_cfg: DataConfig) -> LabelledImages:
    """Read the rows of the CSV ``root``, assign each image its class and split, and drop bad files."""
    rows = read_rows(root, data_cfg)
    class_names = sorted({row.label for row in rows})
    check_class_names(class_names, f"The CSV data.root={str(root)!r}")
    label_of = {name: index for index, name in enumerate(class_names)}
    listed = [Listed(row.path, label_of[row.label], root.parent / row.path,  # an absolute row.path stays itself
                     f"line {row.line}: {row.path!r}", row.split) for row in rows]
    # ./imgs/x.png and imgs/x.png: one example, split by the spelling kept (finetune/data/same_files.py).
    kept, duplicates = merge_same_files(
        listed, root.parent, class_names.__getitem__, f"The CSV data.root={str(root)!r}",
        "List each image once (one row per file), with one label and one split.")
    candidates: dict[str, list[Example]] = {split: [] for split in SPLITS}
    fractions, max_pixels = split_fractions(data_cfg.split), data_cfg.max_pixels
    for item in kept:
        split = item.split or split_of(item.key, fractions)
        candidates[split].append(Example(item.key, item.label, str(item.path), _size(item.path)))
    examples, bad, scanned = drop_bad(candidates, lambda e: _problem(Path(e.reference), max_pixels),
                                      lambda e: e.key, data_cfg, f"The CSV data.root={str(root)!r}", lambda e: e.label)
    return LabelledImages("csv", root, class_names, examples, reader=FileReader(), bad=bad, scanned=scanned,
                          duplicates=duplicates)


def read_rows(path: Path, data_cfg: DataConfig) -> list[Row]:
    """The CSV's rows (a header row left out); FinetuneError naming each malformed one (up to :data:`SHOWN`)
    and the fix."""
    text = _read_text(path)
    split_of_name = split_names(data_cfg.split_names)
    reader = csv.reader(text.splitlines(keepends=True))
    parsed = [(reader.line_num, [field.strip() for field in fields]) for fields in reader]
    parsed = [(line, fields) for line, fields in parsed if any(fields)]  # blank lines
    # The column count is set by the first row of 2 or 3 columns (a header counts).
    columns = next((len(fields) for _, fields in parsed if len(fields) in (2, 3)), None)
    order = tuple(range(columns or 3))  # where path, label[, split] are
    if parsed and len(parsed[0][1]) == columns:
        header = _header_columns(parsed[0][1], [fields for _, fields in parsed[1:]], path.parent)
        if header is not None:
            order = header
            used = ", ".join(f"{what} from column {index + 1} ({parsed[0][1][index]!r})"
                             for what, index in zip(("paths", "labels", "splits"), order))
            log.info("The CSV %s: its first row (line %d) is a header: %s.", path, parsed[0][0], used)
            parsed = parsed[1:]
    rows: list[Row] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for line, fields in parsed:
        if len(fields) == columns:
            fields = [fields[index] for index in order]
        problem = _row_problem(fields, columns, split_of_name, first_line)
        if problem:
            problems.append(f"  line {line}: {problem}")
            continue
        first_line[fields[0]] = line
        rows.append(Row(line, fields[0], fields[1], split_of_name[fields[2]] if columns == 3 else None))
    if problems:
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        names = ", ".join(repr(name) for name in split_of_name)
        raise FinetuneError(
            f"The CSV data.root={str(path)!r} has {len(problems)} row(s) that cannot be read:\n" +
            "\n".join(problems[:SHOWN]) + more + "\nEach row must be path,label or, in every row, path,label,split "
            f"(split one of {names}: data.split_names), with a non-empty path and label, each path once; quote a "
            "field holding a comma. Fix or remove those rows.")
    return rows


def _header_columns(first: list[str], rest: list[list[str]], folder: Path) -> Optional[tuple[int, ...]]:
    """Where path, label[, split] are when the first row is a header, else None. A header names its
    columns (:data:`HEADER_NAMES`, in any order), or is a row no data row can be: its label names no
    other row's class and its path is no file."""
    names = [re.sub(r"[\s_-]", "", field.lower()) for field in first]
    found = [next((i for i, name in enumerate(names) if name in spellings), None) for spellings in HEADER_NAMES]
    wanted = found[:len(first)]
    if None not in wanted and len(set(wanted)) == len(first):
        return tuple(wanted)
    if first[1] not in {fields[1] for fields in rest if len(fields) > 1} and not (folder / first[0]).exists():
        return tuple(range(len(first)))
    return None


def _row_problem(fields: list[str], columns: Optional[int], split_of_name: dict[str, str],
                 first_line: dict[str, int]) -> Optional[str]:
    """Why one row (stripped fields) cannot be read, or None."""
    if len(fields) not in (2, 3):
        return f"{len(fields)} column(s), not 2 (path,label) or 3 (path,label,split): {','.join(fields)[:80]!r}"
    if len(fields) != columns:
        return f"{len(fields)} columns, but earlier rows have {columns}: {','.join(fields)[:80]!r}"
    if not fields[0]:
        return "an empty path"
    if not fields[1]:
        return f"an empty label for {fields[0]!r}"
    if columns == 3 and fields[2] not in split_of_name:
        return f"the split {fields[2]!r} for {fields[0]!r} is not one of data.split_names"
    if fields[0] in first_line:
        return f"{fields[0]!r} is listed again (first on line {first_line[fields[0]]})"
    return None


def _read_text(path: Path) -> str:
    """The CSV's text; FinetuneError for a CSV that is missing, a folder, unreadable or not UTF-8."""
    where = f"Config key 'data.root' points to {str(path)!r}"
    if path.is_dir():
        raise FinetuneError(f"{where}, a directory. For data.name=csv give the CSV file of path,label[,split] rows "
                            "(or use data=image_folder for a folder of root/<class_name>/<image> files).")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise FinetuneError(f"{where}, which does not exist. For data.name=csv give the CSV file of "
                            "path,label[,split] rows.") from None
    except OSError as error:
        raise FinetuneError(f"{where}, which cannot be read: {error.strerror or error}. Give a CSV file you can "
                            "read.") from None
    except UnicodeDecodeError as error:
        raise FinetuneError(f"{where}, which is not UTF-8 text (byte {error.start}). Save the CSV as UTF-8.") from None


def _problem(path: Path, max_pixels: int) -> Optional[str]:
    """Why a listed image cannot be trained on, or None."""
    if not path.exists():
        return "no such file"
    return file_problem(path, max_pixels)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return 0  # a bad file, named as one by the scan
