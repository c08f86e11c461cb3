"""Remake the demo assets: the demo dataset in the cache, and (with --force or --output) the demo backbone.

    python scripts/make_demo_assets.py                    # the dataset, if it is not in the cache yet
    python scripts/make_demo_assets.py --force            # pretrain the shipped backbone anew (minutes)
    python scripts/make_demo_assets.py --output DIR       # pretrain a copy into DIR, the shipped one untouched

The backbone's recipe is ``finetune.demo.PRETRAIN``; ``source_task.json`` beside the weights records what it
gave (the source-task accuracy at each evaluation, the seconds, the machine, the files' sha256) and is printed
here. The pretraining prints one line; its own log goes to CACHE/demo/pretraining.log. A copy made on another
machine differs in its bits (another floating-point path) but should level off at the same accuracy: compare
the two records.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import finetune.compat  # noqa: F401  (first)
from omegaconf import OmegaConf

from finetune import demo
from finetune.config import PathsConfig
from finetune.data import demo_images


def main() -> None:
    default_cache = OmegaConf.to_object(OmegaConf.structured(PathsConfig)).cache_dir
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=default_cache, help="where the demo images are drawn")
    parser.add_argument("--force", action="store_true",
                        help="draw the dataset anew and pretrain the shipped backbone (finetune/demo_backbone) anew")
    parser.add_argument("--output", type=Path, help="pretrain a backbone into this folder instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.force:
        shutil.rmtree(demo_images.demo_root(args.cache_dir), ignore_errors=True)
    started = time.perf_counter()
    print("dataset:", demo_images.ensure_target_dataset(args.cache_dir), f"({time.perf_counter() - started:.1f} s)")
    if args.force or args.output:
        folder = args.output or demo.SHIPPED
        print("backbone checkpoint:", demo.pretrain(folder, args.cache_dir))
        print("source task:", json.dumps(demo.source_task(folder), indent=2))


if __name__ == "__main__":
    main()
