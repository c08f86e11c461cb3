"""Repeats grouped into configurations, each metric's mean and interval per group, and groups compared with a
baseline on the repeats they share.

A group is the set of jobs whose overrides are equal once the *repeat keys* (``train.seed`` and
``data.fold`` by default) are left out: the repeats of one configuration. Within a group only finished
jobs count; the others are listed with their state. Two groups are paired on the values of the repeat
keys (the same seed and fold on both sides); pairs missing on one side are left out, and said so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from finetune.analysis import statistics
from finetune.analysis.runs import Job
from finetune.errors import FinetuneError, closest

REPEAT_KEYS = ("train.seed", "data.fold")
# Metrics reported by default, those any job has; whether a higher value is better.
METRICS = ("val.accuracy", "val.balanced_accuracy", "val.macro_f1", "val.loss", "test.accuracy",
           "test.balanced_accuracy", "test.macro_f1", "test.loss", "val.tta.accuracy", "test.tta.accuracy")
HIGHER_IS_BETTER = {"loss": False}  # by the metric's last part; the rest: higher is better


def higher_is_better(metric: str) -> bool:
    return HIGHER_IS_BETTER.get(metric.rsplit(".", 1)[-1], True)


@dataclass
class Group:
    """The repeats of one configuration."""

    label: str  # its overrides that vary between groups, KEY=VALUE joined by spaces ("(all jobs)" if none)
    overrides: dict[str, Optional[str]]
    jobs: list[Job] = field(default_factory=list)

    @property
    def finished(self) -> list[Job]:
        return [job for job in self.jobs if job.finished]

    @property
    def unfinished(self) -> list[Job]:
        return [job for job in self.jobs if not job.finished]

    def folds(self) -> Optional[int]:
        """k when the group's repeats are folds of k-fold cross-validation, else None."""
        found = {job.folds() for job in self.finished}
        return next(iter(found)) if len(found) == 1 else None


def repeat_key(job: Job, repeat_keys: Sequence[str]) -> tuple:
    """The values of the repeat keys in a job's overrides (what pairs it with its counterpart in another group)."""
    return tuple(job.overrides.get(key) for key in repeat_keys)


def group_jobs(jobs: Sequence[Job], repeat_keys: Sequence[str] = REPEAT_KEYS) -> list[Group]:
    """The jobs grouped by their overrides without the repeat keys, in the order groups are first seen."""
    configs = [{key: value for key, value in job.overrides.items() if key not in repeat_keys} for job in jobs]
    keys = list(dict.fromkeys(key for config in configs for key in config))
    varying = [key for key in keys if len({config.get(key) for config in configs}) > 1]
    groups: dict[tuple, Group] = {}
    for job, config in zip(jobs, configs):
        identity = tuple(config.get(key) for key in varying)
        if identity not in groups:
            label = " ".join(f"{key}={value}" for key, value in zip(varying, identity) if value is not None)
            groups[identity] = Group(label or "(all jobs)", dict(zip(varying, identity)))
        groups[identity].jobs.append(job)
    return list(groups.values())


def present_metrics(jobs: Sequence[Job], wanted: Optional[Sequence[str]] = None) -> list[str]:
    """``wanted`` (default :data:`METRICS`) that at least one finished job reports."""
    return [metric for metric in (wanted or METRICS) if any(job.value(metric) is not None for job in jobs)]


def estimates(group: Group, metrics: Sequence[str]) -> dict[str, Optional[statistics.Estimate]]:
    """Each metric's estimate over the group's finished jobs (None when none reports it)."""
    found = {}
    for metric in metrics:
        values = [job.value(metric) for job in group.finished if job.value(metric) is not None]
        found[metric] = statistics.estimate(values, folds=group.folds()) if values else None
    return found


def find_group(groups: Sequence[Group], name: str) -> Group:
    """The group ``name`` names: its label, or KEY=VALUE overrides (space-separated) that only it has."""
    wanted = set(name.split())
    matches = [group for group in groups if group.label == name] or [
        group for group in groups if wanted <= {f"{key}={value}" for key, value in group.overrides.items()}]
    if len(matches) == 1:
        return matches[0]
    labels = [group.label for group in groups]
    what = "names no group" if not matches else f"names {len(matches)} groups"
    raise FinetuneError(f"--baseline {name!r} {what}. "
                        f"Did you mean {' or '.join(repr(label) for label in closest(name, labels, 3))}? "
                        f"Groups: {'; '.join(labels)}.")


@dataclass(frozen=True)
class GroupComparison:
    """One group against the baseline on one metric, over the repeats both have."""

    group: str
    metric: str
    comparison: statistics.Comparison
    holm_t_pvalue: Optional[float] = None
    holm_wilcoxon_pvalue: Optional[float] = None
    unpaired: int = 0  # finished repeats of either side without a counterpart


def compare(groups: Sequence[Group], baseline: Group, metrics: Sequence[str],
            repeat_keys: Sequence[str] = REPEAT_KEYS) -> list[GroupComparison]:
    """Every other group against ``baseline`` on each metric, paired by repeat; the p-values of each metric
    corrected over the groups compared (Holm)."""
    found: list[GroupComparison] = []
    for metric in metrics:
        rows = []
        for group in groups:
            if group is baseline:
                continue
            base = {repeat_key(job, repeat_keys): job.value(metric) for job in baseline.finished}
            other = {repeat_key(job, repeat_keys): job.value(metric) for job in group.finished}
            shared = [key for key in base if key in other and base[key] is not None and other[key] is not None]
            if not shared:
                continue
            folds = baseline.folds() if baseline.folds() == group.folds() else None
            comparison = statistics.paired([base[key] for key in shared], [other[key] for key in shared], folds)
            rows.append(GroupComparison(group.label, metric, comparison,
                                        unpaired=len(base) + len(other) - 2 * len(shared)))
        t_adjusted = statistics.holm([row.comparison.t_pvalue for row in rows])
        w_adjusted = statistics.holm([row.comparison.wilcoxon_pvalue for row in rows])
        found += [GroupComparison(row.group, row.metric, row.comparison, t, w, row.unpaired)
                  for row, t, w in zip(rows, t_adjusted, w_adjusted)]
    return found


@dataclass(frozen=True)
class PredictionComparison:
    """McNemar's exact test between a group and the baseline on per-example predictions of one split, pooled
    over the repeats both have (each example counted once per repeat)."""

    group: str
    split: str
    repeats: int
    test: statistics.McNemar
    holm_pvalue: Optional[float] = None


def compare_predictions(groups: Sequence[Group], baseline: Group, split: str = "test",
                        repeat_keys: Sequence[str] = REPEAT_KEYS) -> list[PredictionComparison]:
    """McNemar's exact test of every other group against ``baseline`` on ``split``'s examples, Holm-corrected."""
    rows = []
    base = {repeat_key(job, repeat_keys): job.predictions(split) for job in baseline.finished}
    for group in groups:
        if group is baseline:
            continue
        first, second, repeats = [], [], 0
        for job in group.finished:
            theirs, ours = base.get(repeat_key(job, repeat_keys)), job.predictions(split)
            shared = sorted(set(theirs or {}) & set(ours))
            if shared:
                repeats += 1
                first += [theirs[key] for key in shared]
                second += [ours[key] for key in shared]
        if repeats:
            rows.append(PredictionComparison(group.label, split, repeats, statistics.mcnemar_exact(first, second)))
    adjusted = statistics.holm([row.test.pvalue for row in rows])
    return [PredictionComparison(row.group, row.split, row.repeats, row.test, p) for row, p in zip(rows, adjusted)]
