"""Run the catalogue of bad inputs (tests/test_bad_inputs.py) and print its failure table (docs/security.md).

    python scripts/failure_table.py                           # prints the Markdown table
    python scripts/failure_table.py --write docs/security.md  # replaces the table between the marker comments

Each case runs as its test runs it (the same runner: in this process, or a subprocess where the
process is the subject; a fresh temporary folder; FINETUNE_CACHE=the demo cache, built if missing; the
tiny profile's image folder, drawn as the tests draw it). A row: the input, the first sentence of what
the user sees, the exit status.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = str(ROOT / "finetune")  # where the shipped demo backbone lies, in messages
sys.path.insert(0, str(ROOT / "tests"))

# The marker lines, as docs/security.md holds them.
BEGIN = "<!-- failure-table:begin (scripts/failure_table.py --write docs/security.md) -->"
END = "<!-- failure-table:end -->"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(cache: Path, only: list[str] | None = None) -> str:
    """The Markdown table of the catalogue, in its order."""
    from test_bad_inputs import CASES, first_sentence, run_case

    rows = ["| input | what the user sees | exit status |", "| --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as drawn:
        data = tiny_data(Path(drawn))
        for case in CASES:
            if only and case.id not in only:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    result, output = run_case(case, Path(tmp), cache, data)
                except BaseException as error:  # pytest.skip: a case this machine cannot make (a tmpfs needs root)
                    if type(error).__name__ != "Skipped":
                        raise
                    print(f"{case.id}: not run here ({error})", file=sys.stderr)
                    rows.append(f"| {cell(case.input)} | (not run where the table was made: {cell(str(error))}) | |")
                    continue
                seen = first_sentence(output).replace(tmp, "TMP").replace(str(cache), "CACHE").replace(drawn, "DATA")
            seen = re.sub(r"(127\.0\.0\.1:|port=)\d+", r"\1PORT", seen)  # the closed port standing for no network
            seen = re.sub(r"\.tmp-\d+", ".tmp-PID", seen.replace(PACKAGE, "PACKAGE"))
            seen = re.sub(r"\.tempstate\d+", ".tempstateN", seen)  # TensorFlow's random temporary suffix
            print(f"{case.id}: {result.returncode}", file=sys.stderr)
            rows.append(f"| {cell(case.input)} | {cell(seen)} | {result.returncode} |")
    return "\n".join(rows) + "\n"


def tiny_data(folder: Path) -> Path:
    """The tiny profile's image folder (tests/conftest.py's tiny_data), drawn in ``folder``."""
    from conftest import TINY_IMAGES_PER_CLASS

    from finetune.data import demo_images

    return demo_images.write_image_folder(folder / "images", demo_images.TARGET_CLASSES, TINY_IMAGES_PER_CLASS, 32,
                                          seed=7)


def replace_table(readme: Path, text: str) -> None:
    """``text`` between the two marker lines of ``readme`` (added at the end when missing)."""
    from finetune.files import write_between_markers

    write_between_markers(readme, BEGIN, END, text)


def demo_cache() -> Path:
    """The cache the tests use (FINETUNE_TEST_CACHE, else a fresh build in a temporary folder)."""
    cache = os.environ.get("FINETUNE_TEST_CACHE")
    path = Path(cache) if cache else Path(tempfile.mkdtemp(prefix="finetune_cache_"))
    from finetune.data import demo_images

    demo_images.ensure_target_dataset(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", type=Path, help="replace the table between the markers in FILE")
    parser.add_argument("--only", nargs="*", metavar="ID", help="run these cases only")
    args = parser.parse_args()
    import finetune.compat  # noqa: F401

    text = table(demo_cache(), args.only)
    if args.write:
        replace_table(args.write, text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
