"""(Re)build the demo dataset and the pretrained demo backbone in the cache, and say how long each took.

    python scripts/make_demo_assets.py [--cache-dir DIR] [--force]

The pretraining recipe is ``finetune.weights.demo.PRETRAIN``; what it gave (source-task accuracy, training
steps per second) is saved beside the checkpoint in ``source_task.json`` and printed here.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time

import finetune.compat  # noqa: F401  (first)
from omegaconf import OmegaConf

from finetune.data import demo_images
from finetune import demo
from finetune.config import PathsConfig


def main() -> None:
    default_cache = OmegaConf.to_object(OmegaConf.structured(PathsConfig)).cache_dir
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=default_cache)
    parser.add_argument("--force", action="store_true", help="delete the cached demo assets first")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.force:
        shutil.rmtree(demo_images.demo_root(args.cache_dir), ignore_errors=True)
    started = time.perf_counter()
    print("dataset:", demo_images.ensure_target_dataset(args.cache_dir), f"({time.perf_counter() - started:.1f} s)")
    started = time.perf_counter()
    prefix = demo.ensure_demo_checkpoint(args.cache_dir)
    print("backbone checkpoint:", prefix, f"({time.perf_counter() - started:.1f} s)")
    print("source task:", (demo.checkpoint_prefix(args.cache_dir).parent / "source_task.json").read_text())


if __name__ == "__main__":
    main()
