"""Pretrained checkpoints by name: ``restore.checkpoint=zoo:mobilenet_v1_1.0_224``.

:data:`ZOO` lists the published TF-Slim model-zoo tarballs for the backbones this package
builds. :func:`resolve_zoo` downloads one (with pooch) into ``<cache_dir>/zoo/``, checks it,
unpacks it into ``<cache_dir>/zoo/<NAME>/`` and returns the checkpoint prefix; later calls use
that folder without the network. The check: the tarball's sha256 where it is known, and always
that the unpacked checkpoint opens and holds variables under the backbone's scope. The sha256
of the downloaded tarball is written to ``SOURCE.json`` beside the unpacked files.

Sources of the table (checked, not guessed):

* TF-Slim README, "Pre-trained Models" (tensorflow/models, research/slim/README.md):
  the Inception, ResNet and VGG tarballs (ResNet v2 dated 2017_04_14, the others 2016_08_28).
* research/slim/nets/mobilenet_v1.md: the 16 MobileNet v1 float tarballs of mobilenet_v1_2018_08_02
  (a multiplier of 0.5 is spelt ``0.5`` in the file names).
* research/slim/nets/mobilenet/README.md: the MobileNet v2 tarballs on storage.googleapis.com.
* sha256 values: OpenVINO Open Model Zoo ``models/public/*/model.yml``, only where their
  ``source`` is the very URL below; Google publishes no hashes.

Old tarballs (2016/2017) hold a single-file V1 checkpoint (``inception_v3.ckpt``, no ``.index``);
MobileNet tarballs hold a V2 checkpoint (``.index`` + ``.data-*``). Both are returned as the
prefix that ``tf.train.load_checkpoint`` and ``Saver.restore`` accept.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from finetune.compat import tf
from finetune.errors import FinetuneError, closest, first_line
from finetune.logs import quieted
from finetune.vocab import ZOO_PREFIX

log = logging.getLogger(__name__)

ZOO_URL_ENV = "FINETUNE_ZOO_URL"  # a base URL that replaces the published one: <base>/<file name>
DOWNLOAD_TIMEOUT_S = 10.0  # per connect and per read; no network fails within about this long
SOURCE_FILE = "SOURCE.json"
KEY = "restore.checkpoint"


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint tarball and the backbone configuration it fits."""

    name: str  # what follows ``zoo:``
    url: str  # the published tarball
    checkpoint: str  # checkpoint prefix inside the tarball, e.g. "mobilenet_v1_1.0_224.ckpt"
    backbone: str  # registered backbone name (backbone.name)
    scope: str  # the backbone's top variable scope: an unpacked checkpoint must hold variables under it
    params: dict[str, Any] = field(default_factory=dict)  # backbone.params it needs
    image_size: int = 224  # the size it was trained at (backbone.image_size)
    num_classes: int = 1001  # of its original classifier
    sha256: Optional[str] = None  # of the tarball, where a public source records it

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# --- the table ----------------------------------------------------------------------------------
_SLIM = "http://download.tensorflow.org/models"
_MOBILENET_V1 = f"{_SLIM}/mobilenet_v1_2018_08_02"
_MOBILENET_V2 = "https://storage.googleapis.com/mobilenet_v2/checkpoints"

# sha256 of the tarball, from Open Model Zoo model.yml files whose source is the same URL.
_KNOWN_SHA256 = {
    "mobilenet_v1_1.0_224": "2fadeabb9968ec6833bee903900dda6e61b3947200535874ce2fe42a8493abc0",
    "mobilenet_v1_0.5_224": "98cf7a39552f73920cb99617cfa9b88d5732a87abf9ec14f7cc7f3ade1db0aaa",
    "mobilenet_v1_0.25_128": "879ddc3e0857f3611b5cf248e36de2288c7a11ea8c2ed8a8bdded635e6010dfe",
    "mobilenet_v2_1.0_224": "318084bc1b63d6d7b854553e09cdf77078b1c0168be27c59a0d44253b5ed49dc",
    "inception_v1": "7a620c430fcaba8f8f716241f5148c4c47c035cce4e49ef02cfbe6cd1adf96a6",
}


