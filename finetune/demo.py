"""The demo backbone: a MobileNet v1 pretrained here, by a run of the pipeline, on the demo's source task.

Two disjoint tasks are drawn from one family of synthetic images (:mod:`finetune.data.demo_images`):
the *source* task pretrains the backbone from scratch; the *target* task, with other shapes, is what
``experiment=mobilenet_head`` finetunes on. Features learnt on the source shapes (edges, corners,
curvature) transfer; a randomly initialised backbone has none.

This module is a client of :func:`finetune.pipeline.run`, above it: the pretraining is one run of the
pipeline, and ``restore.checkpoint=demo`` is resolved (:mod:`finetune.resolve`) before the user's run
starts. The checkpoint is cached under ``paths.cache_dir`` and rebuilt by ``scripts/make_demo_assets.py``.
Everything is seeded: the same code gives the same images and the same checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from finetune import pipeline
from finetune.config import Config
from finetune.data.demo_images import SOURCE_CLASSES, demo_root, publish_folder, write_image_folder
from finetune.weights.readers import read_checkpoint, write_checkpoint

log = logging.getLogger(__name__)

# The demo backbone: small enough to pretrain in a minute or two on two CPU cores.
DEMO_BACKBONE = {"name": "mobilenet_v1", "image_size": 96, "params": {"depth_multiplier": 0.25}}


@dataclass(frozen=True)
class PretrainRecipe:
    """How the demo backbone is pretrained on the source task. Every field changes the checkpoint.

    The defaults are the cheapest recipe we found that transfers as well as the 1500-step one it
    replaced (``scripts/compare_init.py`` measures the transfer, ``scripts/make_demo_assets.py`` the
    time). What made it cheap:

    * BatchNorm decay 0.9: the frozen backbone's BatchNorm runs on the moving statistics, and over a
      few hundred steps of fast-changing weights averages at 0.99 lag so far behind that restoring
      transferred no better than random initialisation; at 0.9 they keep up.
    * Adam at 0.02 (cosine-decayed to zero) on batches of 64: the shapes are learnt in 200 steps,
      12,800 images against the 48,000 of the old recipe (1500 steps of 32 at 0.002); lower rates
      had not learnt them by then, and on CPU a step of 64 costs a little less per image than one of 32.
    """

    steps: int = 200
    # The size the source images are drawn and trained at. Convolution weights do not depend on it,
    # but features learnt on smaller images (64, 80, 88 tried) transferred worse to the 96x96 target.
    image_size: int = 96
    images_per_class: int = 300
    batch_size: int = 64
    optimizer: str = "adam"  # a name of finetune.vocab.OPTIMIZERS
    learning_rate: float = 0.02
    batch_norm_decay: float = 0.9
    seed: int = 0  # train.seed of the run (the images have their own seeds)


PRETRAIN = PretrainRecipe()
# The last name part of the network's own variables; optimizer slots (".../Adam", ".../Momentum") are left out.
MODEL_VARIABLE_LEAVES = {"weights", "depthwise_weights", "biases", "beta", "gamma", "moving_mean", "moving_variance"}


def checkpoint_prefix(cache_dir: str | Path) -> Path:
    return demo_root(cache_dir) / "mobilenet_v1_0.25_96" / "model.ckpt"


def pretrain_config(source_root: Path, cache_dir: str | Path, recipe: PretrainRecipe = PRETRAIN) -> DictConfig:
    """The source-task run: the whole MobileNet v1 from scratch, BatchNorm in training mode."""
    overrides = {
        "backbone": {**DEMO_BACKBONE, "image_size": recipe.image_size, "cut": "Conv2d_13_pointwise",
                     "batch_norm_training": True,
                     "params": {**DEMO_BACKBONE["params"], "batch_norm_decay": recipe.batch_norm_decay}},
        "head": {"layers": [{"type": "global_avg_pool"}, {"type": "dropout", "rate": 0.2}, {"type": "dense"}]},
        "data": {"root": str(source_root), "batch_size": recipe.batch_size, "augment": [{"type": "flip_left_right"}]},
        "restore": {"checkpoint": None},
        "optimizer": {"name": recipe.optimizer, "learning_rate": recipe.learning_rate, "decay": "cosine",
                      "var_list": [".*"]},
        "train": {"steps": recipe.steps, "seed": recipe.seed, "checkpoint_every": recipe.steps, "log_every": 20,
                  "histogram_every": 200},
        "export": {"enabled": False},
        "paths": {"cache_dir": str(cache_dir)},
    }
    return OmegaConf.merge(OmegaConf.structured(Config), overrides)


def ensure_demo_checkpoint(cache_dir: str | Path, recipe: PretrainRecipe = PRETRAIN) -> str:
    """The pretrained demo backbone (``restore.checkpoint=demo``): MobileNet v1 variables only, official names."""
    prefix = checkpoint_prefix(cache_dir)
    folder = prefix.parent
    if Path(f"{prefix}.index").exists():
        return str(prefix)
    # Drawn at the pretraining size (no resize while training); another size gets its own folder.
    source = write_image_folder(demo_root(cache_dir) / f"source_images_{recipe.image_size}", SOURCE_CLASSES,
                                recipe.images_per_class, recipe.image_size, seed=1)
    log.info("Pretraining the demo backbone on the source task (%s); this happens once and is cached in %s",
             ", ".join(SOURCE_CLASSES), folder)
    run_dir = demo_root(cache_dir) / f"pretrain_run.tmp-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    metrics = pipeline.run(pretrain_config(source, cache_dir, recipe), run_dir, pipeline.RunInputs(source, None))
    tensors = {name: value for name, value in read_checkpoint(str(run_dir / metrics["checkpoint"])).items()
               if name.startswith("MobilenetV1/") and name.rsplit("/", 1)[-1] in MODEL_VARIABLE_LEAVES}
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    write_checkpoint(tensors, staging / "model.ckpt")
    # Only what the recipe determines, so that the same code writes the same file.
    (staging / "source_task.json").write_text(json.dumps(
        {"classes": list(SOURCE_CLASSES), "recipe": asdict(recipe), "val_accuracy": metrics["val"]["accuracy"]},
        indent=2))
    publish_folder(staging, folder)
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("Demo backbone ready: %s (source-task val accuracy %.3f; %d training steps at %.1f steps/s)", prefix,
             metrics["val"]["accuracy"], recipe.steps, metrics["timings"]["images_per_second"] / recipe.batch_size)
    return str(prefix)
