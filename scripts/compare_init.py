"""Run one experiment from the pretrained backbone and from a random one; print a markdown table.

    python scripts/compare_init.py [experiment=mobilenet_head] [other overrides...]
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import finetune.compat  # noqa: F401  (first)
from finetune import pipeline
from finetune.config import compose_config


def main(overrides: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    overrides = overrides or ["experiment=mobilenet_head"]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, checkpoint in (("pretrained (restore.checkpoint=demo)", None), ("random init (restore.checkpoint=null)", "null")):
            extra = [] if checkpoint is None else [f"restore.checkpoint={checkpoint}"]
            cfg = compose_config(overrides + extra + ["export.enabled=false"])
            metrics = pipeline.run(cfg, Path(scratch) / str(len(rows)))
            rows.append((label, metrics))
    print(f"Overrides: {' '.join(overrides)}\n")
    print("| backbone | val accuracy | val loss | test accuracy | steps |")
    print("|---|---|---|---|---|")
    for label, m in rows:
        print(f"| {label} | {m['val']['accuracy']:.3f} | {m['val']['loss']:.3f} | {m['test']['accuracy']:.3f} | {m['steps']} |")


if __name__ == "__main__":
    main(sys.argv[1:])
