"""The groups' statistics and the comparisons as tables: Markdown to read, CSV to compute with, LaTeX to
put in a thesis (booktabs; mean ± half the 95% interval; the best mean of each column in bold)."""
from __future__ import annotations

import csv
import io
from typing import Optional, Sequence

from finetune.analysis.groups import Group, GroupComparison, PredictionComparison, higher_is_better
from finetune.analysis.statistics import Estimate

Estimates = dict[str, dict[str, Optional[Estimate]]]  # group label -> metric -> its estimate


def _cell(estimate: Optional[Estimate], digits: int = 3) -> str:
    if estimate is None:
        return "-"
    if estimate.half_width is None:
        return f"{estimate.mean:.{digits}f} (n=1)"
    return f"{estimate.mean:.{digits}f} ± {estimate.half_width:.{digits}f}"


def _best(groups: Sequence[Group], estimates: Estimates, metric: str) -> Optional[str]:
    values = {group.label: estimates[group.label][metric].mean for group in groups
              if estimates[group.label].get(metric) is not None}
    if len(values) < 2:
        return None
    pick = max if higher_is_better(metric) else min
    return pick(values, key=values.get)


def _md(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def methods(groups: Sequence[Group]) -> str:
    """One sentence on the intervals: which method each group's used."""
    folds = sorted({group.folds() for group in groups if group.folds()})
    text = ("Mean ± half the 95% confidence interval of the mean over each group's finished repeats: Student's t "
            "over independent repeats (seeds)")
    if folds:
        text += (f"; over the folds of k-fold cross-validation (k={', '.join(map(str, folds))}) the corrected "
                 "resampled t of Nadeau and Bengio (2003), whose variance (1/n + 1/(k-1)) s² allows for folds "
                 "sharing their training data")
    return text + ". n=1: one run, no interval."


def groups_markdown(groups: Sequence[Group], estimates: Estimates, metrics: Sequence[str]) -> str:
    header = ["group", "n", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    best = {metric: _best(groups, estimates, metric) for metric in metrics}
    for group in groups:
        cells = [_md(group.label), str(len(group.finished))]
        for metric in metrics:
            text = _cell(estimates[group.label].get(metric))
            cells.append(f"**{text}**" if best[metric] == group.label else text)
        lines.append("| " + " | ".join(cells) + " |")
    notes = [methods(groups)]
    for group in groups:
        for job in group.unfinished:
            notes.append(f"Not counted: {job.label} ({group.label}) is {job.status}"
                         + (f": {job.error}" if job.error else "") + ".")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def groups_csv(groups: Sequence[Group], estimates: Estimates, metrics: Sequence[str]) -> str:
    """One row per group: ``n`` and, per metric, ``M.n``, ``M.mean``, ``M.std``, ``M.ci95_low``, ``M.ci95_high``
    (empty where undefined), and ``M.interval`` (the method)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = ["group", "n", "unfinished"]
    for metric in metrics:
        columns += [f"{metric}.{part}" for part in ("n", "mean", "std", "ci95_low", "ci95_high", "interval")]
    writer.writerow(columns)
    for group in groups:
        row: list = [group.label, len(group.finished), len(group.unfinished)]
        for metric in metrics:
            e = estimates[group.label].get(metric)
            row += ["", "", "", "", "", ""] if e is None else [
                e.n, repr(e.mean), "" if e.std is None else repr(e.std), "" if e.low is None else repr(e.low),
                "" if e.high is None else repr(e.high), e.method]
        writer.writerow(row)
    return out.getvalue()


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(char, char) for char in str(text))


def groups_latex(groups: Sequence[Group], estimates: Estimates, metrics: Sequence[str],
                 caption: Optional[str] = None) -> str:
    """A ``table`` with a booktabs ``tabular``: one row per group, mean $\\pm$ half its 95% interval per metric,
    the best mean of each column in bold. Needs ``\\usepackage{booktabs}``."""
    best = {metric: _best(groups, estimates, metric) for metric in metrics}
    lines = [r"\begin{table}[ht]", r"\centering", r"\begin{tabular}{l" + "r" * (len(metrics) + 1) + "}", r"\toprule",
             " & ".join(["Group", "$n$", *(latex_escape(metric) for metric in metrics)]) + r" \\", r"\midrule"]
    for group in groups:
        cells = [latex_escape(group.label), str(len(group.finished))]
        for metric in metrics:
            e = estimates[group.label].get(metric)
            if e is None:
                cells.append("--")
                continue
            text = f"{e.mean:.3f}" if e.half_width is None else f"{e.mean:.3f} $\\pm$ {e.half_width:.3f}"
            cells.append(r"\textbf{" + text + "}" if best[metric] == group.label else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    note = (latex_escape(caption.rstrip(".")) + ". ") if caption else ""
    method = latex_escape(methods(groups)).replace("±", r"$\pm$").replace("²", "$^2$")
    lines.append(r"\caption{" + note + method + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _p(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def comparison_markdown(baseline: Group, rows: Sequence[GroupComparison],
                        predictions: Sequence[PredictionComparison]) -> str:
    lines = [f"Against the baseline {baseline.label!r}, paired on the repeats both have (difference = group - "
             "baseline; p-values two-sided, Holm-corrected over the groups compared per metric):", "",
             "| group | metric | pairs | mean difference [95% CI] | paired t p (Holm) | Wilcoxon p (Holm) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        c = row.comparison
        interval = f"{c.mean_difference:+.3f}" + ("" if c.low is None else f" [{c.low:+.3f}, {c.high:+.3f}]")
        lines.append(f"| {_md(row.group)} | {row.metric} | {c.n} | {interval} "
                     f"| {_p(c.t_pvalue)} ({_p(row.holm_t_pvalue)}) "
                     f"| {_p(c.wilcoxon_pvalue)} ({_p(row.holm_wilcoxon_pvalue)}) |")
    if predictions:
        lines += ["", "McNemar's exact test on the per-example predictions, pooled over the shared repeats:", "",
                  "| group | split | repeats | examples | right only in baseline | right only in group | p (Holm) |",
                  "|---|---|---|---|---|---|---|"]
        for row in predictions:
            t = row.test
            lines.append(f"| {_md(row.group)} | {row.split} | {row.repeats} | {t.examples} | {t.only_first} | "
                         f"{t.only_second} | {_p(t.pvalue)} ({_p(row.holm_pvalue)}) |")
    notes = [row for row in rows if row.unpaired]
    for row in notes:
        lines.append(f"\n{row.group}, {row.metric}: {row.unpaired} finished repeat(s) without a counterpart left out.")
    return "\n".join(lines) + "\n"


def comparison_csv(rows: Sequence[GroupComparison]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "metric", "pairs", "mean_difference", "ci95_low", "ci95_high", "t_pvalue",
                     "t_pvalue_holm", "wilcoxon_pvalue", "wilcoxon_pvalue_holm", "interval"])
    for row in rows:
        c = row.comparison
        writer.writerow([row.group, row.metric, c.n, repr(c.mean_difference),
                         *("" if v is None else repr(v) for v in (c.low, c.high, c.t_pvalue, row.holm_t_pvalue,
                                                                  c.wilcoxon_pvalue, row.holm_wilcoxon_pvalue)),
                         c.method])
    return out.getvalue()
