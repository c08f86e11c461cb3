"""The bottleneck cache: entries checked on read, stale ones never used, and training from it equal to
training without it."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Optional
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_BACKBONE, run_pipeline, tiny_config, tiny_overrides
from finetune import pipeline
from finetune.compat import tf, tf1
from finetune.config import compose_config
from finetune.data import feature_fill
from finetune.data import features as features_module
from finetune.data.feature_fill import cached_features
from finetune.data.features import FeatureStore, cache_secret, entry_mac, model_key
from finetune.data.examples import Example, LabelledImages
from finetune.errors import FinetuneError
from finetune.files import create_file_once
from finetune.model.backbones import PREPROCESSORS, get_backbone
from finetune.model.towers import build_export_tower
from finetune.resolve import data_root
from finetune.training.evaluate import evaluate, feature_batches, image_batches
from finetune.training.features_tower import graph_to_cut_sha256
from finetune.training.phase_inputs import PhaseInputs
from finetune.training.run_graph import build_run_graph

SHAPE = (2, 2, 3)
KEY = "ab" * 32


class CountingExtractor:
    """Features made from the image bytes alone, counting the images it was asked for."""

    def __init__(self) -> None:
        self.asked = 0

    def batches(self, sess, images):
        self.asked += len(images)
        for first in range(0, len(images), 2):  # batches of two: the fill must put rows back in order
            yield np.stack([np.full(SHAPE, len(data) + data[-1], np.float32) for data in images[first:first + 2]])


def _images(folder: Path, count: int) -> LabelledImages:
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for index in range(count):
        path = folder / f"{index}.png"
        Image.new("RGB", (4 + index, 4), (index, 0, 0)).save(path)
        examples.append(Example(path.name, index % 2, str(path), path.stat().st_size))
    return LabelledImages("image_folder", folder, ["a", "b"], {"train": examples, "val": [], "test": []})


def test_entries_are_reused_and_a_changed_image_or_a_bad_entry_is_recomputed(tmp_path):
    data = _images(tmp_path / "images", 5)
    store = FeatureStore(tmp_path / "cache", KEY, SHAPE)
    extractor = CountingExtractor()
    first, stats = cached_features(None, store, extractor, data, data.examples["train"])
    assert (stats.computed, stats.reused, extractor.asked) == (5, 0, 5)
    again, stats = cached_features(None, store, extractor, data, data.examples["train"])
    assert (stats.computed, stats.reused, extractor.asked) == (0, 5, 5)
    assert np.array_equal(first, again)

    # An image changed in place: its old entry is not found under its new content, the others are reused.
    changed = Path(data.examples["train"][1].reference)
    Image.new("RGB", (20, 4), (9, 9, 9)).save(changed)
    # Entries damaged three ways: a byte flipped, cut short, and one copied under another image's name.
    entries = [store.path(hashlib.sha256(Path(e.reference).read_bytes()).hexdigest()) for e in data.examples["train"]]
    raw = bytearray(entries[0].read_bytes())
    raw[raw.find(first[0].tobytes())] ^= 0x01  # one bit of the stored features
    entries[0].write_bytes(bytes(raw))
    entries[2].write_bytes(entries[2].read_bytes()[:100])
    entries[4].write_bytes(entries[3].read_bytes())
    features, stats = cached_features(None, store, extractor, data, data.examples["train"])
    assert stats.rejected == 3 and stats.computed == 4 and stats.reused == 1
    fresh, _ = cached_features(None, FeatureStore(tmp_path / "fresh", KEY, SHAPE), CountingExtractor(), data,
                               data.examples["train"])
    assert np.array_equal(features, fresh)  # what was used is what computing anew gives, never a stale entry


def _entries(store: FeatureStore, data: LabelledImages) -> dict[str, np.ndarray]:
    """Each image's stored features, by image hash (every entry read back through all its checks)."""
    hashes = [hashlib.sha256(Path(e.reference).read_bytes()).hexdigest() for e in data.examples["train"]]
    return {image_hash: store.read(image_hash)[0] for image_hash in hashes}


