"""The demo's images: synthetic shapes (a coloured shape on a noisy background) drawn into image folders.

Two disjoint sets of shapes: the *source* classes, which :mod:`finetune.demo` pretrains the demo
backbone on, and the *target* classes, the dataset ``experiment=mobilenet_head`` finetunes on
(``data.root`` unset). Everything is seeded: the same code draws the same pixels. Folders are written
whole to a temporary name and renamed, so an interrupted run leaves no half folder and two jobs
drawing at once are safe.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from finetune.config import DataConfig
from finetune.data.examples import SPLITS, Example, LabelledImages, split_fractions, split_of

log = logging.getLogger(__name__)

DEMO_IMAGE_SIZE = 96
SOURCE_CLASSES = ("disk", "square", "triangle", "plus", "stripes", "crescent")
TARGET_CLASSES = ("ring", "frame", "star", "ellipse", "checker")
TARGET_IMAGES_PER_CLASS = 200  # 1000 images: about 200 each for validation and test (the demo's 60/20/20 split)
TARGET_SEED = 2


# --- shapes: each maps polar/rotated coordinates around the shape's centre to a boolean mask ------
def _shape_masks() -> dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]]:
    def polar(u, v):
        return np.hypot(u, v), np.arctan2(v, u)

    def triangle(u, v, r):
        # Inside three half-planes at 120 degrees.
        return np.all([u * np.cos(a) + v * np.sin(a) < r / 2
                       for a in (np.pi / 2, np.pi * 7 / 6, np.pi * 11 / 6)], axis=0)

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
    publish_folder(staging, root)
    return root


def publish_folder(staging: Path, final: Path) -> None:
    try:
        os.replace(staging, final)
    except OSError:  # another job published it first
        shutil.rmtree(staging, ignore_errors=True)


def demo_root(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / "demo"


def target_dataset_dir(cache_dir: str | Path) -> Path:
    return demo_root(cache_dir) / "target_images"




def ensure_target_dataset(cache_dir: str | Path) -> Path:
    """The finetuning dataset (``data.root`` unset), drawn now unless it is there."""
    root = target_dataset_dir(cache_dir)
    if not root.is_dir():
        log.info("Writing the demo dataset (%s) to %s", ", ".join(TARGET_CLASSES), root)
    return write_image_folder(root, TARGET_CLASSES, TARGET_IMAGES_PER_CLASS, DEMO_IMAGE_SIZE, seed=TARGET_SEED)


def planned_target_dataset(data_cfg: DataConfig, cache_dir: str | Path) -> LabelledImages:
    """The target dataset as it will be once drawn: its classes and file names, split as ``image_folder``
    splits them. For checking a sweep before its first job draws the images: no file is read."""
    root = target_dataset_dir(cache_dir)
    examples: dict[str, list[Example]] = {split: [] for split in SPLITS}
    fractions = split_fractions(data_cfg.split)
    for label, shape in enumerate(sorted(TARGET_CLASSES)):  # image_folder sorts its class folders
        for index in range(TARGET_IMAGES_PER_CLASS):
            relative = image_name(shape, index)
            examples[split_of(relative, fractions)].append(Example(relative, label, str(root / relative), 0))
    return LabelledImages("image_folder", root, sorted(TARGET_CLASSES), examples)
