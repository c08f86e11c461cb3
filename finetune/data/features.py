"""The bottleneck cache: the backbone's output at the cut, computed once per image and reused.

When a phase trains nothing below the cut, keeps the backbone's BatchNorm frozen and augments nothing,
every epoch would compute the same features again; such a phase trains the head from these instead.

An entry is one image's features under one *model key*: the sha256 of everything that decides them
(the values of every variable below the cut, the backbone's name, parameters, cut, image size and
preprocessing, and the decoder's version). Entries live in ``paths.cache_dir/features/MODEL_KEY/``,
named by the sha256 of the image's encoded bytes, so runs and sweep jobs that share a key share them, and
a changed checkpoint or image never finds a stale one. Each is an ``.npz`` (no pickles) holding the
features, their sha256, the model key, the image hash and a MAC; it is written to a temporary name and
renamed, and checked on read (shape, dtype, checksum, keys, MAC): anything that does not check out is
recomputed. :mod:`finetune.data.feature_fill` fills a split's entries, reading, extracting and writing at
once.

The MAC is an HMAC-SHA256 of the features, the model key and the image hash under the cache's own secret
(``features/secret.key``: 32 random bytes made on first use, readable by its owner only), so an entry
that this cache did not write is never used, however consistent its checksums: someone who can write
into the cache but not read the secret cannot choose the features a run trains on. A secret another user
owns, or that group or others can read, stops the run (:func:`cache_secret`); entries of older versions,
which have no MAC, are recomputed. See docs/security.md.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import stat
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional, Sequence

import numpy as np

from finetune.compat import tf, tf1
from finetune.data.images import batch_decoder
from finetune.errors import FinetuneError
from finetune.files import create_file_once, file_identity, write_bytes_atomically

log = logging.getLogger(__name__)

FEATURES_DIR = "features"
DECODER_VERSION = "decode_image/3"  # bump when the decoder's pixels change: old entries then go unused
SECRET_FILE = "secret.key"  # in paths.cache_dir/features/: the key of the entries' MACs
SECRET_BYTES = 32
MAC_CONTEXT = b"finetune feature cache entry 1\0"  # a MAC made for anything else never checks out here
_UNMADE: set[Path] = set()  # secrets that could not be made, already warned about
VERIFIED_BYTES = 512 * 2**20  # features this process keeps of the entries it checked or wrote (see VerifiedEntries)


class VerifiedEntries:
    """The features of entry files this process has checked (or written) already, by the file's identity (path,
    inode, size, modification time) and the secret they were checked under: each job of an in-process sweep reads
    the same entries, and opening an ``.npz`` and checking its MAC costs far more than the ``stat`` that tells
    the same file from a changed one (and the secret, model key and shape it was checked against). At most
    ``limit`` bytes, the least recently used dropped first."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0
        self._entries: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the fill's reader and writer threads both use it

    @staticmethod
    def identity(path: Path, secret: bytes, key: str, shape: tuple[int, ...]) -> Optional[tuple]:
        """The file's identity and what it was checked against (None: no such file)."""
        found = file_identity(path)
        return None if found is None else (*found, secret, key, shape)

    def get(self, identity: tuple) -> Optional[np.ndarray]:
        with self._lock:
            features = self._entries.get(identity)
            if features is not None:
                self._entries.move_to_end(identity)
            return features

    def put(self, identity: Optional[tuple], features: np.ndarray) -> None:
        if identity is None or features.nbytes > self.limit:
            return
        with self._lock:
            if identity not in self._entries:
                self._entries[identity] = features
                self.size += features.nbytes
            while self.size > self.limit:
                _, dropped = self._entries.popitem(last=False)
                self.size -= dropped.nbytes


_VERIFIED = VerifiedEntries(VERIFIED_BYTES)