def test_the_overlapped_fill_computes_and_stores_what_one_image_at_a_time_does(tmp_path, monkeypatch):
    """Chunks of one image each (the reader far ahead, a tf.data start per image) and one chunk for the split
    give the same features and the same entries as writing each image's features by hand."""
    data = _images(tmp_path / "images", 7)
    by_hand = FeatureStore(tmp_path / "by_hand", KEY, SHAPE)
    expected = []
    for example in data.examples["train"]:
        encoded = Path(example.reference).read_bytes()
        expected.append(next(CountingExtractor().batches(None, [encoded]))[0])
        by_hand.write(hashlib.sha256(encoded).hexdigest(), expected[-1])
    for name, chunk_bytes in (("one_image_chunks", 1), ("one_chunk", feature_fill.COMPUTE_BYTES)):
        monkeypatch.setattr(feature_fill, "COMPUTE_BYTES", chunk_bytes)
        monkeypatch.setattr(feature_fill, "WRITES_AHEAD", 1)
        store = FeatureStore(tmp_path / name, KEY, SHAPE)
        features, stats = cached_features(None, store, CountingExtractor(), data, data.examples["train"])
        assert (stats.computed, stats.reused) == (7, 0)
        np.testing.assert_array_equal(features, np.stack(expected))
        stored, wanted = _entries(store, data), _entries(by_hand, data)
        assert stored.keys() == wanted.keys() and all(np.array_equal(stored[h], wanted[h]) for h in wanted)
        assert not list(store.folder.glob(".*"))  # no temporary left


