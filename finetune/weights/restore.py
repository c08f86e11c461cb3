"""Restoring as a first-class, explained step.

:func:`plan_restore` compares the weight source's tensor list (a checkpoint, a frozen ``.pb`` or an
``.npz``: see :mod:`finetune.weights.readers`) with the graph *before* any Saver exists. The same
:class:`RestorePlan` then drives the restore (a filtered Saver for checkpoints, fed initializers
for the others), the initializer of the remaining variables (never the global initializer after a
restore), the verification that the loaded values equal the source's bit for bit, and the report
written beside the run.
"""
from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from finetune.weights.readers import WeightSource, bit_identical, checksum, open_weights
from finetune.compat import tf, tf1
from finetune.config import RenameRule, RestoreConfig
from finetune.errors import FinetuneError, first_line
from finetune.seeding import seed_feed
from finetune.selection import compile_patterns, select

log = logging.getLogger(__name__)



@dataclass
class RestorePlan:
    checkpoint: Optional[str]  # the source's path (a checkpoint prefix, .pb or .npz); None: nothing restored
    graph_shapes: dict[str, list[int]]  # every model variable of the graph
    checkpoint_shapes: dict[str, list[int]]  # every tensor of the source, by its own name
    restore: dict[str, str] = field(default_factory=dict)  # graph variable -> source entry
    trained: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # selected, not in the source, initialised (on_missing=init)
    mismatched: dict[str, str] = field(default_factory=dict)  # graph -> source entry of another shape, initialised
    source: Optional[WeightSource] = None
    checksums: dict[str, str] = field(default_factory=dict)  # graph variable -> checksum of the verified value
    backbone: list[str] = field(default_factory=list)  # variables below the cut (the default candidates)

    @property
    def initialise(self) -> list[str]:
        return [name for name in self.graph_shapes if name not in self.restore]

    @property
    def unused(self) -> list[str]:
        taken = set(self.restore.values())
        return sorted(name for name in self.checkpoint_shapes if name not in taken)


def rename_entries(names: Iterable[str], rules: Sequence[RenameRule]) -> dict[str, list[str]]:
    """Graph name -> the source names that map to it under ``restore.rename``.

    The rule: each rule's ``pattern`` (a Python regex) is matched at the *start* of a source name
    (``re.match``, as for every pattern in the config); where it matches, the matched part is
    replaced by ``replacement`` (``\\1``, ``\\g<name>`` refer to its groups) and the rest of the name
    is kept. Rules apply in order, each to the result of the one before (a pipeline); a name that no
    rule matches keeps its name. A rule that matches no name at all is an error naming the rule.
    """
    current = {name: name for name in names}  # source name -> name so far
    for index, rule in enumerate(rules):
        key = f"restore.rename[{index}]"
        (pattern,) = compile_patterns([rule.pattern], f"{key}.pattern")
        hits = 0
        for source, name in current.items():
            match = pattern.match(name)
            if match is None:
                continue
            try:
                current[source] = match.expand(rule.replacement) + name[match.end():]
            except (re.error, IndexError) as error:
                raise FinetuneError(f"Config key '{key}.replacement' is {rule.replacement!r}: {error}.") from None
            hits += 1
        if not hits:
            example = ", ".join(sorted(current.values())[:3])
            raise FinetuneError(
                f"Config key '{key}' (pattern {rule.pattern!r}) matches the start of no checkpoint entry"
                f"{' after the rules before it' if index else ''}; entries look like: {example}."
            )
    renamed: dict[str, list[str]] = {}
    for source, name in current.items():
        renamed.setdefault(name, []).append(source)
    return renamed


