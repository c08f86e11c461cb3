"""scripts/bench_export.py: its table (size ratios, drops, the int8 verdict, the targets) and its markers in the
README and docs/export.md. No benchmark runs here: the rows are made up."""
from __future__ import annotations

import argparse
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
bench = load_script("bench_export")
ARGS = argparse.Namespace(batch_sizes=[1, 32])


def made_up_rows():
    Row = bench.Row
    return [Row("session (float reference)", "checkpoint", ms={1: 4.0, 32: 32.0}, accuracy=0.99),
            Row(bench.FLOAT_TFLITE, "export/model.tflite", size_bytes=1000, ms={1: 0.5, 32: 16.0}, accuracy=0.99),
            Row("TFLite int8", "model_int8.tflite", size_bytes=340, ms={1: 1.0, 32: 8.0}, accuracy=0.98),
            Row("TFLite int8, per tensor", "model_int8.tflite", size_bytes=280, ms={1: 1.0, 32: 8.0}, accuracy=0.95),
            Row("ONNX", "export/model.onnx", note="skipped: file not found")]


def cells(text: str) -> dict[str, list[str]]:
    return {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")[1:]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| format")}


def test_table_sizes_against_float_tflite_and_drops_against_the_session():
    table = cells(bench.markdown_table(made_up_rows(), ARGS, test_images=100))
    # bytes, x float TFLite, batch 1, batch 32, img/s @ 32, accuracy, drop, note
    assert table["TFLite int8"] == ["340", "0.34", "1.00", "8.00", "4000", "0.9800", "+0.0100", ""]
    assert table["session (float reference)"][:2] == ["–", "–"]
    assert table["ONNX"] == ["–"] * 7 + ["skipped: file not found"]


def test_int8_verdict_and_targets_follow_the_numbers():
    rows = made_up_rows()
    verdict = bench.int8_sentence(rows, ARGS)
    assert "neither faster nor slower" in verdict and "batch 32: 8.00 ms against 16.00 ms (2.00x)" in verdict
    rows[2].ms = {1: 0.25, 32: 8.0}
    assert "int8 TFLite model is faster" in bench.int8_sentence(rows, ARGS)
    targets = bench.targets_sentence(rows, max_drop=0.02)
    assert "TFLite int8: drop 0.0100 (within export.max_accuracy_drop=0.02), size 0.34x (over 0.3x)" in targets
    assert "TFLite int8, per tensor: drop 0.0400 (beyond" in targets and "size 0.28x (at most 0.3x)" in targets


def test_readme_and_export_docs_hold_the_script_table():
    for page in ("README.md", "docs/export.md"):
        text = (ROOT / page).read_text()
        assert text.count(bench.BEGIN) == 1 and text.count(bench.END) == 1, page
        between = text.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0]
        assert "| format | bytes | x float TFLite |" in between and "| TFLite int8, per tensor |" in between, page