def test_a_write_error_is_said_once_and_costs_reuse_not_the_run_and_other_errors_stop_it(tmp_path, monkeypatch,
                                                                                        caplog):
    """A full disk met on the writer's thread: the store's warning, the features still right. Anything else
    that goes wrong there, or on the reader's thread (an image gone since the scan), is raised to the caller."""
    data = _images(tmp_path / "images", 5)
    fresh, _ = cached_features(None, FeatureStore(tmp_path / "fresh", KEY, SHAPE), CountingExtractor(), data,
                               data.examples["train"])
    calls = []

    def disk_full(path, payload):
        calls.append(path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(features_module, "write_bytes_atomically", disk_full)
    store = FeatureStore(tmp_path / "cache", KEY, SHAPE)
    features, stats = cached_features(None, store, CountingExtractor(), data, data.examples["train"])
    np.testing.assert_array_equal(features, fresh)
    warnings = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(warnings) == 1 and "(No space left on device)" in warnings[0] and len(calls) == 1
    assert stats.computed == 5 and not list(store.folder.glob("*"))

    def broken(self, image_hash, features):
        raise RuntimeError("the writer broke")

    monkeypatch.setattr(FeatureStore, "write", broken)
    with pytest.raises(RuntimeError, match="the writer broke"):
        cached_features(None, FeatureStore(tmp_path / "other", KEY, SHAPE), CountingExtractor(), data,
                        data.examples["train"])
    Path(data.examples["train"][3].reference).unlink()
    with pytest.raises(FinetuneError, match=r"Cannot read the image .*3\.png.*moved or deleted"):
        cached_features(None, FeatureStore(tmp_path / "other", KEY, SHAPE), CountingExtractor(), data,
                        data.examples["train"])


def test_an_entry_of_another_shape_or_model_is_not_used(tmp_path):
    store = FeatureStore(tmp_path, KEY, SHAPE)
    store.write("cd" * 32, np.ones(SHAPE, np.float32))
    assert store.read("cd" * 32)[0] is not None
    assert FeatureStore(tmp_path, KEY, (3, 2, 2)).read("cd" * 32) == (None, True)
    other = FeatureStore(tmp_path, "ef" * 32, SHAPE)
    other.folder.mkdir(parents=True)
    (other.folder / f"{'cd' * 32}.npz").write_bytes(store.path("cd" * 32).read_bytes())
    assert other.read("cd" * 32) == (None, True)
    assert not list(tmp_path.rglob("*.tmp*"))  # written under a temporary name, then renamed



def test_an_entry_checked_once_is_not_opened_again_until_its_file_changes(tmp_path):
    """Each job of an in-process sweep reads the same entries: a file checked (or written) once is known by
    its identity; a file replaced or rewritten is opened and checked again."""
    store = FeatureStore(tmp_path, KEY, SHAPE)
    store.write("cd" * 32, np.ones(SHAPE, np.float32))
    opened = []
    real_load = np.load
    with mock.patch.object(features_module.np, "load",
                           side_effect=lambda *a, **k: opened.append(a) or real_load(*a, **k)):
        again = FeatureStore(tmp_path, KEY, SHAPE)  # a later job's store
        assert np.array_equal(again.read("cd" * 32)[0], np.ones(SHAPE, np.float32)) and opened == []
        entry = store.path("cd" * 32)
        entry.write_bytes(entry.read_bytes()[:-7])  # cut short in place: another size, another mtime
        assert again.read("cd" * 32) == (None, True) and len(opened) == 1
        assert FeatureStore(tmp_path, KEY, (3, 2, 2)).read("cd" * 32) == (None, True)  # another shape: checked

def forged_entry(features: np.ndarray, image_hash: str, mac: bytes | None) -> bytes:
    """An entry whose checksum, model key and image hash all check out, as one written by another hand."""
    fields = dict(features=features, sha256=np.frombuffer(hashlib.sha256(features.tobytes()).digest(), np.uint8),
                  model_key=np.frombuffer(bytes.fromhex(KEY), np.uint8),
                  image_sha256=np.frombuffer(bytes.fromhex(image_hash), np.uint8))
    if mac is not None:
        fields["mac"] = np.frombuffer(mac, np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **fields)
    return buffer.getvalue()


def test_a_forged_entry_is_recomputed_and_the_cache_own_entries_are_reused(tmp_path):
    data = _images(tmp_path / "images", 4)
    examples = data.examples["train"]
    store = FeatureStore(tmp_path / "cache", KEY, SHAPE)
    honest, _ = cached_features(None, store, CountingExtractor(), data, examples)
    secret_file = tmp_path / "cache/features/secret.key"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600 and len(secret_file.read_bytes()) == 32
    hashes = [hashlib.sha256(Path(e.reference).read_bytes()).hexdigest() for e in examples]
    poison = np.full(SHAPE, 1e6, np.float32)
    other_secret = os.urandom(32)
    store.path(hashes[0]).write_bytes(forged_entry(poison, hashes[0], entry_mac(other_secret, KEY, hashes[0], poison)))
    store.path(hashes[1]).write_bytes(forged_entry(poison, hashes[1], os.urandom(32)))
    store.path(hashes[2]).write_bytes(forged_entry(poison, hashes[2], None))  # no MAC: as older versions wrote
    extractor = CountingExtractor()
    features, stats = cached_features(None, FeatureStore(tmp_path / "cache", KEY, SHAPE), extractor, data, examples)
    assert (stats.rejected, stats.computed, stats.reused, extractor.asked) == (2, 3, 1, 3)
    assert np.array_equal(features, honest) and not (features == 1e6).any()  # the forged features never used
    # Recomputed entries are the cache's own again: all reused next time.
    _, stats = cached_features(None, FeatureStore(tmp_path / "cache", KEY, SHAPE), extractor, data, examples)
    assert (stats.reused, stats.rejected) == (4, 0)


def test_the_secret_is_made_once_and_one_others_can_read_is_refused(tmp_path):
    secret = cache_secret(tmp_path)
    path = tmp_path / "features/secret.key"
    assert cache_secret(tmp_path) == secret == path.read_bytes()
    # A second process that lost the race to create it: nothing replaced, and it reads the winner's key.
    assert create_file_once(path, b"x" * 32) is False and path.read_bytes() == secret
    assert not [p for p in path.parent.iterdir() if p.name != "secret.key"]  # its temporary removed
    for mode, problem in ((0o644, "readable or writable by group or others (mode 0644)"),
                          (0o620, "readable or writable by group or others (mode 0620)")):
        path.chmod(mode)
        with pytest.raises(FinetuneError) as error:
            FeatureStore(tmp_path, KEY, SHAPE)
        message = str(error.value)
        assert f"{path} is {problem}" in message and "chmod 600" in message and "\n" not in message
    path.chmod(0o600)
    path.rename(tmp_path / "elsewhere.key")
    path.symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(FinetuneError, match="is a symbolic link"):
        cache_secret(tmp_path)


def test_the_secret_is_made_private_on_a_file_system_without_hard_links(tmp_path, monkeypatch):
    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "features/secret.key"
    secret = cache_secret(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == secret and len(secret) == 32
    assert create_file_once(path, b"x" * 32) is False and cache_secret(tmp_path) == secret
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]


def test_the_model_key_follows_the_weights_below_the_cut():
    with tf.Graph().as_default():
        weights = tf1.get_variable("w", initializer=tf.constant([1.0, 2.0]))
        with tf1.Session() as sess:
            sess.run(weights.initializer)
            before = model_key(sess, [weights], {"graph": "x"})
            assert model_key(sess, [weights], {"graph": "x"}) == before
            assert model_key(sess, [weights], {"graph": "y"}) != before
            sess.run(weights.assign([1.0, 2.5]))
            assert model_key(sess, [weights], {"graph": "x"}) != before


# The tiny profile (conftest): whether features come from the cache or from the images is mechanics.
QUICK = ("export.enabled=false", "train.checkpoint_every=1000", "data.batch_size=8",
         "head=conv_pool_dense")  # a head with dropout and BatchNorm
TWO_PHASES = ("train.steps=null", "train.phases=[{name: head, steps: 6}, "
              "{name: top, steps: 3, var_list: ['head/', 'MobilenetV1/Conv2d_3_'], learning_rate: 0.001}]")


@pytest.mark.slow
def test_training_from_the_cache_equals_training_on_images_and_only_head_phases_use_it(demo_cache, tiny_data,
                                                                                        tmp_path):
    runs = {}
    for mode in ("off", "require"):
        cfg = tiny_config(demo_cache, tiny_data, *QUICK, *TWO_PHASES, f"data.feature_cache={mode}")
        runs[mode] = run_pipeline(cfg, tmp_path / mode)
    phases = json.loads((tmp_path / "require" / "phases.json").read_text())
    assert [phase["input"] for phase in phases] == ["features", "images"]
    assert [phase["input"] for phase in json.loads((tmp_path / "off" / "phases.json").read_text())] == ["images"] * 2
    for split in ("train", "val", "test"):
        for metric in ("loss", "accuracy"):
            assert runs["require"][split][metric] == pytest.approx(runs["off"][split][metric], rel=1e-4, abs=1e-5)


@pytest.mark.slow  # the check needs the run's towers: it builds the training graph
def test_require_says_why_no_phase_can_use_the_cache(demo_cache, tiny_data):
    cfg = tiny_config(demo_cache, tiny_data, *QUICK, "data.feature_cache=require",
                      "data.augment=[{type: flip_left_right}]")
    data = pipeline.load_data(cfg.data, data_root(cfg.data, cfg.paths))
    with pytest.raises(FinetuneError, match="data.feature_cache=require.*data.augment is set"):
        build_run_graph(cfg, data, None)


@pytest.mark.slow  # builds the training graph twice
def test_a_head_only_run_evaluates_from_the_cache_as_from_images_and_a_second_build_keeps_the_key(
        demo_cache, tiny_data, tmp_path):
    head_only = tiny_config(demo_cache, tiny_data, *QUICK, "data.feature_cache=require")
    data = pipeline.load_data(head_only.data, data_root(head_only.data, head_only.paths))
    run = build_run_graph(head_only, data, None)
    # The next job of an in-process sweep: its tf.data functions get other names, its cache key must not.
    two_phases = build_run_graph(tiny_config(demo_cache, tiny_data, *QUICK, *TWO_PHASES), data, None)
    assert run.model.features.graph_sha256 == two_phases.model.features.graph_sha256
    assert run.model.evaluates_features and not two_phases.model.evaluates_features  # a phase trains the backbone
    # Nothing reads images after the fill: the head-only graph has no image towers; the same model on images
    # (the cache off) starts from the same weights, which the export tower makes first in both graphs.
    assert run.model.images is None
    on_images = build_run_graph(tiny_config(demo_cache, tiny_data, *QUICK, "data.feature_cache=off"), data, None)
    classes = len(data.class_names)
    with tf1.Session(graph=run.graph) as sess, tf1.Session(graph=on_images.graph) as images_sess:
        for session, graph in ((sess, run.graph), (images_sess, on_images.graph)):
            session.run([variable.initializer for variable in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)])
        head = {name: sess.run(v) for name, v in run.model.model_variables.items() if name in run.model.trained}
        for name, value in head.items():
            np.testing.assert_array_equal(images_sess.run(on_images.model.model_variables[name]), value)
        inputs = PhaseInputs(run.model, data, tmp_path)
        for split in ("val", "test"):
            from_images = evaluate(image_batches(images_sess, on_images.model, split), classes, 2)
            features = inputs.features(sess, split)
            assert len(list((tmp_path / "features").glob("*/*.npz"))) > 0
            from_features = evaluate(feature_batches(sess, run.model, data.examples[split], features, 7), classes, 2)
            assert from_features.keys == from_images.keys == [example.key for example in data.examples[split]]
            np.testing.assert_array_equal(from_features.labels, from_images.labels)
            np.testing.assert_allclose(from_features.probabilities, from_images.probabilities, rtol=1e-5, atol=1e-6)
            assert from_features.confusion.tolist() == from_images.confusion.tolist()


