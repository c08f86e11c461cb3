"""Image-folder datasets: ``root/<class_name>/*.jpg|*.png``, split deterministically by file name.

Each file's split depends on a hash of its path relative to ``root`` and nothing else, so adding
images never moves existing ones between train, val and test. Before training, :func:`find_bad_images`
reads every file's header (never its pixels) and the run refuses to start on a file that would stop it
later: not an image, cut short, empty, too large, or with a name that is not UTF-8.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image

from finetune.compat import tf
from finetune.config import DataConfig, SplitConfig
from finetune.errors import FinetuneError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# What TensorFlow's decode_image reads, by PIL's name for it.
DECODABLE = {"JPEG": "JPEG", "PNG": "PNG", "GIF": "GIF", "BMP": "BMP", "MPO": "JPEG"}  # MPO: a camera's multi-JPEG
TRAILER_BYTES = 1024  # how much of a file's end the truncation check reads
SHOWN = 10  # bad files named in the message


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
            if not utf8_name(relative):  # named by find_bad_images below; its split does not matter
                files["train"].append((str(image), label))
                continue
            files[split_of(relative, data_cfg.split)].append((str(image), label))
    bad = find_bad_images([Path(path) for split in SPLITS for path, _ in files[split]], data_cfg.max_pixels)
    if bad:
        more = f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise FinetuneError(
            f"data.root={str(root)!r} holds {len(bad)} file(s) that cannot be trained on (read from their headers "
            "before training):\n" + "\n".join(f"  {line}" for line in bad[:SHOWN]) + more + "\nRemove or "
            "replace them (or re-save them as JPEG/PNG), or raise data.max_pixels for large images.")
    if len(class_names) < 2:
        raise FinetuneError(
            f"data.root={str(root)!r} holds {len(class_names)} class folder(s) with images "
            f"({', '.join(sorted(extensions))}); a classifier needs at least two: root/<class_name>/<image>."
        )
    if not files["train"]:
        raise FinetuneError(
            f"No image of data.root={str(root)!r} falls in the training split (data.split.train="
            f"{data_cfg.split.train}). Add images or raise data.split.train."
        )
    if not files["val"]:
        raise FinetuneError(
            f"No image of data.root={str(root)!r} falls in the validation split (data.split.val="
            f"{data_cfg.split.val}). Add images or raise data.split.val."
        )
    return ImageFolder(root=root, class_names=class_names, files=files)


def utf8_name(path: str) -> bool:
    """Whether a path (as os.listdir gives it: undecodable bytes as surrogates) is valid UTF-8, which
    TensorFlow's string tensors and the JSON reports need."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def find_bad_images(paths: Iterable[Path], max_pixels: int) -> list[str]:
    """One line per file that training would fail on, naming it and why; [] when all are fine.

    Reads each file's header with PIL (format and size, no pixels) and its last bytes: a file that is
    not a JPEG/PNG/GIF/BMP, is empty, is cut short (its format's end marker missing), holds more
    than ``max_pixels`` pixels, or whose name is not UTF-8. The one place such files are found (a
    later option may skip them instead of refusing)."""
    bad = []
    for path in paths:
        problem = image_problem(path, max_pixels)
        if problem:
            bad.append(f"{shown_name(path)}: {problem}")
    return bad


def shown_name(path: Path) -> str:
    """``path`` printable whatever its bytes (undecodable ones as \\xNN escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def image_problem(path: Path, max_pixels: int) -> Optional[str]:
    """Why one file cannot be trained on (see :func:`find_bad_images`), or None."""
    if not utf8_name(str(path)):
        return "its name is not valid UTF-8; rename it"
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # reads the header only
                kind, (width, height) = image.format, image.size
        with open(path, "rb") as handle:
            handle.seek(max(0, size - TRAILER_BYTES))
            tail = handle.read()
    except Image.DecompressionBombError:
        return f"more pixels than PIL reads, over data.max_pixels={max_pixels}"
    except Image.UnidentifiedImageError:  # no image format PIL knows
        return "not an image (no JPEG, PNG, GIF or BMP header)"
    except OSError as error:
        if "truncated" in str(error).lower():  # cut short inside its header
            return "truncated image (its end is missing)"
        return f"cannot be read ({error.strerror or error})"
    except (SyntaxError, ValueError, EOFError) as error:  # what PIL raises for a header it cannot parse
        return f"not a readable image ({error})"
    if kind not in DECODABLE:
        return f"a {kind} image, which TensorFlow cannot decode (JPEG, PNG, GIF, BMP only)"
    if width * height > max_pixels:
        return f"{width}x{height} = {width * height:,} pixels, over data.max_pixels={max_pixels:,}"
    if not complete_image(DECODABLE[kind], tail, size, path):
        return f"truncated {DECODABLE[kind]} (its end is missing)"
    return None


def complete_image(kind: str, tail: bytes, size: int, path: Path) -> bool:
    """Whether the file ends as its format says it must: a cut-short download fails this."""
    if kind == "JPEG":
        return b"\xff\xd9" in tail  # the End Of Image marker (some writers pad after it)
    if kind == "PNG":
        return b"IEND" in tail
    if kind == "GIF":
        return b"\x3b" in tail.rstrip(b"\x00")[-1:]  # the trailer byte
    with open(path, "rb") as handle:  # BMP: the file size its header declares
        header = handle.read(6)
    return len(header) == 6 and size >= int.from_bytes(header[2:6], "little")


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
        if any(entry.type == "flip_left_right" for entry in data_cfg.augment):
            image = tf.image.stateless_random_flip_left_right(image, seed=tf.stack([tf.constant(seed, tf.int64),
                                                                                     position]))
        return image, label

    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat().enumerate()
    dataset = dataset.skip(tf.cast(skip_batches, tf.int64) * batch_size)
    dataset = dataset.map(load, num_parallel_calls=data_cfg.num_parallel_calls)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(2)