def _mobilenet_v1(multiplier: str, size: int) -> ZooEntry:
    name = f"mobilenet_v1_{multiplier}_{size}"
    return ZooEntry(name, f"{_MOBILENET_V1}/{name}.tgz", f"{name}.ckpt", "mobilenet_v1", "MobilenetV1",
                    {"depth_multiplier": float(multiplier)}, image_size=size)


def _mobilenet_v2(multiplier: str, size: int) -> ZooEntry:
    name = f"mobilenet_v2_{multiplier}_{size}"
    return ZooEntry(name, f"{_MOBILENET_V2}/{name}.tgz", f"{name}.ckpt", "mobilenet_v2", "MobilenetV2",
                    {"depth_multiplier": float(multiplier)}, image_size=size)


def _slim(name: str, date: str, image_size: int = 224, num_classes: int = 1001) -> ZooEntry:
    scope = "InceptionV" + name[-1] if name.startswith("inception") else name  # resnet_v1_50/, vgg_16/
    return ZooEntry(name, f"{_SLIM}/{name}_{date}.tar.gz", f"{name}.ckpt", name, scope,
                    image_size=image_size, num_classes=num_classes)


def _build_table() -> dict[str, ZooEntry]:
    entries = [
        *(_mobilenet_v1(m, s) for m in ("1.0", "0.75", "0.5", "0.25") for s in (224, 192, 160, 128)),
        _mobilenet_v2("1.0", 224),
        _mobilenet_v2("1.4", 224),
        _slim("inception_v1", "2016_08_28"),
        _slim("inception_v2", "2016_08_28"),
        _slim("inception_v3", "2016_08_28", image_size=299),
        # ResNet v1 and VGG were converted from Caffe: 1000 classes, no background class.
        *(_slim(f"resnet_v1_{n}", "2016_08_28", num_classes=1000) for n in (50, 101, 152)),
        # ResNet v2 was trained with Inception preprocessing at 299x299.
        *(_slim(f"resnet_v2_{n}", "2017_04_14", image_size=299) for n in (50, 101, 152)),
        _slim("vgg_16", "2016_08_28", num_classes=1000),
        _slim("vgg_19", "2016_08_28", num_classes=1000),
    ]
    return {entry.name: replace(entry, sha256=_KNOWN_SHA256.get(entry.name)) for entry in entries}


ZOO: dict[str, ZooEntry] = _build_table()


# --- lookup ---------------------------------------------------------------------------------------
def is_zoo_spec(spec: Optional[str]) -> bool:
    return isinstance(spec, str) and spec.startswith(ZOO_PREFIX)


def get_zoo_entry(spec: str) -> ZooEntry:
    """The entry for ``zoo:NAME`` (or ``NAME``); an unknown name lists the closest valid ones."""
    name = spec[len(ZOO_PREFIX):] if is_zoo_spec(spec) else spec
    try:
        return ZOO[name]
    except KeyError:
        raise FinetuneError(
            f"Config key '{KEY}' is {spec!r}, but {name!r} is not a published TF-Slim zoo checkpoint. "
            f"Did you mean one of {closest(name, ZOO)}? Known names: {', '.join(ZOO)}. "
            f"For any other checkpoint set {KEY}=PATH/model.ckpt."
        ) from None


def zoo_url(entry: ZooEntry, base_url: Optional[str] = None) -> str:
    """The published URL, or ``<base>/<file name>`` under ``base_url`` or ``$FINETUNE_ZOO_URL``."""
    base = base_url or os.environ.get(ZOO_URL_ENV)
    return f"{base.rstrip('/')}/{entry.file_name}" if base else entry.url


# --- resolve --------------------------------------------------------------------------------------
def zoo_folder(entry: ZooEntry, cache_dir: str | Path) -> Path:
    """Where ``entry``'s checkpoint is unpacked: ``paths.cache_dir/zoo/NAME``."""
    return Path(cache_dir).expanduser() / "zoo" / entry.name


