"""Pretrained checkpoints by name (zoo:NAME), against a tarball served on loopback: never a real URL."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from finetune.weights import zoo
from finetune.model.backbones import get_backbone, list_backbones
from finetune.weights.readers import write_checkpoint
from finetune.compat import tf, tf1
from finetune.errors import FinetuneError

from conftest import compose_config

NAME = "mobilenet_v1_0.25_128"
TENSORS = {
    "MobilenetV1/Conv2d_0/weights": np.arange(3 * 3 * 3 * 8, dtype=np.float32).reshape(3, 3, 3, 8),
    "MobilenetV1/Conv2d_0/BatchNorm/moving_mean": np.linspace(-1, 1, 8, dtype=np.float32),
}


def make_tarball(folder: Path, tensors: dict[str, np.ndarray], name: str = NAME) -> Path:
    """``NAME.tgz`` laid out like the official ones: ``./NAME.ckpt.{index,data-*}`` beside other files."""
    source = folder / "source"
    write_checkpoint(tensors, source / f"{name}.ckpt")
    (source / f"{name}_info.txt").write_text("Model: test\n")
    tarball = folder / "served" / f"{name}.tgz"
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "w:gz") as archive:
        for path in sorted(source.iterdir()):
            if path.name != "checkpoint":  # the zoo tarballs carry no 'checkpoint' index file
                archive.add(path, arcname=f"./{path.name}")
    return tarball


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class Server:
    """``http.server`` on 127.0.0.1, an ephemeral port, a background thread; ``stop()`` is idempotent."""

    def __init__(self, directory: Path):
        handler = functools.partial(_Quiet, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)
            self.running = False


@pytest.fixture
def serve():
    """``serve(directory) -> Server``; every server is stopped at teardown."""
    servers: list[Server] = []

    def start(directory: Path) -> Server:
        servers.append(Server(directory))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def unhashed(monkeypatch):
    """The test tarball is not the published one: drop the entry's known sha256 (most entries have none)."""
    monkeypatch.setitem(zoo.ZOO, NAME, dataclasses.replace(zoo.ZOO[NAME], sha256=None))


def closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connection refused


def leftovers(cache: Path) -> list[str]:
    """Everything under cache/zoo: after a failure there must be nothing (no tarball, no half folder)."""
    root = cache / "zoo"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_downloads_unpacks_and_then_works_offline(tmp_path, serve, unhashed, monkeypatch):
    tarball = make_tarball(tmp_path, TENSORS)
    server = serve(tarball.parent)
    monkeypatch.setenv(zoo.ZOO_URL_ENV, server.url)
    cache = tmp_path / "cache"

    prefix = zoo.resolve_zoo(f"zoo:{NAME}", str(cache))

    assert prefix == str(cache / "zoo" / NAME / f"{NAME}.ckpt")
    reader = tf.train.load_checkpoint(prefix)
    for name, value in TENSORS.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value)
    source = json.loads((cache / "zoo" / NAME / zoo.SOURCE_FILE).read_text())
    assert source["sha256"] == hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert source["url"] == f"{server.url}/{NAME}.tgz"
    assert not (cache / "zoo" / f"{NAME}.tgz").exists()  # unpacked, so not kept
    assert [p for p in (cache / "zoo").iterdir() if p.name != NAME] == []

    server.stop()  # the cache answers from now on
    monkeypatch.setenv(zoo.ZOO_URL_ENV, closed_port_url())
    assert zoo.resolve_zoo(f"zoo:{NAME}", str(cache)) == prefix