def plan_restore(graph_shapes: dict[str, list[int]], checkpoint: Union[str, WeightSource, None],
                 default_restore: set[str], restore_cfg: RestoreConfig,
                 training_state: Iterable[str] = (), trained: Iterable[str] = ()) -> RestorePlan:
    """Decide which graph variables come from ``checkpoint``; every other one is initialised.

    ``checkpoint`` is a spec for :func:`finetune.weights.readers.open_weights` (a checkpoint prefix or
    directory, a ``.pb``, an ``.npz``) or an open :class:`WeightSource`. Its names pass through
    ``restore.rename`` first. With an empty ``restore.include`` the candidates are ``default_restore``
    (the backbone variables the cut depends on); ``restore.exclude`` always applies. A candidate
    missing from the source or of another shape is an error naming every offender, unless
    ``restore.on_missing`` / ``restore.on_shape_mismatch`` is ``init``; a plan restoring nothing fails.
    ``training_state`` (optimizer slots, moving averages, the global step) is never a candidate: a
    pretrained source has none of this run's, and ``restore.include`` patterns would select them too.
    ``trained``: the variables the phases train (for the report).
    """
    backbone = [name for name in graph_shapes if name in default_restore]
    if checkpoint is None:
        return RestorePlan(None, graph_shapes, {}, trained=list(trained), backbone=backbone)
    source = checkpoint if isinstance(checkpoint, WeightSource) else open_weights(checkpoint)
    in_source = source.shapes()
    renamed = rename_entries(in_source, restore_cfg.rename)
    if restore_cfg.include:
        weights = [name for name in graph_shapes if name not in set(training_state)]
        candidates = select(weights, restore_cfg.include, restore_cfg.exclude, key="restore.include/exclude")
    else:
        candidates = select(backbone, [""], restore_cfg.exclude, key="restore.exclude")
    _check_exclude_matches(restore_cfg.exclude, [*graph_shapes, *in_source])
    ambiguous = {name: renamed[name] for name in candidates if len(renamed.get(name, [])) > 1}
    if ambiguous:
        raise FinetuneError(
            f"restore.rename maps several entries of restore.checkpoint={source.path!r} onto one graph variable: "
            + "; ".join(f"{name} <- {', '.join(entries)}" for name, entries in ambiguous.items())
            + ". Make the patterns more specific (anchor them with the full scope)."
        )
    entry = {name: renamed[name][0] for name in candidates if name in renamed}
    missing = [name for name in candidates if name not in entry]
    mismatched = {name: entry[name] for name in candidates
                  if name in entry and in_source[entry[name]] != graph_shapes[name]}
    _check_fit(source, graph_shapes, missing, mismatched, restore_cfg)
    restore = {name: entry[name] for name in candidates if name in entry and name not in mismatched}
    if not restore:
        why = (f"{len(missing)} selected variable(s) are missing from it and {len(mismatched)} have another shape"
               if candidates else "no graph variable is selected")
        raise FinetuneError(
            f"Nothing to restore from restore.checkpoint={source.path!r}: {why} "
            f"(restore.include={list(restore_cfg.include)}, restore.exclude={list(restore_cfg.exclude)}, "
            f"{len(restore_cfg.rename)} restore.rename rule(s)). "
            "Set restore.checkpoint=null to train from scratch, or widen the patterns."
        )
    return RestorePlan(source.path, graph_shapes, in_source, restore=restore, trained=list(trained), missing=missing,
                       mismatched=mismatched, source=source, backbone=backbone)


def _check_exclude_matches(exclude: Sequence[str], names: list[str]) -> None:
    """FinetuneError for a ``restore.exclude`` pattern that matches no graph variable and no checkpoint
    entry: a typo there would silently restore what the user meant to keep out."""
    unused = [pattern.pattern for pattern in compile_patterns(exclude, "restore.exclude")
              if not any(pattern.match(name) for name in names)]
    if unused:
        raise FinetuneError(
            f"Config key 'restore.exclude' holds pattern(s) {unused} that match no variable of the graph nor entry "
            "of restore.checkpoint "
            f"(e.g. {', '.join(names[:3])}). Fix the spelling (patterns match the start of variable names, "
            "e.g. 'MobilenetV1/Logits/'), or drop them.")


def _check_fit(source: WeightSource, graph_shapes: dict[str, list[int]], missing: list[str],
               mismatched: dict[str, str], restore_cfg: RestoreConfig) -> None:
    """The error for the offenders whose policy is ``error``: every one named, with both shapes."""
    missing = missing if restore_cfg.on_missing == "error" else []
    mismatched = mismatched if restore_cfg.on_shape_mismatch == "error" else {}
    if not missing and not mismatched:
        return
    in_source = source.shapes()
    lines = [f"  missing in checkpoint: {name} {graph_shapes[name]}" for name in missing]
    lines += [f"  shape mismatch: {name} graph {graph_shapes[name]} vs checkpoint {in_source[entry]}"
              + (f" (entry {entry})" if entry != name else "") for name, entry in mismatched.items()]
    hints = []
    if missing:
        hints.append(f"Its entries look like: {', '.join(sorted(in_source)[:3])}; map other scopes onto the graph's "
                     "with restore.rename, or set restore.on_missing=init.")
    if mismatched:
        hints.append("Check the backbone parameters (depth multiplier, image size, class count) against the "
                     "checkpoint, or set restore.on_shape_mismatch=init.")
    raise FinetuneError(
        f"restore.checkpoint={source.path!r} ({source.kind.replace('_', ' ')}) does not fit the graph: "
        f"{len(missing)} variable(s) to restore are missing and {len(mismatched)} have another shape. "
        + " ".join(hints) + " Or narrow 'restore.include'/'restore.exclude'.\n" + "\n".join(lines)
    )


