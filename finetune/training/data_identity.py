"""What a run was trained on, held to on resume: its classes and each split's examples.

A run directory's ``splits.json`` (written when the run starts, :meth:`LabelledImages.splits_record`)
records the classes in label order, the examples of each split and the file list's sha256. A resumed
run compares the data its source gives now with that record before anything is written:

- other classes (added, removed, renamed, reordered) always refuse: the checkpoint's outputs would mean
  other classes (a renamed class folder swaps labels without a word);
- other examples (added, removed, moved between splits, or replaced in place) refuse too, naming the
  counts and a few examples, unless ``resume=accept_data_change``: for a user who added images on purpose,
  the run continues and the change is recorded in run.json's entry for this start.

A run directory of an older version, without ``splits.json`` or without the file list's sha256 in it,
resumes as before.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from finetune.data.examples import SPLITS, LabelledImages
from finetune.errors import FinetuneError

log = logging.getLogger(__name__)

ACCEPT = "accept_data_change"  # the resume policy that continues on changed examples
EXAMPLES_NAMED = 3  # examples named per kind of change in a message


def _some(items: list[str]) -> str:
    named = ", ".join(items[:EXAMPLES_NAMED])
    return f"{named}, ..." if len(items) > EXAMPLES_NAMED else named


def class_change(saved: list[str], now: list[str]) -> Optional[str]:
    """How the class list changed, in words (None: the same names in the same order)."""
    if saved == now:
        return None
    added = [name for name in now if name not in saved]
    removed = [name for name in saved if name not in now]
    if not added and not removed:
        return f"the same classes in another order (then: {', '.join(saved)}; now: {', '.join(now)})"
    parts = []
    if len(added) == len(removed) == 1:
        parts.append(f"class {removed[0]!r} is gone and {added[0]!r} is new (renamed?)")
    else:
        parts += [f"added {', '.join(map(repr, added))}"] if added else []
        parts += [f"removed {', '.join(map(repr, removed))}"] if removed else []
    return "; ".join(parts)


def example_changes(saved: dict[str, Any], data: LabelledImages) -> dict[str, Any]:
    """Counts and examples of what changed between ``saved`` (splits.json) and ``data``: examples added,
    removed, moved to another split, and whether the file list's hash differs beyond those."""
    then = {key: split for split in SPLITS for key in saved["splits"].get(split, [])}
    now = {example.key: split for split in SPLITS for example in data.examples[split]}
    added = sorted(key for key in now if key not in then)
    removed = sorted(key for key in then if key not in now)
    moved = sorted(f"{key} ({then[key]} -> {now[key]})" for key in now if key in then and then[key] != now[key])
    return {"added": added, "removed": removed, "moved": moved,
            "file_list_sha256": {"then": saved.get("file_list_sha256"), "now": data.file_list_sha256()}}


def describe(changes: dict[str, Any]) -> str:
    """The changes in one sentence's worth of clauses."""
    parts = [f"{len(changes[kind])} {kind} (e.g. {_some(changes[kind])})"
             for kind in ("added", "removed", "moved") if changes[kind]]
    if not parts:
        parts.append("the same examples in the same splits, but the file list's sha256 (names, labels, sizes) "
                     "differs: an image was replaced or relabelled in place")
    return "; ".join(parts)


def check_same_data(splits_file: Path, data: LabelledImages, resume: str) -> Optional[dict[str, Any]]:
    """Before a resume: refuse data other than the run was trained on (FinetuneError, one paragraph).
    Returns None when nothing changed, or, with ``resume=accept_data_change``, the change (counts and a few
    examples) for run.json."""
    if not splits_file.is_file():
        return None
    saved = json.loads(splits_file.read_text())
    if "file_list_sha256" not in saved:  # written by an older version: nothing to compare with
        return None
    run_dir = splits_file.parent
    classes = class_change(saved["classes"], list(data.class_names))
    if classes is not None:
        raise FinetuneError(
            f"The run directory {run_dir} was trained on other classes than {data.root} gives now: {classes}. Its "
            "checkpoints' outputs would mean other classes (labels swapped), so it cannot be resumed on this data. "
            "Nothing was changed. Put the class folders (or labels) back as they were, or train on the new classes "
            "in a new run directory (hydra.run.dir=...).")
    changes = example_changes(saved, data)
    hashes = changes["file_list_sha256"]
    if not (changes["added"] or changes["removed"] or changes["moved"]) and hashes["then"] == hashes["now"]:
        return None  # (the hash does not see splits: a moved example changes membership only)
    summary = describe(changes)
    if resume != ACCEPT:
        raise FinetuneError(
            f"The examples of {data.root} changed since the run directory {run_dir} started training on them: "
            f"{summary}. Resuming would train and evaluate on other data than its first part did (an image that "
            "moves between splits can be trained on and then tested on). Nothing was changed. Put the data back, "
            f"start a new run directory (hydra.run.dir=...), or, to continue on the changed data on purpose, "
            f"resume={ACCEPT} (run.json records the change).")
    log.warning("Resuming on changed data (resume=%s): %s. run.json records the change.", ACCEPT, summary)
    return {"added": len(changes["added"]), "removed": len(changes["removed"]), "moved": len(changes["moved"]),
            "examples": {kind: changes[kind][:EXAMPLES_NAMED] for kind in ("added", "removed", "moved")},
            "file_list_sha256": changes["file_list_sha256"]}