def test_known_sha256_is_checked(tmp_path, serve, monkeypatch):
    tarball = make_tarball(tmp_path, TENSORS)
    server = serve(tarball.parent)
    cache = tmp_path / "cache"
    good = hashlib.sha256(tarball.read_bytes()).hexdigest()

    monkeypatch.setitem(zoo.ZOO, NAME, dataclasses.replace(zoo.ZOO[NAME], sha256="0" * 64))
    with pytest.raises(FinetuneError) as caught:
        zoo.resolve_zoo(f"zoo:{NAME}", str(cache), base_url=server.url)
    assert "is not the published one" in str(caught.value) and f"{server.url}/{NAME}.tgz" in str(caught.value)
    assert leftovers(cache) == []

    monkeypatch.setitem(zoo.ZOO, NAME, dataclasses.replace(zoo.ZOO[NAME], sha256=good))
    prefix = zoo.resolve_zoo(f"zoo:{NAME}", str(cache), base_url=server.url)
    assert tf.train.load_checkpoint(prefix).has_tensor("MobilenetV1/Conv2d_0/weights")


def test_cache_from_another_file_than_the_published_one_is_replaced(tmp_path, serve, unhashed, monkeypatch):
    old = make_tarball(tmp_path / "old", TENSORS)
    cache = tmp_path / "cache"
    zoo.resolve_zoo(f"zoo:{NAME}", str(cache), base_url=serve(old.parent).url)  # recorded in SOURCE.json

    changed = {name: value + 1 for name, value in TENSORS.items()}
    new = make_tarball(tmp_path / "new", changed)
    monkeypatch.setitem(zoo.ZOO, NAME, dataclasses.replace(zoo.ZOO[NAME],
                                                           sha256=hashlib.sha256(new.read_bytes()).hexdigest()))
    prefix = zoo.resolve_zoo(f"zoo:{NAME}", str(cache), base_url=serve(new.parent).url)
    reader = tf.train.load_checkpoint(prefix)
    for name, value in changed.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value)
    assert leftovers(cache) == sorted([NAME, *(f"{NAME}/{p.name}" for p in (cache / "zoo" / NAME).iterdir())])


def test_single_file_v1_checkpoint_of_the_2016_tarballs(tmp_path, serve, monkeypatch):
    """inception_v1_2016_08_28.tar.gz holds one V1-format file, inception_v1.ckpt (no .index)."""
    monkeypatch.setitem(zoo.ZOO, "inception_v1", dataclasses.replace(zoo.ZOO["inception_v1"], sha256=None))
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    with tf.Graph().as_default():
        variable = tf1.get_variable("InceptionV1/Conv2d_1a_7x7/weights", initializer=tf.constant(value))
        saver = tf1.train.Saver([variable], write_version=tf1.train.SaverDef.V1)
        with tf1.Session() as sess:
            sess.run(variable.initializer)
            saver.save(sess, str(tmp_path / "inception_v1.ckpt"), write_meta_graph=False)
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "inception_v1_2016_08_28.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "inception_v1.ckpt", arcname="inception_v1.ckpt")
    prefix = zoo.resolve_zoo("zoo:inception_v1", str(tmp_path / "cache"), base_url=serve(served).url)
    assert prefix == str(tmp_path / "cache" / "zoo" / "inception_v1" / "inception_v1.ckpt")
    np.testing.assert_array_equal(tf.train.load_checkpoint(prefix).get_tensor(variable.op.name), value)


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(FinetuneError) as caught:
        zoo.resolve_zoo("zoo:mobilenet_v1_1.0_225", str(tmp_path))
    message = str(caught.value)
    assert "restore.checkpoint" in message and "mobilenet_v1_1.0_224" in message and "vgg_19" in message
    assert leftovers(tmp_path) == []


def test_server_down_fails_fast_naming_url_and_manual_steps(tmp_path, unhashed):
    base = closed_port_url()
    start = time.monotonic()
    with pytest.raises(FinetuneError) as caught:
        zoo.resolve_zoo(f"zoo:{NAME}", str(tmp_path), base_url=base)
    assert time.monotonic() - start < 15
    message = str(caught.value)
    folder = tmp_path / "zoo" / NAME
    for part in (f"{base}/{NAME}.tgz", "tar -xzf", str(folder), f"restore.checkpoint=PATH/{NAME}.ckpt"):
        assert part in message, part
    assert leftovers(tmp_path) == []