def _cut_sha256(*overrides: str, preprocessors: Optional[dict] = None) -> str:
    """The cache key's graph part for the tiny profile's backbone with ``overrides`` (and PREPROCESSORS patched)."""
    cfg = compose_config(["experiment=mobilenet_head", *TINY_BACKBONE, *overrides])
    with mock.patch.dict(PREPROCESSORS, preprocessors or {}), tf.Graph().as_default():
        # A run's input pipeline in the same graph: its functions' names come from process-wide counters.
        tf.data.Dataset.range(3).map(lambda x: x + 1)
        export = build_export_tower(cfg.backbone, cfg.head, 5)
        return graph_to_cut_sha256(export.cut)


def test_the_cache_key_follows_what_computes_the_features_and_nothing_else():
    """Equal for the same model built again in this process (a sweep's next job: other tf.data function names),
    other when the cut, the image size, the backbone's parameters or its preprocessing differ."""
    tiny = _cut_sha256()
    assert _cut_sha256() == tiny
    assert _cut_sha256("head=conv_pool_dense") == tiny  # the head is above the cut
    family = get_backbone(TINY_BACKBONE[0].split("=")[1]).preprocessing
    others = [_cut_sha256("backbone.cut=Conv2d_2_pointwise"), _cut_sha256("backbone.image_size=40"),
              _cut_sha256("backbone.params.depth_multiplier=0.5"),
              _cut_sha256(preprocessors={family: lambda pixels: pixels / 255.0})]
    assert len({tiny, *others}) == 5