@dataclass(frozen=True)
class RestoreOps:
    """The graph's part of a restore plan, built with the rest of the graph (nothing is added once it runs):
    the initializer of every variable not restored, and a Saver filtered to the plan (a checkpoint) or
    the initializers of the restored variables, to be fed the source's values (a frozen graph, an .npz)."""

    plan: RestorePlan
    initialize: tf.Operation  # run with train.seed fed to seed: the initial values are drawn from it
    seed: tf.Tensor
    saver: Optional[tf1.train.Saver]
    fed: tuple[tuple[tf.Operation, str], ...]  # (a restored variable's initializer, its source entry)


def build_restore(plan: RestorePlan, variables: dict[str, tf.Variable]) -> RestoreOps:
    """The ops :func:`apply_restore` runs; FinetuneError when a restored tensor's dtype is not its variable's."""
    initialize = tf1.variables_initializer([variables[name] for name in plan.initialise])
    if not plan.restore:
        return RestoreOps(plan, initialize, seed_feed(), None, ())
    source = plan.source or open_weights(plan.checkpoint)
    wrong = {name: (variables[name].dtype.base_dtype.name, source.dtypes()[entry])
             for name, entry in plan.restore.items()
             if variables[name].dtype.base_dtype.name != source.dtypes()[entry]}
    if wrong:
        raise FinetuneError(
            f"restore.checkpoint={source.path!r} holds {len(wrong)} tensor(s) of another dtype than the graph's "
            "variables (values are restored as stored, never cast):\n"
            + "\n".join(f"  dtype mismatch: {name} graph {ours} vs checkpoint {theirs}"
                        for name, (ours, theirs) in wrong.items())
        )
    if source.kind == "checkpoint":
        saver = tf1.train.Saver(var_list={entry: variables[name] for name, entry in plan.restore.items()})
        return RestoreOps(plan, initialize, seed_feed(), saver, ())
    return RestoreOps(plan, initialize, seed_feed(), None,
                      tuple((variables[name].initializer, entry) for name, entry in plan.restore.items()))


def apply_restore(sess: tf1.Session, ops: RestoreOps, seed: int = 0) -> None:
    """Initialise what is not restored, drawing from ``seed`` (``train.seed``), then restore: through the
    filtered Saver from a checkpoint, or the variables' initializers fed the source's values for a frozen graph
    or an ``.npz``."""
    sess.run(ops.initialize, {ops.seed: seed})
    plan = ops.plan
    if not plan.restore:
        return
    source = plan.source or open_weights(plan.checkpoint)
    if ops.saver is not None:
        with damaged_source(source.path):
            ops.saver.restore(sess, source.path)
        return
    with damaged_source(source.path):
        values = source.read(plan.restore.values())
    # What Variable.load does, in one run: the initializer's value input is fed the stored array.
    sess.run([op for op, _ in ops.fed], {op.inputs[1]: values[entry] for op, entry in ops.fed})


@contextlib.contextmanager
def damaged_source(path: str) -> Iterator[None]:
    """A read error of the weights (a cut-short or corrupted ``.data`` passes the index check and fails
    only here) as a FinetuneError naming the file."""
    try:
        yield
    except tf.errors.OpError as error:
        raise FinetuneError(
            f"restore.checkpoint={path!r} cannot be read: its data is damaged or cut short ({type(error).__name__}: "
            f"{first_line(error)}). Download or copy it again (all of its .index and .data-* files), or point "
            "restore.checkpoint at another checkpoint.") from None


def verify_restored(sess: tf1.Session, plan: RestorePlan, variables: dict[str, tf.Variable],
                    names: Optional[list[str]] = None) -> list[str]:
    """Names (of ``names``, default all restored) whose session value is not bit-identical to the source's.

    Records the checksum of every value that matches in ``plan.checksums`` (for the report).
    """
    names = list(plan.restore) if names is None else names
    if not names:
        return []
    source = plan.source or open_weights(plan.checkpoint)
    with damaged_source(source.path):
        stored = source.read({plan.restore[name] for name in names})
    check_finite(stored, source.path)
    values = sess.run({name: variables[name] for name in names})
    differ = []
    for name in names:
        if bit_identical(values[name], stored[plan.restore[name]]):
            plan.checksums[name] = checksum(values[name])
        else:
            differ.append(name)
    return differ


def non_finite(tensors: dict[str, object]) -> dict[str, tuple[int, int]]:
    """Name -> (values that are NaN or infinite, values) for each floating-point tensor holding any."""
    found = {}
    for name, value in sorted(tensors.items()):
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.inexact):
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                found[name] = (bad, int(array.size))
    return found


