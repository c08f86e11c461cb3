"""Image-folder datasets: ``root/<class_name>/*.jpg|*.png``, split deterministically by file name.

Each file's split depends on a hash of its path relative to ``root`` and nothing else, so adding
images never moves existing ones between train, val and test.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.compat import tf
from finetune.config import DataConfig, SplitConfig
from finetune.errors import FinetuneError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class ImageFolder:
    root: Path
    class_names: list[str]  # sorted; the label of a class is its index here
    files: dict[str, list[tuple[str, int]]]  # split -> [(path, label)]

    def summary(self) -> str:
        counts = ", ".join(f"{split} {len(self.files[split])}" for split in SPLITS)
        return f"{len(self.class_names)} classes from {self.root} ({counts} images)"


def split_of(relative_path: str, split: SplitConfig) -> str:
    """The split of one file: a stable hash of its relative path, compared with the fractions."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64
    if position < split.train:
        return "train"
    if position < split.train + split.val:
        return "val"
    return "test"


def scan_image_folder(root: str | Path, data_cfg: DataConfig) -> ImageFolder:
    """List images and classes under ``root`` and assign each image to its split."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FinetuneError(
            f"Config key 'data.root' points to {str(root)!r}, which is not a directory. Give a folder laid "
            "out as root/<class_name>/<image>.jpg, or leave data.root unset to use the built-in demo data."
        )
    extensions = {ext.lower() for ext in data_cfg.extensions}
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    class_names = []
    for class_dir in class_dirs:
        images = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in extensions and p.is_file())
        if not images:
            continue
        label = len(class_names)
        class_names.append(class_dir.name)
        for image in images:
            relative = image.relative_to(root).as_posix()
            files[split_of(relative, data_cfg.split)].append((str(image), label))
    if len(class_names) < 2:
        raise FinetuneError(
            f"data.root={str(root)!r} holds {len(class_names)} class folder(s) with images "
            f"({', '.join(sorted(extensions))}); a classifier needs at least two: root/<class_name>/<image>."
        )
    if not files["val"]:
        raise FinetuneError(
            f"No image of data.root={str(root)!r} falls in the validation split (data.split.val="
            f"{data_cfg.split.val}). Add images or raise data.split.val."
        )
    return ImageFolder(root=root, class_names=class_names, files=files)


def decode_image(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes -> float32 RGB in [0, 255], bilinearly resized to image_size^2."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    image.set_shape([image_size, image_size, 3])
    return image


def make_dataset(
    files: list[tuple[str, int]], image_size: int, batch_size: int, training: bool, data_cfg: DataConfig, seed: int,
    skip_batches: tf.Tensor | int = 0,
) -> tf.data.Dataset:
    """Training: (pixels, labels) batches, shuffled, repeated, full batches. Otherwise (evaluation):
    (pixels, labels, paths) batches, one pass in order; the paths name each image in reports.

    The training sequence depends on the seed alone: the order comes from the seeded shuffle and each
    image's random flip from a stateless draw keyed by its position in the sequence. So a resumed run
    that skips the ``skip_batches`` batches it already trained on sees exactly what an uninterrupted
    run would have seen next (the skip happens before any image is read).
    """
    paths = tf.constant([path for path, _ in files])
    labels = tf.constant(np.array([label for _, label in files], dtype=np.int64))
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    if not training:
        dataset = dataset.map(lambda path, label: (decode_image(tf.io.read_file(path), image_size), label, path),
                              num_parallel_calls=data_cfg.num_parallel_calls)
        return dataset.batch(batch_size).prefetch(2)

    def load(position: tf.Tensor, example: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        path, label = example
        image = decode_image(tf.io.read_file(path), image_size)
        if data_cfg.random_flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=tf.stack([tf.constant(seed, tf.int64),
                                                                                     position]))
        return image, label

    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat().enumerate()
    dataset = dataset.skip(tf.cast(skip_batches, tf.int64) * batch_size)
    dataset = dataset.map(load, num_parallel_calls=data_cfg.num_parallel_calls)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(2)
