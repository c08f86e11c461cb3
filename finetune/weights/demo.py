"""The built-in demo: a small image-folder dataset and a pretrained MobileNet v1, both made here.

Two disjoint tasks are drawn from one family of synthetic images (a coloured shape on a noisy
background): the *source* task pretrains the backbone from scratch; the *target* task, with
other shapes, is what ``experiment=mobilenet_head`` finetunes on. Features learnt on the source
shapes (edges, corners, curvature) transfer; a randomly initialised backbone has none.

Both are cached under ``paths.cache_dir`` and rebuilt by ``scripts/make_demo_assets.py``.
Everything is seeded: the same code gives the same images and the same checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from finetune.errors import FinetuneError

log = logging.getLogger(__name__)

# The demo backbone: small enough to pretrain in a minute or two on two CPU cores.
DEMO_BACKBONE = {"name": "mobilenet_v1", "image_size": 96, "params": {"depth_multiplier": 0.25}}
DEMO_IMAGE_SIZE = 96
SOURCE_CLASSES = ("disk", "square", "triangle", "plus", "stripes", "crescent")
TARGET_CLASSES = ("ring", "frame", "star", "ellipse", "checker")
TARGET_IMAGES_PER_CLASS = 160


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
    optimizer: str = "adam"  # a name of finetune.validate.OPTIMIZERS
    learning_rate: float = 0.02
    batch_norm_decay: float = 0.9
    seed: int = 0  # train.seed of the run (the images have their own seeds)


PRETRAIN = PretrainRecipe()
# The last name part of the network's own variables; optimizer slots (".../Adam", ".../Momentum") are left out.
MODEL_VARIABLE_LEAVES = {"weights", "depthwise_weights", "biases", "beta", "gamma", "moving_mean", "moving_variance"}


# --- shapes: each maps polar/rotated coordinates around the shape's centre to a boolean mask ------
def _shape_masks() -> dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]]:
    def polar(u, v):
        return np.hypot(u, v), np.arctan2(v, u)

    def triangle(u, v, r):
        # Inside three half-planes at 120 degrees.
        return np.all([u * np.cos(a) + v * np.sin(a) < r / 2 for a in (np.pi / 2, np.pi * 7 / 6, np.pi * 11 / 6)], axis=0)

    return {
        "disk": lambda u, v, r: polar(u, v)[0] < r,
        "ring": lambda u, v, r: (polar(u, v)[0] < r) & (polar(u, v)[0] > 0.6 * r),
        "square": lambda u, v, r: np.maximum(abs(u), abs(v)) < 0.8 * r,
        "frame": lambda u, v, r: (np.maximum(abs(u), abs(v)) < 0.8 * r) & (np.maximum(abs(u), abs(v)) > 0.5 * r),
        "triangle": triangle,
        "plus": lambda u, v, r: ((abs(u) < r / 4) & (abs(v) < r)) | ((abs(v) < r / 4) & (abs(u) < r)),
        "stripes": lambda u, v, r: (polar(u, v)[0] < r) & (np.sin(u * 3 * np.pi / r) > 0),
        "crescent": lambda u, v, r: (polar(u, v)[0] < r) & (np.hypot(u - 0.45 * r, v) > 0.8 * r),
        "star": lambda u, v, r: polar(u, v)[0] < r * (0.45 + 0.55 * (0.5 + 0.5 * np.cos(5 * polar(u, v)[1])) ** 2),
        "ellipse": lambda u, v, r: (u / r) ** 2 + (v / (0.45 * r)) ** 2 < 1,
        "checker": lambda u, v, r: (np.maximum(abs(u), abs(v)) < 0.8 * r)
        & ((np.floor(u * 2.5 / r) + np.floor(v * 2.5 / r)) % 2 == 0),
    }


SHAPES = _shape_masks()


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 RGB image: the shape at a random place, scale, angle and colour, on a noisy background."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    radius = rng.uniform(0.2, 0.35)
    cx, cy = rng.uniform(radius, 1 - radius, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    mask = SHAPES[shape](u, v, radius)[..., None]
    background = rng.uniform(0, 255, size=3)
    foreground = (background + rng.uniform(80, 175, size=3) * rng.choice([-1, 1], size=3)) % 256
    image = np.where(mask, foreground, background) + rng.normal(0, 12, size=(size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def image_name(shape: str, index: int) -> str:
    """The path of a demo image relative to its folder."""
    return f"{shape}/{shape}_{index:04d}.png"


def write_image_folder(root: Path, classes: tuple[str, ...], per_class: int, size: int, seed: int) -> Path:
    """Write ``root/<class>/<class>_<index>.png``; atomic, so an interrupted run leaves no half folder."""
    if root.is_dir():
        return root
    staging = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    for class_index, shape in enumerate(classes):
        rng = np.random.default_rng([seed, class_index])
        (staging / shape).mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray(draw_shape(shape, size, rng)).save(staging / image_name(shape, index))
    _publish(staging, root)
    return root


def _publish(staging: Path, final: Path) -> None:
    try:
        os.replace(staging, final)
    except OSError:  # another job published it first
        shutil.rmtree(staging, ignore_errors=True)


def demo_root(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / "demo"


def target_dataset_dir(cache_dir: str | Path) -> Path:
    return demo_root(cache_dir) / "target_images"


def checkpoint_prefix(cache_dir: str | Path) -> Path:
    return demo_root(cache_dir) / "mobilenet_v1_0.25_96" / "model.ckpt"


def require(path: Path, key: str) -> str:
    """``path`` if the demo asset exists; for runs that must not create it (the dry run)."""
    if path.exists() or Path(f"{path}.index").exists():
        return str(path)
    raise FinetuneError(f"The demo asset for '{key}' is not built yet ({path}). Build it with "
                        "`python scripts/make_demo_assets.py` or run the experiment once.")


def ensure_target_dataset(cache_dir: str | Path) -> Path:
    """The finetuning dataset (``data.root`` unset)."""
    root = target_dataset_dir(cache_dir)
    if not root.is_dir():
        log.info("Writing the demo dataset (%s) to %s", ", ".join(TARGET_CLASSES), root)
    return write_image_folder(root, TARGET_CLASSES, TARGET_IMAGES_PER_CLASS, DEMO_IMAGE_SIZE, seed=2)


def pretrain_config(source_root: Path, cache_dir: str | Path, recipe: PretrainRecipe = PRETRAIN):
    """The source-task run: the whole MobileNet v1 from scratch, BatchNorm in training mode."""
    from finetune.config import Config

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
    from finetune import pipeline
    from finetune.weights.sources import read_checkpoint, write_checkpoint

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
    metrics = pipeline.run(pretrain_config(source, cache_dir, recipe), run_dir)
    tensors = {name: value for name, value in read_checkpoint(str(run_dir / metrics["checkpoint"])).items()
               if name.startswith("MobilenetV1/") and name.rsplit("/", 1)[-1] in MODEL_VARIABLE_LEAVES}
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    write_checkpoint(tensors, staging / "model.ckpt")
    # Only what the recipe determines, so that the same code writes the same file.
    (staging / "source_task.json").write_text(json.dumps(
        {"classes": list(SOURCE_CLASSES), "recipe": asdict(recipe), "val_accuracy": metrics["val"]["accuracy"]},
        indent=2))
    _publish(staging, folder)
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("Demo backbone ready: %s (source-task val accuracy %.3f; %d training steps at %.1f steps/s)", prefix,
             metrics["val"]["accuracy"], recipe.steps, metrics["timings"]["images_per_second"] / recipe.batch_size)
    return str(prefix)
