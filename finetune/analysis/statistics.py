"""Statistics over repeated runs: a mean with its spread and 95% interval, and paired comparisons.

Repeats are runs of one configuration that differ only in ``train.seed`` and/or ``data.fold``.

- Over seeds alone, the repeats are independent draws: Student's t interval, ``mean ± t(n-1) s/sqrt(n)``.
- Over folds (k-fold cross-validation, possibly repeated with several seeds), they are not: every two
  folds share most of their training data, so the t interval is too narrow. We use the corrected
  resampled t of Nadeau and Bengio (2003), recommended for (repeated) k-fold by Bouckaert and Frank
  (2004): the variance of the mean is ``(1/n + n_val/n_train) s^2``, with ``n_val/n_train = 1/(k-1)``.
- A paired comparison takes, per repeat (same seed and fold), the difference between two
  configurations; its interval and t-test follow the same rule; the Wilcoxon signed-rank test makes no
  normality assumption. McNemar's exact test compares two sets of per-example predictions on the same
  test images. Several comparisons against one baseline are corrected with Holm's step-down method.

The distributions are scipy's; nothing here re-implements one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A metric over n repeats: mean, sample standard deviation, and the 95% interval of the mean (None
    for n = 1, with ``note`` saying so)."""

    n: int
    mean: float
    std: Optional[float]
    low: Optional[float]
    high: Optional[float]
    method: str  # "t" (independent repeats), "corrected t (k=K)" (folds), or "none"
    note: str = ""

    @property
    def half_width(self) -> Optional[float]:
        return None if self.low is None else (self.high - self.low) / 2


def _variance_factor(n: int, folds: Optional[int]) -> float:
    """What s^2 is multiplied by for the variance of the mean: 1/n, or Nadeau and Bengio's 1/n + 1/(k-1)."""
    return 1 / n + (1 / (folds - 1) if folds else 0.0)


def _method(folds: Optional[int]) -> str:
    return f"corrected t (k={folds})" if folds else "t"


def estimate(values: Sequence[float], folds: Optional[int] = None, confidence: float = CONFIDENCE) -> Estimate:
    """The mean of ``values`` and its interval; ``folds``: the repeats are folds of k-fold cross-validation."""
    values = np.asarray(list(values), dtype=np.float64)
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = float(values.mean())
    if n == 1:
        return Estimate(1, mean, None, None, None, "none", "n=1: one run gives no interval; repeat it "
                                                           "(train.seed=1,2,3 ...) to get one")
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * math.sqrt(_variance_factor(n, folds)) * std
    return Estimate(n, mean, std, mean - half, mean + half, _method(folds))


@dataclass(frozen=True)
class Comparison:
    """``other - baseline`` over paired repeats: the mean difference, its interval, and the tests' p-values."""

    n: int
    mean_difference: float
    low: Optional[float]
    high: Optional[float]
    t_pvalue: Optional[float]
    wilcoxon_pvalue: Optional[float]
    method: str
    note: str = ""


def paired(baseline: Sequence[float], other: Sequence[float], folds: Optional[int] = None,
           confidence: float = CONFIDENCE) -> Comparison:
    """Compare two configurations on the same repeats (``baseline[i]`` and ``other[i]`` share seed and fold)."""
    a, b = np.asarray(list(baseline), np.float64), np.asarray(list(other), np.float64)
    if len(a) != len(b) or not len(a):
        raise ValueError("paired values must be two non-empty lists of one length")
    differences = b - a
    n, mean = len(differences), float(differences.mean())
    if n == 1:
        return Comparison(1, mean, None, None, None, None, "none", "n=1: one pair gives no interval or test")
    std = float(differences.std(ddof=1))
    scale = math.sqrt(_variance_factor(n, folds)) * std
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * scale
    if scale == 0:  # every difference the same: a t-test is undefined; equal runs differ in nothing
        t_pvalue = 1.0 if mean == 0 else 0.0
    else:
        t_pvalue = float(2 * stats.t.sf(abs(mean / scale), n - 1))
    return Comparison(n, mean, mean - half, mean + half, t_pvalue, wilcoxon_pvalue(differences), _method(folds))


def wilcoxon_pvalue(differences: Sequence[float]) -> Optional[float]:
    """The Wilcoxon signed-rank test's two-sided p-value (exact for small n, as scipy chooses); 1.0 when every
    difference is zero (nothing to rank)."""
    differences = np.asarray(list(differences), np.float64)
    if not np.any(differences):
        return 1.0
    return float(stats.wilcoxon(differences).pvalue)


@dataclass(frozen=True)
class McNemar:
    """Two classifiers on the same examples: ``only_first`` right where the second is wrong, ``only_second``
    the other way, and the exact (binomial) two-sided p-value of McNemar's test."""

    examples: int
    only_first: int
    only_second: int
    pvalue: float


def mcnemar_exact(first_correct: Sequence[bool], second_correct: Sequence[bool]) -> McNemar:
    """McNemar's exact test on paired per-example outcomes (the discordant pairs under a fair coin)."""
    first, second = np.asarray(list(first_correct), bool), np.asarray(list(second_correct), bool)
    if first.shape != second.shape:
        raise ValueError("McNemar's test needs the same examples on both sides")
    only_first, only_second = int(np.sum(first & ~second)), int(np.sum(second & ~first))
    discordant = only_first + only_second
    pvalue = 1.0 if discordant == 0 else float(stats.binomtest(only_first, discordant, 0.5).pvalue)
    return McNemar(len(first), only_first, only_second, pvalue)


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjustment of several p-values (None stays None): the i-th smallest of m is multiplied
    by (m - i), the results made non-decreasing in that order and capped at 1."""
    present = sorted((p, index) for index, p in enumerate(pvalues) if p is not None)
    adjusted: list[Optional[float]] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, index) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[index] = running
    return adjusted
