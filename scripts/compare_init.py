"""Run one experiment from the pretrained backbone and from a random one; print a markdown table.

    python scripts/compare_init.py [experiment=mobilenet_head] [other overrides...]

With the demo backbone (``restore.checkpoint=demo``, the experiment's default) it also says how
that backbone was pretrained (``source_task.json`` beside the checkpoint).
"""
from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import finetune.compat  # noqa: F401  (first)
from finetune import pipeline
from finetune.config import compose_config
from finetune.resolve import resolve


def _demo_recipe(checkpoint: str | None) -> str | None:
    """One line on the demo backbone's pretraining, when ``checkpoint`` is the demo's."""
    record = Path(checkpoint).parent / "source_task.json" if checkpoint else None
    if record is None or not record.is_file():
        return None
    info = json.loads(record.read_text())
    recipe = info.get("recipe")
    if recipe:
        size = f"{recipe['image_size']}x{recipe['image_size']}"
        how = (f"{recipe['steps']} steps of {recipe['batch_size']} images at {size}, {recipe['optimizer']} "
               f"{recipe['learning_rate']} (cosine), BatchNorm decay {recipe['batch_norm_decay']}")
    else:  # a cache built before the recipe was recorded
        how = f"{info.get('steps')} steps"
    return (f"Demo backbone: pretrained on {', '.join(info['classes'])} ({how}); "
            f"source-task val accuracy {info['val_accuracy']:.3f}")


def run_variants(variants: list[tuple[str, list[str]]]) -> list[tuple[str, dict]]:
    """Run each (label, overrides) in a scratch run directory, export off; return (label, metrics) rows."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, overrides in variants:
            cfg = compose_config(overrides + ["export.enabled=false"])
            rows.append((label, pipeline.run(cfg, Path(scratch) / str(len(rows)), resolve(cfg))))
    return rows


def print_table(first_column: str, rows: list[tuple[str, dict]], extra: dict[str, list[str]] | None = None) -> None:
    """A markdown table of (label, metrics) rows; ``extra``: more columns, header -> one cell per row."""
    extra = extra or {}
    print("| " + " | ".join([first_column, "val accuracy", "val loss", "test accuracy", "steps", *extra]) + " |")
    print("|---" * (5 + len(extra)) + "|")
    for index, (label, m) in enumerate(rows):
        cells = [label, f"{m['val']['accuracy']:.3f}", f"{m['val']['loss']:.3f}", f"{m['test']['accuracy']:.3f}",
                 str(m["steps"]), *(column[index] for column in extra.values())]
        print("| " + " | ".join(cells) + " |")


def main(overrides: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    overrides = overrides or ["experiment=mobilenet_head"]
    rows = run_variants([("pretrained (restore.checkpoint=demo)", overrides),
                         ("random init (restore.checkpoint=null)", overrides + ["restore.checkpoint=null"])])
    print(f"Overrides: {' '.join(overrides)}")
    described = _demo_recipe(rows[0][1]["restore"]["checkpoint"])
    print(f"{described}\n" if described else "")
    print_table("backbone", rows)


if __name__ == "__main__":
    main(sys.argv[1:])
