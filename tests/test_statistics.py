"""Results a thesis can defend: the statistics over repeats and between configurations, checked against
scipy (and scikit-learn for the classification metrics) on fixed numbers, and the tables, the bundle and
their bad inputs, on sweep folders made here."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script
import yaml
from scipy import stats

from finetune.analysis import statistics
from finetune.analysis.bundle import make_bundle, verify
from finetune.analysis.groups import GroupComparison
from finetune.errors import FinetuneError
from finetune.tools import main as tools_main
from finetune.tools.summarize import summarize_folders
from finetune.training.evaluate import SplitResult

# --- the statistics on fixed numbers ------------------------------------------------------------------------

VALUES = [0.71, 0.74, 0.69, 0.73, 0.75]
OTHER = [0.74, 0.78, 0.70, 0.77, 0.76]


def test_the_interval_over_seeds_is_student_s_t_and_one_run_gives_none():
    e = statistics.estimate(VALUES)
    low, high = stats.t.interval(0.95, len(VALUES) - 1, loc=np.mean(VALUES), scale=stats.sem(VALUES))
    assert (e.n, e.mean, e.std) == (5, pytest.approx(np.mean(VALUES)), pytest.approx(np.std(VALUES, ddof=1)))
    assert (e.low, e.high) == (pytest.approx(low), pytest.approx(high)) and e.method == "t"
    single = statistics.estimate([0.7])
    assert (single.std, single.low, single.high, single.half_width) == (None, None, None, None)
    assert "n=1" in single.note


def test_the_interval_over_folds_is_the_corrected_resampled_t():
    """Nadeau and Bengio: the variance of the mean is (1/n + 1/(k-1)) s^2, wider than Student's t's s^2/n."""
    e = statistics.estimate(VALUES, folds=5)
    half = stats.t.ppf(0.975, 4) * math.sqrt(1 / 5 + 1 / 4) * np.std(VALUES, ddof=1)
    assert (e.low, e.high) == (pytest.approx(np.mean(VALUES) - half), pytest.approx(np.mean(VALUES) + half))
    assert e.half_width > statistics.estimate(VALUES).half_width and e.method == "corrected t (k=5)"


def test_paired_comparisons_equal_scipy_s_t_and_wilcoxon_tests():
    c = statistics.paired(VALUES, OTHER)
    assert c.t_pvalue == pytest.approx(stats.ttest_rel(OTHER, VALUES).pvalue)
    assert c.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(np.subtract(OTHER, VALUES)).pvalue)
    differences = np.subtract(OTHER, VALUES)
    low, high = stats.t.interval(0.95, 4, loc=differences.mean(), scale=stats.sem(differences))
    assert (c.mean_difference, c.low, c.high) == (pytest.approx(differences.mean()), pytest.approx(low),
                                                 pytest.approx(high))
    same = statistics.paired(VALUES, VALUES)
    assert same.mean_difference == 0 and same.t_pvalue == 1.0 and same.wilcoxon_pvalue == 1.0


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_pairs():
    first = [True] * 30 + [False] * 10 + [True] * 3 + [False] * 7
    second = [True] * 30 + [False] * 10 + [False] * 3 + [True] * 7
    m = statistics.mcnemar_exact(first, second)
    assert (m.examples, m.only_first, m.only_second) == (50, 3, 7)
    assert m.pvalue == pytest.approx(stats.binomtest(3, 10, 0.5).pvalue)
    assert statistics.mcnemar_exact([True, False], [True, False]).pvalue == 1.0


def test_holm_steps_down_and_stays_monotone():
    assert statistics.holm([0.01, 0.04, None, 0.03]) == [0.03, pytest.approx(0.06), None, pytest.approx(0.06)]
    assert statistics.holm([0.5, 0.9]) == [1.0, 1.0]


def test_the_demo_comparisons_claim_a_difference_only_where_holm_s_correction_leaves_it():
    conclusions = load_script("repeats").conclusions
    base = [0.90, 0.91, 0.92, 0.93, 0.94]
    clear = statistics.paired(base, [v + 0.02 + 0.001 * i for i, v in enumerate(base)])
    borderline = statistics.paired(base, [0.925, 0.925, 0.925, 0.945, 0.945])  # p = 0.034: under 5% alone
    none = statistics.paired(base, [0.91, 0.90, 0.93, 0.92, 0.94])
    assert clear.t_pvalue < 0.01 and 0.025 < borderline.t_pvalue < 0.05 < none.t_pvalue
    rows = [GroupComparison(name, "val.accuracy", c, p, None) for name, c, p in
            [("a", clear, clear.t_pvalue * 2), ("b", borderline, borderline.t_pvalue * 2), ("c", none, none.t_pvalue)]]
    said = conclusions(rows, "base")
    assert "the data support a difference at the 5% level" in said[0]
    assert "excludes 0, but Holm's correction over the groups compared leaves p above 0.05" in said[1]
    assert "no difference can be claimed" in said[1]
    assert "support a difference" not in said[1] and "cannot tell the two apart" in said[2]
    # One group against the baseline: nothing to correct, the interval decides.
    assert "support a difference" in conclusions([GroupComparison("b", "val.accuracy", borderline,
                                                                  borderline.t_pvalue, None)], "base")[0]


def test_classification_metrics_equal_scikit_learn_s():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, size=60)
    labels[labels == 3] = 2  # class 3 never occurs: it must not count in the macro averages
    predicted = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 4, size=60))
    confusion = np.zeros([4, 4], np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    result = SplitResult(0.0, float(np.mean(labels == predicted)), 60, 4, 1.0, confusion)
    present = sorted(set(labels))
    assert result.balanced_accuracy == pytest.approx(sklearn.balanced_accuracy_score(labels, predicted))
    assert result.macro_f1 == pytest.approx(sklearn.f1_score(labels, predicted, labels=present, average="macro",
                                                             zero_division=0))
    precision, recall, f1, support = sklearn.precision_recall_fscore_support(labels, predicted, labels=range(4),
                                                                             zero_division=0)
    for label, row in enumerate(result.per_class()):
        assert row["support"] == support[label] and row["f1"] in (None, pytest.approx(f1[label]))
        assert row["recall"] == (pytest.approx(recall[label]) if support[label] else None)
        assert row["precision"] == (pytest.approx(precision[label]) if confusion[:, label].sum() else None)
    absent = result.per_class()[3]  # predicted now and then, never true: precision 0, no recall
    assert (absent["support"], absent["recall"], absent["precision"], absent["f1"]) == (0, None, 0.0, 0.0)


# --- sweeps made here -----------------------------------------------------------------------------------------

EXAMPLES = [f"shape/{i:03d}.png" for i in range(40)]


def make_job(sweep: Path, number: int, rate: str, seed: int, accuracy: float, rng: np.random.Generator,
             state: str = "done", data: str = "abc", fold: int | None = None) -> Path:
    """A job folder as a finished run leaves it (written here, not by a run)."""
    repeat = [f"train.seed={seed}"] + ([f"data.fold={fold}"] if fold is not None else [])
    job = sweep / f"{number}_rate={rate},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["experiment=x", f"optimizer.learning_rate={rate}",
                                                                   *repeat]))
    (job / "status.json").write_text(json.dumps({"state": state, "step": 10, "message": "it broke\nmore"}))
    if state != "done":
        return job
    (job / "metrics.json").write_text(json.dumps({
        "val": {"accuracy": accuracy, "loss": 1 - accuracy, "macro_f1": accuracy - 0.1},
        "test": {"accuracy": accuracy - 0.05}, "steps": 10}))
    (job / "run.json").write_text(json.dumps({"data": {"file_list_sha256": data, "classes": ["a", "b"]}}))
    if fold is not None:
        (job / "splits.json").write_text(json.dumps({"classes": ["a", "b"], "fold": {"fold": fold, "folds": 4},
                                                     "splits": {}}))
    lines = [{"split": "test", "example": key, "label": "a", "predicted": "a" if rng.random() < accuracy else "b",
              "probabilities": [0.5, 0.5]} for key in EXAMPLES]
    (job / "predictions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two learning rates x five seeds, and a failed job of a third rate."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "multirun"
    number = 0
    for rate, gain in (("0.1", 0.0), ("0.01", 0.05)):
        for seed in range(1, 6):
            make_job(folder, number, rate, seed, 0.7 + gain + rng.normal(0, 0.02), rng)
            number += 1
    make_job(folder, number, "0.5", 1, 0.0, rng, state="failed")
    return folder


def _table(text: str, after: str) -> list[list[str]]:
    """The Markdown table that follows the line ``after``."""
    lines = text.split(after, 1)[1].strip().splitlines()
    rows = [line for line in lines if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_groups_and_their_intervals_recompute_from_the_metrics_files(sweep, tmp_path):
    report = summarize_folders([sweep], output=tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "groups.csv").read_text())))
    by_group = {row["group"]: row for row in rows}
    assert set(by_group) == {"optimizer.learning_rate=0.1", "optimizer.learning_rate=0.01",
                             "optimizer.learning_rate=0.5"}
    for rate in ("0.1", "0.01"):
        values = [json.loads((job / "metrics.json").read_text())["val"]["accuracy"]
                  for job in sorted(sweep.glob(f"*_rate={rate},*"))]
        low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
        row = by_group[f"optimizer.learning_rate={rate}"]
        assert int(row["val.accuracy.n"]) == 5 and float(row["val.accuracy.mean"]) == pytest.approx(np.mean(values))
        assert float(row["val.accuracy.std"]) == pytest.approx(np.std(values, ddof=1))
        assert (float(row["val.accuracy.ci95_low"]), float(row["val.accuracy.ci95_high"])) == (
            pytest.approx(low), pytest.approx(high))
        shown = next(cells for cells in _table(report.markdown, "## Groups") if cells[0].endswith(f"={rate}"))
        assert re.sub(r"\*", "", shown[2]) == f"{np.mean(values):.3f} ± {(high - low) / 2:.3f}"
    failed = by_group["optimizer.learning_rate=0.5"]
    assert failed["n"] == "0" and failed["unfinished"] == "1" and failed["val.accuracy.mean"] == ""
    assert "Not counted: 10_rate=0.5,seed=1 (optimizer.learning_rate=0.5) is failed: it broke." in report.markdown


def test_a_comparison_pairs_the_seeds_and_recomputes_with_scipy(sweep, tmp_path):
    report = summarize_folders([sweep], baseline="optimizer.learning_rate=0.1", output=tmp_path / "out")
    def values(rate: str) -> list[float]:
        return [json.loads((job / "metrics.json").read_text())["val"]["accuracy"]
                for job in sorted(sweep.glob(f"*_rate={rate},*"), key=lambda job: job.name.split("seed=")[1])]
    base, other = values("0.1"), values("0.01")
    row = next(row for row in csv.DictReader(io.StringIO((tmp_path / "out" / "comparison.csv").read_text()))
               if row["metric"] == "val.accuracy")
    assert float(row["mean_difference"]) == pytest.approx(np.mean(np.subtract(other, base)))
    assert float(row["t_pvalue"]) == pytest.approx(stats.ttest_rel(other, base).pvalue)
    assert float(row["wilcoxon_pvalue"]) == pytest.approx(stats.wilcoxon(np.subtract(other, base)).pvalue)
    assert float(row["t_pvalue_holm"]) == pytest.approx(float(row["t_pvalue"]))  # one group compared: unchanged
    # McNemar over the per-example test predictions, pooled over the five pairs of seeds.
    def correct(rate: str) -> list[bool]:
        outcome = []
        for job in sorted(sweep.glob(f"*_rate={rate},*"), key=lambda job: job.name.split("seed=")[1]):
            lines = (job / "predictions.jsonl").read_text().splitlines()
            outcome += [json.loads(line)["predicted"] == "a" for line in lines]
        return outcome
    first, second = correct("0.1"), correct("0.01")
    expected = stats.binomtest(sum(x and not y for x, y in zip(first, second)),
                               sum(x != y for x, y in zip(first, second)), 0.5)
    mcnemar = _table(report.markdown, "McNemar's exact test")[0]
    assert mcnemar[:4] == ["optimizer.learning_rate=0.01", "test", "5", "200"]
    assert mcnemar[6].startswith(f"{expected.pvalue:.3f}" if expected.pvalue >= 0.001 else "<0.001")


def test_the_latex_table_is_booktabs_with_the_best_in_bold_and_compiles_where_latex_is(sweep, tmp_path):
    summarize_folders([sweep], output=tmp_path / "out", caption="Two rates & five seeds")
    tex = (tmp_path / "out" / "summary.tex").read_text()
    for command in (r"\begin{table}", r"\toprule", r"\midrule", r"\bottomrule", r"\end{tabular}", r"\end{table}"):
        assert tex.count(command) == 1, command
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    columns = tex.split(r"\begin{tabular}{")[1].split("}")[0]
    assert all(line.count("&") == len(columns) - 1 and line.endswith(r"\\") for line in body)
    assert r"optimizer.learning\_rate=0.01" in tex and r"\textbf{" in tex and "$\\pm$" in tex
    assert "Two rates \\& five seeds." in tex and all(ord(char) < 128 for char in tex)  # ASCII: any LaTeX reads it
    # the higher accuracy is bold, the lower loss is bold: both belong to the 0.01 row here
    best = next(line for line in body if line.startswith(r"optimizer.learning\_rate=0.01"))
    assert best.count(r"\textbf{") >= 2
    if shutil.which("pdflatex"):
        document = tmp_path / "table.tex"
        document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + tex
                            + "\\end{document}\n")
        result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-2000:]


def test_folds_use_the_corrected_interval_and_say_so(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cv"
    for fold in range(4):
        make_job(folder, fold, "0.1", 1, 0.7 + 0.01 * fold, rng, fold=fold)
    report = summarize_folders([folder], output=tmp_path / "out")
    row = next(csv.DictReader(io.StringIO((tmp_path / "out" / "groups.csv").read_text())))
    assert row["val.accuracy.interval"] == "corrected t (k=4)"
    values = [0.7, 0.71, 0.72, 0.73]
    half = stats.t.ppf(0.975, 3) * math.sqrt(1 / 4 + 1 / 3) * np.std(values, ddof=1)
    assert float(row["val.accuracy.ci95_high"]) == pytest.approx(np.mean(values) + half)
    assert "Nadeau and Bengio" in report.markdown


def test_bad_summaries_are_one_message(sweep, tmp_path, capsys):
    empty = tmp_path / "nothing_finished"
    make_job(empty, 0, "0.1", 1, 0.0, np.random.default_rng(0), state="running")
    for args, fragments in [
        (["summarize", str(empty)], ["none finished", "running"]),
        (["summarize", str(sweep), "--baseline", "optimizer.learning_rate=0.3"],
         ["--baseline 'optimizer.learning_rate=0.3' names no group", "optimizer.learning_rate=0.1"]),
        (["summarize", str(sweep), "--metrics", "val.acuracy"],
         ["no finished job reports val.acuracy", "val.accuracy"]),
        (["summarize", str(tmp_path / "missing")], ["no such folder"]),
    ]:
        assert tools_main(args) == 2, args
        error = capsys.readouterr().err
        assert all(fragment in error for fragment in fragments), error
        assert "Traceback" not in error
    mixed = tmp_path / "mixed"
    rng = np.random.default_rng(2)
    make_job(mixed, 0, "0.1", 1, 0.7, rng, data="abc")
    make_job(mixed, 1, "0.1", 2, 0.7, rng, data="def")
    assert tools_main(["summarize", str(mixed)]) == 2
    assert "mixes runs on different data" in capsys.readouterr().err


def test_a_bundle_holds_every_job_s_files_and_verifies_its_own_checksums(sweep, tmp_path):
    folder, archive = tmp_path / "appendix", tmp_path / "appendix.tar.gz"
    assert tools_main(["bundle", str(sweep), str(folder), "--no-figures",
                       "--baseline", "optimizer.learning_rate=0.1"]) == 0
    assert archive.is_file() and verify(folder) == []
    jobs = sorted(path.name for path in (folder / "jobs").iterdir())
    assert len(jobs) == 11 and (folder / "jobs" / jobs[0] / "metrics.json").is_file()
    tables = {path.name for path in (folder / "tables").iterdir()}
    assert {"summary.md", "groups.csv", "summary.tex", "comparison.csv"} <= tables
    assert "tensorflow==" in (folder / "environment.txt").read_text().lower()
    assert "python -m finetune" in (folder / "README.md").read_text()
    (folder / "jobs" / jobs[0] / "metrics.json").write_text("{}")
    assert verify(folder) == [f"jobs/{jobs[0]}/metrics.json: changed"]
    with pytest.raises(FinetuneError, match="exists already"):
        make_bundle([sweep], folder, write_tables=lambda output: None)
