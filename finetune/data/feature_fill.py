"""Filling the bottleneck cache for one split, its stages overlapped.

Three threads work at once, so that the backbone, the slowest stage, never waits for the others:

- a *reader* reads each image's encoded bytes, hashes them and looks its entry up (:class:`FeatureStore`),
  gathering the images without a usable entry into chunks; it prepares the next chunk while the
  current one is extracted;
- the calling thread runs the extractor over a chunk (decoding in parallel inside tf.data, then the
  backbone to the cut), one batch at a time;
- a *writer* stores each batch's entries while the next batch is extracted, at most
  :data:`WRITES_AHEAD` batches behind.

What is computed is what a sequential fill computes: the same images in the same batches, each entry
written once, atomically and under the cache's MAC. An error in the reader or the writer (an image gone,
anything unexpected) is raised in the calling thread; a cache that cannot be written (read-only, disk
full) is said once by the store and costs reuse, not the run.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Protocol, Sequence

import numpy as np

from finetune.compat import tf1
from finetune.data.examples import Example, FileReader, LabelledImages
from finetune.data.features import FeatureStore
from finetune.files import IdentityMemo, file_identity

log = logging.getLogger(__name__)

MIB = 2**20
# Encoded bytes extracted per chunk (one tf.data initialisation each: about 0.25 s of CPU for the decoder's
# function, so a chunk should be large), and at most two chunks are held: the one being extracted and the next.
COMPUTE_BYTES = 128 * MIB
WRITES_AHEAD = 4  # batches of computed features waiting for the writer
_HASHES = IdentityMemo()  # image file identity -> sha256 of its bytes


@dataclass
class FeatureStats:
    """What one pass over a split found: entries reused, computed, and found bad (then recomputed)."""

    reused: int = 0
    computed: int = 0
    rejected: int = 0


class Extractor(Protocol):
    def batches(self, sess: tf1.Session, images: Sequence[bytes]) -> Iterator[np.ndarray]:
        """The features of ``images`` (encoded), in order, one batch at a time."""


Missing = tuple[int, str, bytes]  # (example index, image hash, encoded bytes): an image to extract


def cached_features(sess: tf1.Session, store: FeatureStore, extractor: Extractor, data: LabelledImages,
                    examples: Sequence[Example]) -> tuple[np.ndarray, FeatureStats]:
    """The features of ``examples`` in order, [N, *shape] float32: read from the store where an entry
    checks out, computed (and stored) where none does."""
    features = np.zeros((len(examples), *store.shape), np.float32)
    stats = FeatureStats()
    chunks = _missing_chunks(store, _hashed_images(data, examples), features, stats)
    with ThreadPoolExecutor(1, thread_name_prefix="feature-cache-read") as reader, EntryWriter(store) as writer:
        upcoming = reader.submit(next, chunks, None)
        while (chunk := upcoming.result()) is not None:
            upcoming = reader.submit(next, chunks, None)  # read and look up the next chunk meanwhile
            done = 0
            for batch in extractor.batches(sess, [encoded for _, _, encoded in chunk]):
                rows = chunk[done:done + len(batch)]
                done += len(batch)
                for (index, _, _), row in zip(rows, batch):
                    features[index] = row
                writer.put([(image_hash, row) for (_, image_hash, _), row in zip(rows, batch)])
            if done != len(chunk):
                raise RuntimeError(f"the feature extractor returned {done} rows for {len(chunk)} images")
            stats.computed += done
    return features, stats


def _hashed_images(data: LabelledImages, examples: Sequence[Example]) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """Each example's image as (sha256 of its bytes, a function that gives the bytes). An image file hashed once
    in this process is not read again while its identity holds (a sweep's jobs look the same images up); other
    sources' images are read in one pass, in order."""
    if not isinstance(data.reader, FileReader):
        for encoded in data.reader.read_bytes(examples):
            yield hashlib.sha256(encoded).hexdigest(), lambda encoded=encoded: encoded
        return
    for example in examples:
        read = functools.partial(_read_one, data.reader, example)
        identity = file_identity(example.reference)
        image_hash = _HASHES.get(identity)
        if image_hash is None:
            encoded = read()
            image_hash = hashlib.sha256(encoded).hexdigest()
            _HASHES.put(identity, image_hash)
            read = lambda encoded=encoded: encoded  # noqa: E731  (read already)
        yield image_hash, read


def _read_one(reader: FileReader, example: Example) -> bytes:
    return next(iter(reader.read_bytes([example])))


def _missing_chunks(store: FeatureStore, images: Iterable[tuple[str, Callable[[], bytes]]], features: np.ndarray,
                    stats: FeatureStats) -> Iterator[list[Missing]]:
    """Runs on the reader thread: looks each image's entry up by its hash (:func:`_hashed_images`); fills
    ``features`` where one checks out (counted in ``stats``) and yields the others, read, in chunks of about
    :data:`COMPUTE_BYTES`."""
    chunk: list[Missing] = []
    size = 0
    for index, (image_hash, read) in enumerate(images):
        found, rejected = store.read(image_hash)
        stats.rejected += rejected
        if found is not None:
            features[index] = found
            stats.reused += 1
            continue
        encoded = read()
        chunk.append((index, image_hash, encoded))
        size += len(encoded)
        if size >= COMPUTE_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class EntryWriter:
    """Writes entries on its own thread, at most :data:`WRITES_AHEAD` batches behind; whatever goes wrong
    there is raised in the thread that puts (or closes). Use as a context manager: leaving it waits for
    every write (or, on an error, for the one under way and drops the rest)."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="feature-cache-write")
        self._pending: deque[Future] = deque()

    def put(self, entries: list[tuple[str, np.ndarray]]) -> None:
        """Queue ``entries`` (image hash, features) for writing; waits while the writer is too far behind."""
        if self.store.secret is None or self.store.unwritable is not None:
            return  # nothing is written (the store said why once)
        self._pending.append(self._pool.submit(self._write, entries))
        while len(self._pending) > WRITES_AHEAD:
            self._pending.popleft().result()

    def _write(self, entries: list[tuple[str, np.ndarray]]) -> None:
        for image_hash, features in entries:
            self.store.write(image_hash, features)

    def close(self) -> None:
        """Wait for every queued write; raise the first error one met."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> EntryWriter:
        return self

    def __exit__(self, kind: Optional[type], error: Optional[BaseException], traceback: object) -> None:
        if error is None:
            self.close()
        else:  # the caller's error wins: stop writing, but never leave a thread behind
            self._pending.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
