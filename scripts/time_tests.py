"""Time the test suite (the fast tier and/or everything) and print a Markdown table of wall times and counts.

    python scripts/time_tests.py [--tier fast|full|both] [--cold] [--coverage] [--write FILE] [-k EXPR]
        [-- PYTEST_ARGS...]

Each tier runs as ``python -m pytest`` in a subprocess from the repository root, the way a developer
or CI runs it: ``fast`` is ``-m "not slow"``, ``full`` is everything. The table gives the wall time
of the whole subprocess (interpreter start and collection included) and the test counts read from
pytest's JUnit XML report.

The tests draw the demo dataset once and reuse it as pytest would: FINETUNE_TEST_CACHE if set, else the
one kept in ``.pytest_cache`` (drawn by the first run that needs it). ``--cold`` times a fresh clone
instead: FINETUNE_TEST_CACHE is dropped and pytest's cache provider turned off, so the session builds
the assets itself.
``-k EXPR`` and arguments after ``--`` go to pytest unchanged (e.g. to time a few tests).
``--coverage`` runs the full tier once more under pytest-cov (``--cov=finetune``; its time is not the
suite's) and adds the line coverage of the package. ``--write FILE`` puts the table between FILE's
``test-times`` markers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIERS = {"fast": ["-m", "not slow"], "full": []}
BEGIN = "<!-- test-times:begin (python scripts/time_tests.py --tier both --coverage --write README.md) -->"
END = "<!-- test-times:end -->"


def junit_counts(report: Path) -> dict[str, int]:
    """Passed, failed, errors and skipped from pytest's JUnit XML (one <testsuite> per session)."""
    suite = ElementTree.parse(report).getroot()
    if suite.tag == "testsuites":
        suite = suite[0]
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def run_tier(tier: str, extra: list[str], cold: bool) -> tuple[dict[str, int], float, int, list[str]]:
    """Run one tier; returns (counts, wall seconds, exit status, the pytest arguments used)."""
    env = dict(os.environ)
    arguments = [*TIERS[tier], *extra]
    if cold:
        env.pop("FINETUNE_TEST_CACHE", None)
        arguments = ["-p", "no:cacheprovider", *arguments]
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "junit.xml"
        started = time.perf_counter()
        status = subprocess.run([sys.executable, "-m", "pytest", "-q", f"--junitxml={report}", *arguments],
                                cwd=ROOT, env=env).returncode
        seconds = time.perf_counter() - started
        counts = junit_counts(report) if report.is_file() else {}
    return counts, seconds, status, arguments


def line_coverage(extra: list[str], cold: bool) -> tuple[float, int, int, dict[str, int]]:
    """(percent, covered lines, lines) of the package over the full suite, from pytest-cov's JSON report, and
    that run's test counts."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "coverage.json"
        arguments = ["--cov=finetune", f"--cov-report=json:{report}", "--cov-report=", *extra]
        counts = run_tier("full", arguments, cold)[0]
        totals = json.loads(report.read_text())["totals"]
    return totals["percent_covered"], totals["covered_lines"], totals["num_statements"], counts


def markdown_table(rows: list[tuple[str, list[str], dict[str, int], float]]) -> str:
    lines = ["| tier | pytest arguments | passed | failed | errors | skipped | wall time |",
             "|---|---|---|---|---|---|---|"]
    for tier, arguments, counts, seconds in rows:
        shown = " ".join(f'"{a}"' if " " in a else a for a in arguments) or "(none)"
        numbers = " | ".join(str(counts.get(key, "?")) for key in ("passed", "failures", "errors", "skipped"))
        lines.append(f"| {tier} | `{shown}` | {numbers} | {int(seconds // 60)} min {seconds % 60:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=["fast", "full", "both"], default="both")
    parser.add_argument("--cold", action="store_true", help="build the demo assets inside each run (a fresh clone)")
    parser.add_argument("-k", dest="keyword", help="only tests matching this pytest -k expression")
    parser.add_argument("--coverage", action="store_true", help="also measure line coverage (a separate full run)")
    parser.add_argument("--write", metavar="FILE", type=Path, help="also put the table between FILE's markers")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"] + (["-k", args.keyword] if args.keyword else [])
    rows, worst = [], 0
    for tier in (["fast", "full"] if args.tier == "both" else [args.tier]):
        counts, seconds, status, arguments = run_tier(tier, extra, args.cold)
        rows.append((tier, arguments, counts, seconds))
        worst = max(worst, status)
    demo_assets = "built in each run (--cold)" if args.cold else "reused when already built"
    text = (f"Python {platform.python_version()}, {os.cpu_count()} CPU cores; demo assets: {demo_assets}\n\n"
            + markdown_table(rows) + "\n")
    if args.coverage:
        percent, covered, lines, counts = line_coverage(extra, args.cold)
        text += (f"\nLine coverage of the package over the full suite: {percent:.1f}% ({covered} of {lines} lines; "
                 f"under coverage {counts.get('passed', '?')} passed, {counts.get('failures', '?')} failed, "
                 f"{counts.get('errors', '?')} errors).\n")
    print("\n" + text, end="")
    if args.write:
        sys.path.insert(0, str(ROOT))
        from finetune.files import write_between_markers

        write_between_markers(args.write, BEGIN, END, text)
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