def resolve_zoo(spec: str, cache_dir: str, base_url: Optional[str] = None) -> str:
    """The checkpoint prefix for ``zoo:NAME``: downloaded, checked and unpacked once, then cached."""
    entry = get_zoo_entry(spec)
    folder = zoo_folder(entry, cache_dir)
    zoo_dir = folder.parent
    cached = _cached_checkpoint(entry, folder)
    if cached is not None:
        log.info("Zoo checkpoint %s: using %s (cached)", entry.name, cached)
        return cached
    url = zoo_url(entry, base_url)
    tarball = _download(entry, url, zoo_dir)
    try:
        prefix = _unpack(entry, tarball, folder, url)
    finally:
        tarball.unlink(missing_ok=True)  # unpacked, or unusable: either way not kept
    log.info("Zoo checkpoint %s: unpacked into %s", entry.name, folder)
    return prefix


def cached_checkpoint(entry: ZooEntry, cache_dir: str | Path) -> Optional[str]:
    """The checkpoint of ``entry`` already in the cache, or None; never downloads (the sweep check uses it)."""
    return _cached_checkpoint(entry, zoo_folder(entry, cache_dir))


def _cached_checkpoint(entry: ZooEntry, folder: Path) -> Optional[str]:
    """The checkpoint already unpacked in ``folder`` (by us or by hand), or None."""
    if not folder.is_dir():
        return None
    source = _read_source(folder)
    recorded = source.get("sha256")
    if entry.sha256 and recorded and recorded != entry.sha256:
        log.warning("Zoo checkpoint %s: %s was unpacked from a tarball with sha256 %s, but the published one "
                    "has %s; downloading it again.", entry.name, folder, recorded, entry.sha256)
        return None
    prefix = _find_checkpoint(entry, folder)
    if prefix is None:
        raise FinetuneError(
            f"Config key '{KEY}' is 'zoo:{entry.name}', and the cache folder {str(folder)!r} exists but holds no "
            f"{entry.checkpoint} (.index/.data-* or a single file). Delete that folder to download it again, or "
            f"unpack {entry.file_name} into it (tar -xzf {entry.file_name} -C {folder})."
        )
    _verify(entry, prefix, where=str(folder), fix=f"Delete {folder} and run again to download it afresh.")
    return str(prefix)


def _read_source(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}  # unpacked by hand, or an unreadable record: the checkpoint check still applies


def _find_checkpoint(entry: ZooEntry, root: Path) -> Optional[Path]:
    """``root/**/NAME.ckpt`` as a V2 prefix (``NAME.ckpt.index`` exists) or a V1 single file."""
    for index in sorted(root.rglob(f"{entry.checkpoint}.index")):
        return index.with_name(entry.checkpoint)
    for path in sorted(root.rglob(entry.checkpoint)):
        if path.is_file():
            return path
    return None


def _verify(entry: ZooEntry, prefix: Path, where: str, fix: str) -> int:
    """Open the checkpoint and check it holds variables under the backbone's top scope."""
    scope = entry.scope
    try:
        shapes = tf.train.load_checkpoint(str(prefix)).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as error:
        raise FinetuneError(
            f"Config key '{KEY}' is 'zoo:{entry.name}', but the checkpoint unpacked in {where!r} cannot be read "
            f"({error.__class__.__name__}: {first_line(error)}). {fix}"
        ) from None
    inside = [name for name in shapes if name.startswith(f"{scope}/")]
    if not inside:
        raise FinetuneError(
            f"Config key '{KEY}' is 'zoo:{entry.name}', but the checkpoint in {where!r} holds {len(shapes)} "
            f"variables and none under '{scope}/' (backbone '{entry.backbone}'): it is not the published "
            f"{entry.file_name}. {fix}"
        )
    return len(inside)