@pytest.mark.slow  # two processes: a parallel sweep's jobs filling one cache at once
def test_two_processes_filling_one_cache_at_once_share_one_key_and_leave_sound_entries(demo_cache, tiny_data,
                                                                                       tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(demo_cache / "demo", cache / "demo")  # the tiny profile's restore, not its features
    env = {**os.environ, "FINETUNE_CACHE": str(cache)}
    jobs = [subprocess.Popen([sys.executable, "-m", "finetune", *tiny_overrides(cache, tiny_data, *QUICK),
                              f"hydra.run.dir={tmp_path / str(job)}"], cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for job in range(2)]
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    # Each split's features (train; val and test, which a head-only run evaluates from the cache too).
    fills = [re.findall(r"Feature cache (\S+), \w+ split: (\d+) images' features reused, (\d+) computed", output)
             for output in outputs]
    folders = {folder for job in fills for folder, _, _ in job}
    assert len(folders) == 1 and len(fills[0]) == 3  # one key in two processes
    folder = Path(folders.pop())
    entries = sorted(folder.glob("*.npz"))
    images = sum(int(reused) + int(computed) for _, reused, computed in fills[0])
    assert len(entries) == images and not list(folder.glob("*.tmp*"))  # one entry an image, no leftovers
    store = FeatureStore(cache, folder.name, np.load(entries[0])["features"].shape)
    assert all(store.read(entry.stem)[0] is not None for entry in entries)  # each passes every check
    metrics = [json.loads((tmp_path / str(job) / "metrics.json").read_text()) for job in range(2)]
    assert metrics[0]["val"] == metrics[1]["val"] and metrics[0]["test"] == metrics[1]["test"]
