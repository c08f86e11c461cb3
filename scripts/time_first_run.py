"""Time the README's first command the way a new user meets it, and print a Markdown table.

    python scripts/time_first_run.py [--repo PATH] [--keep] [--write README.md]

It clones the repository (its committed HEAD) into a temporary folder, sets HOME to an empty folder
(so neither pip's cache nor the demo cache of earlier runs helps), and runs the first line of the
README's first ``bash`` block there, one ``&&`` segment at a time in one shell, timing each. Then it
runs the experiment once more in the same clone (demo assets cached) to show the cost of a later run.
The command is read from the README, not repeated here, so the table always times what users type.
``--write FILE`` also puts the table between FILE's ``first-run`` markers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "@@segment-done"
BEGIN = "<!-- first-run:begin (python scripts/time_first_run.py --write README.md) -->"
END = "<!-- first-run:end -->"


def readme_first_command(readme: Path) -> str:
    """The first line of the README's first ```bash block."""
    match = re.search(r"```bash\n(.+?)\n", readme.read_text())
    if not match:
        sys.exit(f"{readme}: no ```bash block found")
    return match.group(1).strip()


def run_timed_segments(command: str, cwd: Path, env: dict[str, str]) -> list[tuple[str, float]]:
    """Run ``a && b && c`` in one bash, printing a marker after each segment; return (segment, seconds)."""
    segments = [part.strip() for part in command.split("&&")]
    script = "set -e\n" + "".join(f"{part}\necho {MARK} $(date +%s.%N)\n" for part in segments)
    started = time.time()
    process = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    marks = []
    log_lines = []
    for line in process.stdout:
        if line.startswith(MARK):
            marks.append(float(line.split()[1]))
        else:
            log_lines.append(line)
    if process.wait() != 0:
        sys.stdout.writelines(log_lines[-40:])
        sys.exit(f"the README's command failed (exit {process.returncode}) at segment {len(marks) + 1}")
    edges = [started] + marks
    return [(part, end - begin) for part, begin, end in zip(segments, edges, edges[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="the repository to clone (default: this one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone and HOME")
    parser.add_argument("--write", metavar="FILE", type=Path, help="also put the table between FILE's markers")
    args = parser.parse_args()
    command = readme_first_command(args.repo / "README.md")
    scratch = Path(tempfile.mkdtemp(prefix="finetune-first-run-"))
    try:
        clone, home = scratch / "clone", scratch / "home"
        home.mkdir()
        subprocess.run(["git", "clone", "-q", str(args.repo), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True,
                                check=True).stdout.strip()
        env = {key: value for key, value in os.environ.items()
               if key not in ("VIRTUAL_ENV", "FINETUNE_CACHE", "PYTHONPATH", "PIP_CACHE_DIR")}
        env["HOME"] = str(home)
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "/.venv/" not in p)
        timings = run_timed_segments(command, clone, env)
        # A later run: same clone, demo assets now cached in HOME.
        again = run_timed_segments(f". .venv/bin/activate && {timings[-1][0]}", clone, env)[-1]
        runs = sorted((clone / "outputs").glob("*/*/metrics.json"))
        metrics = json.loads(runs[0].read_text())
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    install = sum(seconds for part, seconds in timings[:-1])
    first = timings[-1][1]
    rows = ["| step | seconds | minutes |", "|---|---|---|"]
    rows += [f"| `{part}` | {seconds:.0f} | {seconds / 60:.1f} |" for part, seconds in timings]
    rows += [f"| first run, install excluded | {first:.0f} | {first / 60:.1f} |",
             f"| first run, install included | {install + first:.0f} | {(install + first) / 60:.1f} |",
             f"| a later run (demo assets cached) | {again[1]:.0f} | {again[1] / 60:.1f} |"]
    text = (f"At commit {commit}, empty HOME, {os.cpu_count()} CPU cores:\n\n" + "\n".join(rows) + "\n\n"
            f"First run: val accuracy {metrics['val']['accuracy']:.3f}, "
            f"test accuracy {metrics['test']['accuracy']:.3f}.\n")
    print(text, end="")
    if args.write:
        from finetune.files import write_between_markers

        write_between_markers(args.write, BEGIN, END, text)


if __name__ == "__main__":
    main()