# --- download and unpack --------------------------------------------------------------------------
def _download(entry: ZooEntry, url: str, zoo_dir: Path) -> Path:
    """``zoo_dir/<file name>``, fetched with pooch; pooch writes a temporary file and moves it on success."""
    import pooch
    import requests

    downloader = pooch.HTTPDownloader(progressbar=True, timeout=DOWNLOAD_TIMEOUT_S)
    known_hash = f"sha256:{entry.sha256}" if entry.sha256 else None
    log.info("Zoo checkpoint %s: downloading %s into %s", entry.name, url, zoo_dir)
    try:
        # pooch's own INFO lines (and its advice to developers about known_hash) stay out of the run log.
        with quieted(pooch.get_logger(), logging.WARNING):
            path = pooch.retrieve(url, known_hash=known_hash, fname=entry.file_name, path=zoo_dir,
                                  downloader=downloader)
    except requests.exceptions.RequestException as error:
        hint = (f"The server has no such file: check {ZOO_URL_ENV}." if isinstance(error, requests.exceptions.HTTPError)
                else "Is this machine offline or behind a proxy?")
        raise FinetuneError(
            f"Config key '{KEY}' is 'zoo:{entry.name}', but {url} could not be downloaded "
            f"({error.__class__.__name__}: {first_line(error)[:300]}). {hint} "
            + _manual_steps(entry, url, zoo_dir)
        ) from None
    except ValueError as error:  # pooch: the file's hash is not the known one (pooch has deleted it)
        raise FinetuneError(
            f"Config key '{KEY}' is 'zoo:{entry.name}', but the file downloaded from {url} is not the published "
            f"one (pooch: {first_line(error)}) Check the download source ({ZOO_URL_ENV}, proxies). "
            + _manual_steps(entry, url, zoo_dir)
        ) from None
    except OSError as error:
        raise FinetuneError(
            f"Config key '{KEY}' is 'zoo:{entry.name}': could not write the download into {str(zoo_dir)!r} "
            f"({error}). Free some space or point paths.cache_dir (FINETUNE_CACHE) elsewhere."
        ) from None
    return Path(path)


def _unpack(entry: ZooEntry, tarball: Path, folder: Path, url: str) -> str:
    """Unpack into a staging folder, check, record SOURCE.json, then publish it as ``folder``."""
    import pooch

    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        try:
            with tarfile.open(tarball, "r:*") as archive:
                _safe_extract(archive, staging)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            raise FinetuneError(
                f"Config key '{KEY}' is 'zoo:{entry.name}', but {entry.file_name} downloaded from {url} could not be "
                f"unpacked ({error.__class__.__name__}: {first_line(error)}); the download is damaged or not a "
                "tar.gz archive. It was deleted; run again to download it afresh. "
                + _manual_steps(entry, url, folder.parent)
            ) from None
        prefix = _find_checkpoint(entry, staging)
        if prefix is None:
            found = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())[:10]
            raise FinetuneError(
                f"Config key '{KEY}' is 'zoo:{entry.name}', but {entry.file_name} from {url} holds no "
                f"{entry.checkpoint} (it holds {found}). Check the download source ({ZOO_URL_ENV})."
            )
        _verify(entry, prefix, where=f"{entry.file_name} from {url}",
                fix=f"Check the download source ({ZOO_URL_ENV}); nothing was kept.")
        relative = prefix.relative_to(staging)
        sha256 = pooch.file_hash(str(tarball))
        record = {"name": entry.name, "url": url, "file": entry.file_name, "sha256": sha256,
                  "checkpoint": str(relative), "unpacked": datetime.datetime.now().isoformat(timespec="seconds")}
        (staging / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if entry.sha256 is None:
            log.info("Zoo checkpoint %s: sha256 of %s is %s (recorded in %s)", entry.name, entry.file_name,
                     sha256, folder / SOURCE_FILE)
        _publish(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return str(folder / relative)


def _safe_extract(archive: tarfile.TarFile, dest: Path) -> None:
    """Extract regular files and folders only, all inside ``dest`` (the ``data`` filter where Python has it)."""
    if hasattr(tarfile, "data_filter"):
        archive.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for member in archive.getmembers():
        target = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
            raise tarfile.TarError(f"refusing to extract {member.name!r} (a link, a device or outside the folder)")
    archive.extractall(dest)


def _publish(staging: Path, folder: Path) -> None:
    """Move ``staging`` to ``folder`` in one step, replacing a stale ``folder``."""
    if folder.exists():
        stale = folder.with_name(f"{folder.name}.old-{os.getpid()}")
        os.replace(folder, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(staging, folder)
    except OSError:  # another job published it first
        shutil.rmtree(staging, ignore_errors=True)


def _manual_steps(entry: ZooEntry, url: str, zoo_dir: Path) -> str:
    folder = zoo_dir / entry.name
    return (
        f"To install it by hand: download {url} (on a machine with network), then "
        f"`mkdir -p {folder} && tar -xzf {entry.file_name} -C {folder}`; the next run uses it from there. "
        f"Or unpack it anywhere and set {KEY}=PATH/{entry.checkpoint} instead of zoo:{entry.name}."
    )