def model_key(sess: tf1.Session, variables: Sequence[tf.Variable], description: dict[str, Any]) -> str:
    """The sha256 of the variables' current values (by name) and ``description`` (backbone, cut, size...)."""
    digest = hashlib.sha256(json.dumps({**description, "decoder": DECODER_VERSION}, sort_keys=True).encode())
    ordered = sorted(variables, key=lambda v: v.op.name)
    for variable, value in zip(ordered, sess.run(ordered)):
        digest.update(variable.op.name.encode() + b"\0" + str(value.dtype).encode() + str(value.shape).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def cache_secret(cache_dir: str | Path) -> Optional[bytes]:
    """The secret of the feature cache under ``cache_dir``, made on first use (mode 0600, created once even
    when processes race). None when it is missing and cannot be made (a read-only cache: entries are then
    neither trusted nor written). FinetuneError when the file is a link, not its user's, open to group or
    others, or damaged: entries under it could be forged, and rekeying silently would hide that."""
    path = Path(cache_dir) / FEATURES_DIR / SECRET_FILE
    if not os.path.lexists(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            create_file_once(path, secrets.token_bytes(SECRET_BYTES), 0o600)
        except OSError as error:
            if path not in _UNMADE:  # said once, not once per split
                _UNMADE.add(path)
                log.warning("The feature cache's secret %s cannot be made (%s); features are computed and not "
                            "stored. Point paths.cache_dir at a folder you can write.", path, error.strerror or error)
            return None
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:  # a symlink (ELOOP), no permission
        return _refuse_secret(path, "a symbolic link" if os.path.islink(path) else
                              f"unreadable ({error.strerror or error})")
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        secret = handle.read(SECRET_BYTES + 1)
    if not stat.S_ISREG(status.st_mode):
        return _refuse_secret(path, "not a regular file")
    if status.st_uid != os.getuid():
        return _refuse_secret(path, f"owned by another user (uid {status.st_uid})")
    if status.st_mode & 0o077:
        return _refuse_secret(path, "readable or writable by group or others "
                                    f"(mode {stat.S_IMODE(status.st_mode):04o})")
    if len(secret) != SECRET_BYTES:
        return _refuse_secret(path, f"damaged ({len(secret)} bytes, not {SECRET_BYTES})")
    return secret


def _refuse_secret(path: Path, problem: str) -> NoReturn:
    raise FinetuneError(
        f"The feature cache's secret key {path} is {problem}. Anyone who can read it can write cache entries "
        "that runs would train on, so it must be yours and private. Run `chmod 600` on it if it is yours and "
        "nobody else has read it; otherwise delete it (a new key is made and every entry is recomputed once), or "
        "point paths.cache_dir at a cache of your own.")


def entry_mac(secret: bytes, key: str, image_hash: str, features: np.ndarray) -> bytes:
    """The MAC of one entry: HMAC-SHA256 over the model key, the image hash, the shape and the features."""
    message = (MAC_CONTEXT + bytes.fromhex(key) + bytes.fromhex(image_hash) + str(features.shape).encode() + b"\0"
               + np.ascontiguousarray(features, np.float32).tobytes())
    return hmac.new(secret, message, hashlib.sha256).digest()


class FeatureStore:
    """The entries of one model key: read (checked), written (atomically)."""

    def __init__(self, cache_dir: str | Path, key: str, shape: Sequence[int]) -> None:
        self.folder = Path(cache_dir) / FEATURES_DIR / key
        self.key, self.shape = key, tuple(shape)
        self.unwritable: Optional[OSError] = None  # the first failed write: later ones are not tried
        self.secret = cache_secret(cache_dir)  # None: entries neither trusted nor written

    def path(self, image_hash: str) -> Path:
        return self.folder / f"{image_hash}.npz"

    def read(self, image_hash: str) -> tuple[Optional[np.ndarray], bool]:
        """(the entry's features, or None; whether an entry existed but failed its checks). An entry
        without a MAC (written by an older version) is recomputed without counting as failed."""
        path = self.path(image_hash)
        if self.secret is None:
            return None, False
        identity = VerifiedEntries.identity(path, self.secret, self.key, self.shape)
        if identity is None or not path.is_file():
            return None, False
        known = _VERIFIED.get(identity)
        if known is not None:
            return known, False
        try:
            with np.load(path, allow_pickle=False) as entry:
                if "mac" not in entry.files:
                    return None, False
                features = entry["features"]
                ok = (features.dtype == np.float32 and features.shape == self.shape
                      and entry["sha256"].tobytes() == hashlib.sha256(features.tobytes()).digest()
                      and entry["model_key"].tobytes() == bytes.fromhex(self.key)
                      and entry["image_sha256"].tobytes() == bytes.fromhex(image_hash)
                      and hmac.compare_digest(entry["mac"].tobytes(),
                                              entry_mac(self.secret, self.key, image_hash, features)))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # not an npz, cut short, ...
            log.debug("Feature cache entry %s unreadable: %s", path, error)
            return None, True
        if not ok:
            return None, True
        _VERIFIED.put(identity, features)
        return features, False

    def write(self, image_hash: str, features: np.ndarray) -> None:
        """Store one entry. A cache that cannot be written (read-only, full) costs reuse, not the run:
        the features computed are used all the same, and the failure is said once."""
        if self.unwritable is not None or self.secret is None:
            return
        features = np.ascontiguousarray(features, np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, features=features,
                 sha256=np.frombuffer(hashlib.sha256(features.tobytes()).digest(), np.uint8),
                 model_key=np.frombuffer(bytes.fromhex(self.key), np.uint8),
                 image_sha256=np.frombuffer(bytes.fromhex(image_hash), np.uint8),
                 mac=np.frombuffer(entry_mac(self.secret, self.key, image_hash, features), np.uint8))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(self.path(image_hash), buffer.getvalue())
            _VERIFIED.put(VerifiedEntries.identity(self.path(image_hash), self.secret, self.key, self.shape), features)
        except OSError as error:
            self.unwritable = error
            log.warning("The feature cache %s cannot be written (%s); training goes on from features computed now, "
                        "but later runs will compute them again. Point paths.cache_dir at a writable folder with room.",
                        self.folder, error.strerror or error)


class FeatureExtractor:
    """Computes features at the cut: the encoded images decoded in batches (the process's
    :func:`finetune.data.images.batch_decoder`, made when an image first misses the cache) and fed to the export
    tower, whose cut is fetched: the frozen model's own computation, in inference mode."""

    def __init__(self, pixels: tf.Tensor, cut: tf.Tensor, image_size: int, batch_size: int,
                 parallel_calls: int) -> None:
        self.pixels, self.cut = pixels, cut
        self.decoding = (image_size, batch_size, parallel_calls)

    def batches(self, sess: tf1.Session, images: Sequence[bytes]) -> Iterator[np.ndarray]:
        """The features of ``images`` (encoded), in order, one batch of ``data.eval_batch_size`` at a time."""
        for pixels in batch_decoder(*self.decoding).batches(images):
            yield sess.run(self.cut, {self.pixels: pixels})