def test_manual_install_from_the_error_message_is_used_offline(tmp_path):
    tarball = make_tarball(tmp_path, TENSORS)
    folder = tmp_path / "cache" / "zoo" / NAME
    folder.mkdir(parents=True)
    with tarfile.open(tarball) as archive:  # tar -xzf NAME.tgz -C <cache>/zoo/NAME
        archive.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # 3.11.4+
    prefix = zoo.resolve_zoo(f"zoo:{NAME}", str(tmp_path / "cache"), base_url=closed_port_url())
    assert prefix == str(folder / f"{NAME}.ckpt")


def test_corrupt_tarball_is_a_clear_error_and_leaves_nothing(tmp_path, serve, unhashed):
    whole = make_tarball(tmp_path, TENSORS).read_bytes()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / f"{NAME}.tgz").write_bytes(whole[: len(whole) // 2])  # a download cut short
    server = serve(broken)
    with pytest.raises(FinetuneError) as caught:
        zoo.resolve_zoo(f"zoo:{NAME}", str(tmp_path / "cache"), base_url=server.url)
    message = str(caught.value)
    assert "could not be unpacked" in message and f"{server.url}/{NAME}.tgz" in message
    assert leftovers(tmp_path / "cache") == []


def test_unsafe_member_is_refused(tmp_path, serve, unhashed):
    evil = tmp_path / "evil"
    evil.mkdir()
    with tarfile.open(evil / f"{NAME}.tgz", "w:gz") as archive:
        data = b"x"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    server = serve(evil)
    with pytest.raises(FinetuneError, match="could not be unpacked"):
        zoo.resolve_zoo(f"zoo:{NAME}", str(tmp_path / "cache"), base_url=server.url)
    assert not (tmp_path / "cache" / "escaped.txt").exists()
    assert leftovers(tmp_path / "cache") == []


def test_tarball_with_another_network_is_refused(tmp_path, serve, unhashed):
    tarball = make_tarball(tmp_path, {"InceptionV1/Conv2d_1a_7x7/weights": np.zeros((7, 7, 3, 64), np.float32)})
    server = serve(tarball.parent)
    with pytest.raises(FinetuneError, match="none under 'MobilenetV1/'"):
        zoo.resolve_zoo(f"zoo:{NAME}", str(tmp_path / "cache"), base_url=server.url)
    assert leftovers(tmp_path / "cache") == []


def test_table_fits_the_registered_backbones():
    names = list(zoo.ZOO)
    assert len([n for n in names if n.startswith("mobilenet_v1_")]) == 16
    assert {"mobilenet_v2_1.0_224", "mobilenet_v2_1.4_224", "inception_v3", "resnet_v2_152", "vgg_19"} <= set(names)
    for entry in zoo.ZOO.values():
        assert entry.backbone in list_backbones(), entry.name
        assert set(entry.params) <= set(get_backbone(entry.backbone).default_params), entry.name
        assert entry.scope == get_backbone(entry.backbone).scope, entry.name
        assert entry.url.split("/")[2] in ("download.tensorflow.org", "storage.googleapis.com"), entry.name
        assert entry.file_name.endswith((".tgz", ".tar.gz")) and entry.checkpoint.endswith(".ckpt")
        assert entry.sha256 is None or len(entry.sha256) == 64


def test_zoo_experiment_matches_its_checkpoint():
    cfg = compose_config(["experiment=mobilenet_v1_zoo"])
    entry = zoo.get_zoo_entry(cfg.restore.checkpoint)
    assert cfg.restore.checkpoint == "zoo:mobilenet_v1_1.0_224"
    assert cfg.backbone.name == entry.backbone and cfg.backbone.image_size == entry.image_size
    assert cfg.backbone.params.depth_multiplier == entry.params["depth_multiplier"]
