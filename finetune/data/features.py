"""The bottleneck cache: the backbone's output at the cut, computed once per image and reused.

When a phase trains nothing below the cut, keeps the backbone's BatchNorm frozen and augments nothing,
every epoch would compute the same features again; such a phase trains the head from these instead.

An entry is one image's features under one *model key*: the sha256 of everything that decides them
(the values of every variable below the cut, the backbone's name, parameters, cut, image size and
preprocessing, and the decoder's version). Entries live in ``paths.cache_dir/features/MODEL_KEY/``,
named by the sha256 of the image's encoded bytes, so runs and sweep jobs that share a key share them, and
a changed checkpoint or image never finds a stale one. Each is an ``.npz`` (no pickles) holding the
features, their sha256, the model key and the image hash; it is written to a temporary name and renamed,
and checked on read (shape, dtype, checksum, keys): anything that does not check out is recomputed.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from finetune.compat import tf, tf1
from finetune.data.examples import Example, LabelledImages
from finetune.files import write_bytes_atomically

log = logging.getLogger(__name__)

FEATURES_DIR = "features"
DECODER_VERSION = "decode_image/3"  # bump when the decoder's pixels change: old entries then go unused
COMPUTE_CHUNK = 256  # images whose encoded bytes are held at once while computing features


@dataclass
class FeatureStats:
    """What one pass over a split found: entries reused, computed, and found bad (then recomputed)."""

    reused: int = 0
    computed: int = 0
    rejected: int = 0


def model_key(sess: tf1.Session, variables: Sequence[tf.Variable], description: dict[str, Any]) -> str:
    """The sha256 of the variables' current values (by name) and ``description`` (backbone, cut, size...)."""
    digest = hashlib.sha256(json.dumps({**description, "decoder": DECODER_VERSION}, sort_keys=True).encode())
    ordered = sorted(variables, key=lambda v: v.op.name)
    for variable, value in zip(ordered, sess.run(ordered)):
        digest.update(variable.op.name.encode() + b"\0" + str(value.dtype).encode() + str(value.shape).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


class FeatureStore:
    """The entries of one model key: read (checked), written (atomically)."""

    def __init__(self, cache_dir: str | Path, key: str, shape: Sequence[int]) -> None:
        self.folder = Path(cache_dir) / FEATURES_DIR / key
        self.key, self.shape = key, tuple(shape)
        self.unwritable: Optional[OSError] = None  # the first failed write: later ones are not tried

    def path(self, image_hash: str) -> Path:
        return self.folder / f"{image_hash}.npz"

    def read(self, image_hash: str) -> tuple[Optional[np.ndarray], bool]:
        """(the entry's features, or None; whether an entry existed but failed its checks)."""
        path = self.path(image_hash)
        if not path.is_file():
            return None, False
        try:
            with np.load(path, allow_pickle=False) as entry:
                features = entry["features"]
                ok = (features.dtype == np.float32 and features.shape == self.shape
                      and entry["sha256"].tobytes() == hashlib.sha256(features.tobytes()).digest()
                      and entry["model_key"].tobytes() == bytes.fromhex(self.key)
                      and entry["image_sha256"].tobytes() == bytes.fromhex(image_hash))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # not an npz, cut short, ...
            log.debug("Feature cache entry %s unreadable: %s", path, error)
            return None, True
        return (features, False) if ok else (None, True)

    def write(self, image_hash: str, features: np.ndarray) -> None:
        """Store one entry. A cache that cannot be written (read-only, full) costs reuse, not the run:
        the features computed are used all the same, and the failure is said once."""
        if self.unwritable is not None:
            return
        features = np.ascontiguousarray(features, np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, features=features,
                 sha256=np.frombuffer(hashlib.sha256(features.tobytes()).digest(), np.uint8),
                 model_key=np.frombuffer(bytes.fromhex(self.key), np.uint8),
                 image_sha256=np.frombuffer(bytes.fromhex(image_hash), np.uint8))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(self.path(image_hash), buffer.getvalue())
        except OSError as error:
            self.unwritable = error
            log.warning("The feature cache %s cannot be written (%s); training goes on from features computed now, "
                        "but later runs will compute them again. Point paths.cache_dir at a writable folder with room.",
                        self.folder, error.strerror or error)


class FeatureExtractor:
    """The graph that computes features: encoded images fed in chunks, decoded in parallel by tf.data,
    run through the backbone to the cut in inference mode (the same computation as the frozen tower)."""

    def __init__(self, encoded: tf.Tensor, initializer: tf.Operation, features: tf.Tensor) -> None:
        self.encoded, self.initializer, self.features = encoded, initializer, features

    def run(self, sess: tf1.Session, images: Sequence[bytes]) -> np.ndarray:
        feed = np.empty(len(images), dtype=object)
        feed[:] = list(images)
        sess.run(self.initializer, {self.encoded: feed})
        batches = []
        while True:
            try:
                batches.append(sess.run(self.features))
            except tf.errors.OutOfRangeError:
                return np.concatenate(batches)


def cached_features(sess: tf1.Session, store: FeatureStore, extractor: FeatureExtractor, data: LabelledImages,
                    examples: Sequence[Example]) -> tuple[np.ndarray, FeatureStats]:
    """The features of ``examples`` in order, [N, *shape] float32: read from the store where an entry
    checks out, computed (and stored) where none does."""
    features = np.zeros((len(examples), *store.shape), np.float32)
    stats = FeatureStats()
    missing: list[tuple[int, str, bytes]] = []

    def compute() -> None:
        computed = extractor.run(sess, [encoded for _, _, encoded in missing])
        for (index, image_hash, _), row in zip(missing, computed):
            store.write(image_hash, row)
            features[index] = row
        stats.computed += len(missing)
        missing.clear()

    for index, encoded in enumerate(data.reader.read_bytes(examples)):
        image_hash = hashlib.sha256(encoded).hexdigest()
        found, rejected = store.read(image_hash)
        stats.rejected += rejected
        if found is not None:
            features[index] = found
            stats.reused += 1
        else:
            missing.append((index, image_hash, encoded))
            if len(missing) == COMPUTE_CHUNK:
                compute()
    if missing:
        compute()
    return features, stats

