"""k-fold cross-validation over the training and validation examples (``data.folds``, ``data.fold``).

The pool is the training and validation splits of the source together; the test split stays as the
source made it, untouched by every fold. The pool is cut into ``k`` folds class by class: each class's
examples are ordered by a hash of their key (so the folds depend on the set of examples, not on the
order a source lists them) and cut into ``k`` runs of consecutive examples whose lengths differ by at
most one, so each fold holds each class within one example of its share (the
classes' first runs go to different folds, which evens out the folds' sizes). Fold ``i`` is the validation
split; the other ``k - 1`` folds train. A sweep over ``data.fold='range(k)'`` (and ``train.seed``) is a
full (repeated) cross-validation, every job on the same folds.

Cutting runs rather than dealing round-robin keeps the folds nearly stable as files are added: an added
image shifts each cut of its class by at most one place, so at most ``k - 1`` other images of its class
move, each to a neighbouring fold (dealing would move every image hashed after it). Exact stratification
and perfect stability cannot both hold; compare runs on one file list (``run.json``'s
``file_list_sha256``).
"""
from __future__ import annotations

import dataclasses
import hashlib

from finetune.config import DataConfig
from finetune.data.examples import Example, LabelledImages
from finetune.errors import FinetuneError


def _order(example: Example) -> bytes:
    return hashlib.sha1(example.key.encode("utf-8", "surrogateescape")).digest()


def assign_folds(pool: list[Example], folds: int) -> list[int]:
    """The fold of each example of ``pool`` (in its order): per class, runs of the hash order."""
    position = {id(example): index for index, example in enumerate(pool)}
    assigned = [0] * len(pool)
    for label in sorted({example.label for example in pool}):
        members = sorted((example for example in pool if example.label == label), key=_order)
        for rank, example in enumerate(members):
            # run f holds the ranks f*n/k <= r < (f+1)*n/k: floor(n/k) or ceil(n/k) examples. Each class starts
            # its runs at another fold, so the classes' longer runs do not all land in the same folds.
            assigned[position[id(example)]] = (rank * folds // len(members) + label) % folds
    return assigned


def apply_fold(data: LabelledImages, data_cfg: DataConfig) -> LabelledImages:
    """``data`` with fold ``data.fold`` of ``data.folds`` as its validation split and the other folds as its
    training split; unchanged when ``data.folds`` is null. FinetuneError when a class of the pool has fewer
    examples than folds (a fold would hold none of it)."""
    folds, fold = data_cfg.folds, data_cfg.fold
    if not folds:
        return data
    pool = data.examples["train"] + data.examples["val"]
    counts = {label: sum(example.label == label for example in pool) for label in range(len(data.class_names))}
    small = {data.class_names[label]: count for label, count in counts.items() if count < folds}
    if small:
        shown = ", ".join(f"{name} ({count})" for name, count in list(small.items())[:5])
        raise FinetuneError(
            f"Config key 'data.folds' is {folds}, but the training and validation examples of "
            f"data.root={str(data.root)!r} hold fewer than {folds} of some class: {shown}. Every fold must hold "
            f"each class: use data.folds={max(2, min(counts.values()))} or fewer, or add images.")
    assigned = assign_folds(pool, folds)
    examples = {**data.examples,
                "train": [example for example, which in zip(pool, assigned) if which != fold],
                "val": [example for example, which in zip(pool, assigned) if which == fold]}
    return dataclasses.replace(data, examples=examples, fold=(fold, folds))