def check_finite(tensors: dict[str, object], path: str, shown: int = 5) -> None:
    """FinetuneError naming the tensors of ``path`` that hold NaN or infinite values: restored, they make
    the first step's loss NaN (and the first histogram summary fail), whatever the rest of the run does."""
    found = non_finite(tensors)
    if not found:
        return
    listed = "; ".join(f"{name} ({bad:,} of {size:,} values)" for name, (bad, size) in list(found.items())[:shown])
    more = f"; and {len(found) - shown} more" if len(found) > shown else ""
    raise FinetuneError(
        f"restore.checkpoint={path!r} holds NaN or infinite values in {len(found)} tensor(s): {listed}{more}. "
        "It was saved by a run whose training diverged; point restore.checkpoint at another checkpoint (an earlier "
        "one of that run, or the published weights).")


def _scope_counts(names: list[str], depth: int = 2) -> str:
    counts = Counter("/".join(name.split("/")[:depth]) for name in names)
    return ", ".join(f"{scope} {count}" for scope, count in sorted(counts.items())) or "none"


def untouched_backbone_warning(plan: RestorePlan) -> Optional[str]:
    """A one-line warning when the backbone is neither restored nor trained, else None.

    Its random initial weights would then stay as they are. "Trained" means in the optimizer's
    var_list (``plan.trained``); a backbone without variables (an imported frozen graph) never warns.
    """
    backbone = set(plan.backbone)
    if not backbone or backbone & set(plan.restore) or backbone & set(plan.trained):
        return None
    source = f"from {plan.checkpoint}" if plan.checkpoint else "(restore.checkpoint is null)"
    return (f"Nothing is restored into the backbone {source} and it is frozen (optimizer.var_list trains none of "
            "its variables), so the head trains on random features. Restore weights with "
            "restore.checkpoint=PATH|zoo:NAME|demo, or pick an experiment such as experiment=mobilenet_head.")


def summarize(plan: RestorePlan, warn: bool = True) -> str:
    """A few lines for the log: counts grouped by scope, then the untouched-backbone warning if ``warn``."""
    source = plan.source.describe() if plan.source else plan.checkpoint or "nothing (restore.checkpoint is null)"
    instead = len(plan.missing) + len(plan.mismatched)
    return (
        f"Restore from {source}\n"
        f"  restored    {len(plan.restore):4d}  ({_scope_counts(list(plan.restore), 1)})\n"
        f"  initialised {len(plan.initialise):4d}  ({_scope_counts(plan.initialise, 1)})"
        + (f"\n    of which {len(plan.missing)} missing in the checkpoint, {len(plan.mismatched)} of another "
           "shape (restore.on_missing / restore.on_shape_mismatch = init)" if instead else "") + "\n"
        f"  trained     {len(plan.trained):4d}  ({_scope_counts(plan.trained, 1)})\n"
        f"  unused checkpoint entries {len(plan.unused)}  ({_scope_counts(plan.unused)})"
        + (f"\nWARNING: {warning}" if warn and (warning := untouched_backbone_warning(plan)) else "")
    )


def format_report(plan: RestorePlan, verified: Optional[bool]) -> str:
    """The full tables for ``restore_report.txt``: name, shape, and a note per row."""
    def table(title: str, note: str, rows: list[str]) -> list[str]:
        return [f"## {title} ({len(rows)})", note, *(rows or ["(none)"]), ""]

    def initialised_note(name: str) -> str:
        if name in plan.mismatched:
            theirs = plan.checkpoint_shapes[plan.mismatched[name]]
            return f"  (shape mismatch: checkpoint {theirs}, on_shape_mismatch=init)"
        return "  (missing in checkpoint, on_missing=init)" if name in plan.missing else ""

    trained = set(plan.trained)
    lines = [summarize(plan), ""]
    if verified:
        lines += [f"verified: {len(plan.checksums or plan.restore)} tensors bit-identical to {plan.checkpoint} "
                  "(sha256 of each value, first 12 hex digits, in the Restored table)", ""]
    elif verified is not None:
        lines += [f"NOT verified: restored values differ from {plan.checkpoint}", ""]
    lines += table("Restored", "graph name <- checkpoint entry, shape, sha256[:12]; '(trained)' if the optimizer "
                   "also updates it",
                   [f"{name} <- {entry}\t{plan.graph_shapes[name]}\t{plan.checksums.get(name, '-')}"
                    f"{'  (trained)' if name in trained else ''}" for name, entry in plan.restore.items()])
    lines += table("Initialised",
                   "started from their initializers: the new head, optimizer state, anything not restored",
                   [f"{name}\t{plan.graph_shapes[name]}{initialised_note(name)}" for name in plan.initialise])
    lines += table("Trained", "the optimizer's var_list",
                   [f"{name}\t{plan.graph_shapes[name]}" for name in plan.trained])
    lines += table("Unused checkpoint entries",
                   "in the checkpoint, taken by no graph variable: above the cut, the old classifier, "
                   "optimizer slots, excluded",
                   [f"{name}\t{plan.checkpoint_shapes[name]}" for name in plan.unused])
    return "\n".join(lines)
