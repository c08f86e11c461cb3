"""Restoring as a first-class, explained step.

:func:`plan_restore` compares the checkpoint's variable list with the graph *before* any Saver
exists. The same :class:`RestorePlan` then drives the filtered Saver, the initializer of the
remaining variables (never the global initializer after a restore), the verification that the
loaded values equal the checkpoint's, and the report written beside the run.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from finetune.checkpoints import checkpoint_shapes
from finetune.compat import tf, tf1
from finetune.config import RestoreConfig
from finetune.errors import FinetuneError
from finetune.selection import select

log = logging.getLogger(__name__)


@dataclass
class RestorePlan:
    checkpoint: Optional[str]
    graph_shapes: dict[str, list[int]]  # every model variable of the graph
    checkpoint_shapes: dict[str, list[int]]
    restore: dict[str, str] = field(default_factory=dict)  # graph variable -> checkpoint entry
    trained: list[str] = field(default_factory=list)

    @property
    def initialise(self) -> list[str]:
        return [name for name in self.graph_shapes if name not in self.restore]

    @property
    def unused(self) -> list[str]:
        taken = set(self.restore.values())
        return sorted(name for name in self.checkpoint_shapes if name not in taken)


def plan_restore(graph_shapes: dict[str, list[int]], checkpoint: Optional[str], default_restore: set[str],
                 restore_cfg: RestoreConfig) -> RestorePlan:
    """Decide which graph variables come from ``checkpoint``; every other one is initialised.

    With an empty ``restore.include`` the candidates are ``default_restore`` (the backbone variables
    the cut depends on); ``restore.exclude`` always applies. A candidate missing from the checkpoint,
    a shape mismatch, or a plan that restores nothing is an error naming every offender.
    """
    if checkpoint is None:
        return RestorePlan(None, graph_shapes, {})
    in_checkpoint = checkpoint_shapes(checkpoint)
    if restore_cfg.include:
        candidates = select(graph_shapes, restore_cfg.include, restore_cfg.exclude, key="restore.include/exclude")
    else:
        defaults = [name for name in graph_shapes if name in default_restore]
        candidates = select(defaults, [""], restore_cfg.exclude, key="restore.exclude")
    missing = [name for name in candidates if name not in in_checkpoint]
    mismatched = [name for name in candidates if name in in_checkpoint and in_checkpoint[name] != graph_shapes[name]]
    if missing or mismatched:
        lines = [f"  missing in checkpoint: {name} {graph_shapes[name]}" for name in missing]
        lines += [f"  shape mismatch: {name} graph {graph_shapes[name]} vs checkpoint {in_checkpoint[name]}"
                  for name in mismatched]
        raise FinetuneError(
            f"restore.checkpoint={checkpoint!r} does not fit the graph: {len(missing)} variable(s) to restore are "
            f"missing and {len(mismatched)} have another shape. Check the backbone parameters (depth multiplier, "
            "image size, class count) against the checkpoint, or narrow 'restore.include'/'restore.exclude'.\n"
            + "\n".join(lines)
        )
    if not candidates:
        raise FinetuneError(
            f"Nothing to restore from restore.checkpoint={checkpoint!r}: no graph variable is selected "
            f"(restore.include={list(restore_cfg.include)}, restore.exclude={list(restore_cfg.exclude)}). "
            "Set restore.checkpoint=null to train from scratch, or widen the patterns."
        )
    return RestorePlan(checkpoint, graph_shapes, in_checkpoint, restore={name: name for name in candidates})


def apply_restore(sess: tf1.Session, plan: RestorePlan, variables: dict[str, tf.Variable]) -> None:
    """Initialise what is not restored, then restore through a Saver filtered to the plan."""
    sess.run(tf1.variables_initializer([variables[name] for name in plan.initialise]))
    if plan.restore:
        saver = tf1.train.Saver(var_list={ckpt: variables[name] for name, ckpt in plan.restore.items()})
        saver.restore(sess, plan.checkpoint)


def verify_restored(sess: tf1.Session, plan: RestorePlan, variables: dict[str, tf.Variable],
                    names: Optional[list[str]] = None) -> list[str]:
    """Names (of ``names``, default all restored) whose session value differs from the checkpoint's."""
    names = list(plan.restore) if names is None else names
    if not names:
        return []
    reader = tf.train.load_checkpoint(plan.checkpoint)
    values = sess.run({name: variables[name] for name in names})
    return [name for name in names if not np.array_equal(values[name], reader.get_tensor(plan.restore[name]))]


def _scope_counts(names: list[str], depth: int = 2) -> str:
    counts = Counter("/".join(name.split("/")[:depth]) for name in names)
    return ", ".join(f"{scope} {count}" for scope, count in sorted(counts.items())) or "none"


def summarize(plan: RestorePlan) -> str:
    """A few lines for the log: counts grouped by scope."""
    source = plan.checkpoint or "nothing (restore.checkpoint is null)"
    return (
        f"Restore from {source}\n"
        f"  restored    {len(plan.restore):4d}  ({_scope_counts(list(plan.restore), 1)})\n"
        f"  initialised {len(plan.initialise):4d}  ({_scope_counts(plan.initialise, 1)})\n"
        f"  trained     {len(plan.trained):4d}  ({_scope_counts(plan.trained, 1)})\n"
        f"  unused checkpoint entries {len(plan.unused)}  ({_scope_counts(plan.unused)})"
    )


def format_report(plan: RestorePlan, verified: Optional[bool]) -> str:
    """The full tables for ``restore_report.txt``: name, shape, and a note per row."""
    def table(title: str, note: str, rows: list[str]) -> list[str]:
        return [f"## {title} ({len(rows)})", note, *(rows or ["(none)"]), ""]

    trained = set(plan.trained)
    lines = [summarize(plan), ""]
    if verified is not None:
        lines += [f"Verification: every restored tensor equals the checkpoint's, bit for bit: {verified}", ""]
    lines += table("Restored", "graph name <- checkpoint entry, shape; '(trained)' if the optimizer also updates it",
                   [f"{name} <- {ckpt}\t{plan.graph_shapes[name]}{'  (trained)' if name in trained else ''}"
                    for name, ckpt in plan.restore.items()])
    lines += table("Initialised", "started from their initializers: the new head, optimizer state, anything not restored",
                   [f"{name}\t{plan.graph_shapes[name]}" for name in plan.initialise])
    lines += table("Trained", "the optimizer's var_list", [f"{name}\t{plan.graph_shapes[name]}" for name in plan.trained])
    lines += table("Unused checkpoint entries",
                   "in the checkpoint, taken by no graph variable: above the cut, the old classifier, optimizer slots, excluded",
                   [f"{name}\t{plan.checkpoint_shapes[name]}" for name in plan.unused])
    return "\n".join(lines)
