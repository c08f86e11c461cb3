"""Image files -> float RGB batches in [0, 255], decoded exactly as the training input pipeline decodes them.

There is one decoder, :func:`finetune.data.decode.decode_image` (TensorFlow ops only: any JPEG, PNG, GIF
or BMP pixel format to RGB, a bilinear resize to the square input, EXIF orientation applied). Training,
``predict``, export parity and the ``image_bytes`` graph input all go through it, so a model sees the
same pixels everywhere.
"""
from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from finetune.compat import tf, tf1
from finetune.data.decode import decode_image, shared_decode_image
from finetune.errors import FinetuneError

log = logging.getLogger(__name__)

__all__ = ["BatchDecoder", "ImageDecoder", "batch_decoder", "decode_image", "decode_image_batch", "decode_images",
           "image_decoder", "load_images", "read_image_bytes"]


def decode_image_batch(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """A string batch [N] of JPEG/PNG/GIF/BMP bytes -> float32 [N, image_size, image_size, 3] in [0, 255]."""
    images = tf.map_fn(
        lambda encoded: decode_image(encoded, image_size),
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        name="decode_images",
    )
    images.set_shape([None, image_size, image_size, 3])
    return images


def read_image_bytes(paths: Sequence[str | Path]) -> np.ndarray:
    """The raw bytes of each file, as the object array a ``tf.string`` placeholder takes."""
    encoded = np.empty(len(paths), dtype=object)
    for i, path in enumerate(paths):
        try:
            encoded[i] = Path(path).read_bytes()
        except OSError as exc:
            raise FinetuneError(f"Cannot read the image {path}: {exc.strerror or exc}.") from None
    return encoded


def load_images(paths: Sequence[str | Path], image_size: int) -> np.ndarray:
    """Decode and resize image files: float32 [N, image_size, image_size, 3] in [0, 255].

    Each file is decoded on its own, so an unreadable or non-image file is named in the error.
    """
    return decode_images(read_image_bytes(paths), image_size, [str(path) for path in paths])


def decode_images(encoded: Sequence[bytes], image_size: int, names: Sequence[str]) -> np.ndarray:
    """Decode and resize encoded images (``names`` name them in errors): float32 [N, S, S, 3] in [0, 255]."""
    images = np.zeros((len(encoded), image_size, image_size, 3), np.float32)
    decoder = image_decoder(image_size)
    for i, (path, data) in enumerate(zip(names, encoded)):
        pixels = decoder.try_decode(data)
        if pixels is None:
            raise FinetuneError(f"{path} is not a JPEG, PNG, GIF or BMP image TensorFlow can decode.")
        images[i] = pixels
    return images


@functools.lru_cache(maxsize=4)
def image_decoder(image_size: int) -> "ImageDecoder":
    """The process's decoder for ``image_size``: building decode_image's thousand ops takes about a second, so
    every caller (export parity, predict, evaluate) shares one per size."""
    return ImageDecoder(image_size)


class ImageDecoder:
    """:func:`decode_image` built once in a graph of its own and run image by image: a batch of many files
    pays for its thousand ops once, and one file TensorFlow cannot decode fails alone."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        graph = tf.Graph()
        with graph.as_default():
            self._encoded = tf1.placeholder(tf.string, [], name="encoded")
            self._image = decode_image(self._encoded, image_size)
        self._sess = tf1.Session(graph=graph)

    def try_decode(self, data: bytes) -> np.ndarray | None:
        """float32 [S, S, 3] in [0, 255], or None when TensorFlow cannot decode ``data``."""
        try:
            return self._sess.run(self._image, {self._encoded: data})
        except tf.errors.InvalidArgumentError:
            return None


@functools.lru_cache(maxsize=4)
def batch_decoder(image_size: int, batch_size: int, parallel_calls: int) -> "BatchDecoder":
    """The process's batch decoder for ``image_size`` and batches of ``batch_size``, made on first use."""
    return BatchDecoder(image_size, batch_size, parallel_calls)


class BatchDecoder:
    """Encoded images -> batches of pixels, decoded ``parallel_calls`` at a time by tf.data (with prefetch, so
    the next batch decodes while the caller uses this one) in a graph of its own, built once per process: the
    feature cache's extractor feeds them to a run's export tower, so that a run's graph holds neither a
    decoder nor a second backbone for the few times an image misses the cache. One caller at a time."""

    def __init__(self, image_size: int, batch_size: int, parallel_calls: int) -> None:
        graph = tf.Graph()
        with graph.as_default():
            self._encoded = tf1.placeholder(tf.string, [None], name="encoded")
            images = tf.data.Dataset.from_tensor_slices(self._encoded).map(
                lambda encoded: shared_decode_image(encoded, image_size), num_parallel_calls=parallel_calls)
            iterator = tf1.data.make_initializable_iterator(images.batch(batch_size).prefetch(tf.data.AUTOTUNE))
            self._initializer, self._next = iterator.initializer, iterator.get_next()
        graph.finalize()
        self._sess = tf1.Session(graph=graph)
        self._lock = threading.Lock()

    def batches(self, images: Sequence[bytes]) -> Iterator[np.ndarray]:
        """float32 [B, S, S, 3] in [0, 255] batches of ``images`` (encoded), in order."""
        feed = np.empty(len(images), dtype=object)
        feed[:] = list(images)
        with self._lock:
            self._sess.run(self._initializer, {self._encoded: feed})
            while True:
                try:
                    batch = self._sess.run(self._next)
                except tf.errors.OutOfRangeError:
                    return
                yield batch
