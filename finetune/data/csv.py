"""The ``csv`` source: a CSV file of ``path,label`` rows, with an optional third ``split`` column.

``data.root`` is the CSV file itself (UTF-8, a byte order mark allowed). A first row
``path,label[,split]`` is a header and skipped; blank lines are skipped; fields are stripped of
surrounding spaces and may be quoted (a path holding a comma). A relative path is resolved against the
CSV's folder, so the CSV can travel with its images; an example is named in reports by its path as
written. Labels are class names; the classes are the sorted labels. The ``split`` column holds the
``data.split_names`` values (``train``, ``validation``, ``test`` by default); without it, each image's
split comes from a hash of its path as written, by ``data.split`` (stable when rows are added).

A row that cannot be read (another number of columns, an empty path or label, an unknown split, a path
listed twice) stops the scan, naming its line. A listed file that is missing, unreadable or not an
image is a bad file: skipped and listed, up to ``data.max_bad_fraction`` of a split.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from finetune.config import DataConfig
from finetune.data.bad_files import drop_bad, file_problem
from finetune.data.examples import SPLITS, Example, FileReader, LabelledImages, check_class_names, split_of
from finetune.errors import FinetuneError

HEADER = ("path", "label", "split")
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
    candidates: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for row in rows:
        path = root.parent / row.path  # an absolute row.path stays itself
        split = row.split or split_of(row.path, data_cfg.split)
        candidates[split].append(Example(row.path, label_of[row.label], str(path), _size(path)))
    examples, bad, scanned = drop_bad(candidates, lambda e: _problem(Path(e.reference), data_cfg.max_pixels),
                                      lambda e: e.key, data_cfg, f"The CSV data.root={str(root)!r}")
    return LabelledImages("csv", root, class_names, examples, reader=FileReader(), bad=bad, scanned=scanned)


def read_rows(path: Path, data_cfg: DataConfig) -> list[Row]:
    """The CSV's rows; FinetuneError naming each malformed one (up to :data:`SHOWN`) and the fix."""
    text = _read_text(path)
    split_of_name = {getattr(data_cfg.split_names, split): split for split in SPLITS}
    reader = csv.reader(text.splitlines(keepends=True))
    rows: list[Row] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    columns: Optional[int] = None  # set by the header or the first row
    for fields in reader:
        line = reader.line_num
        fields = [field.strip() for field in fields]
        if not any(fields):
            continue
        if columns is None and len(fields) in (2, 3):
            columns = len(fields)
            if tuple(field.lower() for field in fields) == HEADER[:columns]:
                continue
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
    except OSError:
        return 0  # a bad file, named as one by the scan
