"""The reproducibility record (run.json), the removal of what a killed process left half-written, and
the completeness check of a checkpoint."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config, run_pipeline, tiny_config

from finetune import pipeline
from finetune.compat import tf
from finetune.config import CONFIG_MODULE
from finetune.data.image_folder import scan_image_folder
from finetune.data.examples import LabelledImages
from finetune.files import complete_checkpoint, remove_orphaned_temporaries
from finetune.training import run_record
from finetune.training.run_record import (PACKAGES, RUN_RECORD_FILE, command_line_overrides, cpu_description,
                                          data_record, git_state, start_entry, write_run_record)
from finetune.weights.readers import write_checkpoint
from finetune.resolve import data_root, pretrained_checkpoint

FIELDS = {"overrides", "config", "fingerprint", "versions", "python", "platform", "cpu", "devices", "gpu", "git",
          "pretrained", "data", "phases", "starts"}
UUID_HEX = "0123456789abcdef0123456789abcdef"


def _config(cache: Path, data: Path, *overrides: str):
    """conftest's tiny profile (what is recorded does not depend on what is learnt), without an export."""
    return tiny_config(cache, data, "export.enabled=false", *overrides)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --- run.json ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_run_json_records_the_run_and_its_starts(demo_cache, tiny_data, tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    # Not started by Hydra: a command run in this process before (conftest.cli) leaves its Hydra config set.
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    cfg = _config(demo_cache, tiny_data, "train.steps=2")
    run_dir = tmp_path / "run"
    run_pipeline(cfg, run_dir)
    before = _files(run_dir)
    assert remove_orphaned_temporaries(run_dir) == []  # a finished run's own files are no orphans
    assert _files(run_dir) == before

    first = json.loads((run_dir / RUN_RECORD_FILE).read_text())
    assert set(first) == FIELDS
    assert first["overrides"] is None  # not started by Hydra
    assert first["config"]["train"]["steps"] == 2 and first["config"]["paths"]["cache_dir"] == str(demo_cache)
    assert first["fingerprint"] == json.loads((run_dir / "checkpoints/fingerprint.json").read_text())["fingerprint"]
    assert first["versions"] == {name: importlib.metadata.version(name) for name in PACKAGES}
    assert first["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert first["platform"] and first["cpu"]["model"] and first["cpu"]["count"] == os.cpu_count()
    assert {"type": "CPU", "name": "/physical_device:CPU:0"} in first["devices"]
    # The GPU it trained on (driver, CUDA, cuDNN): none here unless TensorFlow sees one (train.device=auto).
    assert (first["gpu"] is None) == (not tf.config.list_physical_devices("GPU"))
    assert first["git"] is None or (len(first["git"]["commit"]) == 40 and isinstance(first["git"]["dirty"], bool))
    # The phases as phases.json has them, with the trainable parameter count of each.
    assert first["phases"] == json.loads((run_dir / "phases.json").read_text())
    # The head alone: its conv2d (3x3x32x64, BatchNorm's 64 gammas and 64 betas) and dense layer (64x5 + 5).
    assert [phase["trainable_parameters"] for phase in first["phases"]] == [3 * 3 * 32 * 64 + 2 * 64 + 64 * 5 + 5]

    prefix = Path(pretrained_checkpoint(cfg.restore, cfg.paths))
    assert first["pretrained"]["path"] == str(prefix.resolve())
    assert set(first["pretrained"]["files"]) == {"model.ckpt.index", "model.ckpt.data-00000-of-00001"}
    for name, digest in first["pretrained"]["files"].items():
        assert digest == hashlib.sha256((prefix.parent / name).read_bytes()).hexdigest()

    data = pipeline.load_data(cfg.data, data_root(cfg.data, cfg.paths))
    assert first["data"]["classes"] == data.class_names
    assert first["data"]["images"] == {split: len(examples) for split, examples in data.examples.items()}
    assert first["data"]["source"] == "image_folder" and first["data"]["bad_files_skipped"] == 0
    assert sum(first["data"]["images"].values()) == sum(1 for p in Path(data.root).rglob("*") if p.is_file())

    [fresh] = first["starts"]
    assert fresh["step"] == 0 and fresh["why"].startswith("Fresh start") and fresh["pid"] == os.getpid()
    run_pipeline(_config(demo_cache, tiny_data, "train.steps=3"), run_dir)  # extended: a second process resumes
    second = json.loads((run_dir / RUN_RECORD_FILE).read_text())
    assert second["starts"][0] == fresh and second["starts"][1]["step"] == 2
    assert second["starts"][1]["why"].startswith("Resuming from model.ckpt-2")
    assert second["config"]["train"]["steps"] == 3  # the rest describes the latest process


def test_start_entry_is_a_utc_time_step_and_reason():
    entry = start_entry(7, "why")
    assert entry["time"].endswith("+00:00") and entry["step"] == 7 and entry["why"] == "why"
    assert entry["pid"] == os.getpid()


def test_a_restore_free_run_records_no_pretrained_files_and_a_pb_its_own(tmp_path):
    assert run_record.pretrained_files(None) is None
    frozen = tmp_path / "model.pb"
    frozen.write_bytes(b"\x00graph" * 1000)
    assert run_record.pretrained_files(str(frozen)) == {
        "path": str(frozen), "files": {"model.pb": hashlib.sha256(frozen.read_bytes()).hexdigest()}}


def test_a_files_sha256_is_read_in_chunks_and_matches_hashlib(tmp_path, monkeypatch):
    monkeypatch.setattr(run_record, "CHUNK_BYTES", 7)
    path = tmp_path / "weights.npz"
    path.write_bytes(os.urandom(1000))
    assert run_record.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_file_list_hash_follows_the_files_not_where_the_folder_is(demo_cache, tiny_data, tmp_path):
    cfg = _config(demo_cache, tiny_data)
    original = pipeline.load_data(cfg.data, data_root(cfg.data, cfg.paths))
    copy = tmp_path / "data"
    shutil.copytree(original.root, copy)
    record = data_record(scan_image_folder(copy, cfg.data))
    assert record["file_list_sha256"] == data_record(original)["file_list_sha256"]
    assert record["root"] == str(copy.resolve())

    image = next(p for p in sorted(copy.rglob("*")) if p.is_file())
    shutil.copy(image, image.with_name(f"added{image.suffix}"))
    added = data_record(scan_image_folder(copy, cfg.data))
    assert added["file_list_sha256"] != record["file_list_sha256"]
    assert sum(added["images"].values()) == sum(record["images"].values()) + 1

    (image.with_name(f"added{image.suffix}")).unlink()
    with open(image, "ab") as handle:  # same names, one file one byte longer
        handle.write(b"\0")
    assert data_record(scan_image_folder(copy, cfg.data))["file_list_sha256"] not in (
        record["file_list_sha256"], added["file_list_sha256"])


def test_the_overrides_are_hydras_task_overrides_when_hydra_runs():
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    overrides = ["experiment=mobilenet_head", "train.steps=3"]
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert command_line_overrides() == overrides
    finally:
        HydraConfig.instance().cfg = None
    assert command_line_overrides() is None


def test_the_cpu_flags_that_change_numerics_are_kept_and_a_missing_cpuinfo_gives_none(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse sse2 avx avx2 avx512f "
                       "avx512_vnni fma fma4 amx_bf16 avx_vnni\n\nprocessor\t: 1\nmodel name\t: Other\n")
    described = cpu_description(cpuinfo)
    assert described["model"] == "Test CPU 9000"
    assert described["flags"] == ["amx_bf16", "avx", "avx2", "avx512_vnni", "avx512f", "avx_vnni", "fma"]
    missing = cpu_description(tmp_path / "absent")
    assert missing["flags"] is None and missing["model"]


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_gives_the_commit_and_whether_the_checkout_is_dirty_and_null_outside_one(tmp_path, monkeypatch):
    source = tmp_path / "repo" / "finetune"
    source.mkdir(parents=True)
    (source / "__init__.py").write_text("")
    _git(source, "init", "-q")
    assert git_state(source) is None  # a checkout, but the folder's files are not tracked in it
    _git(source, "add", "__init__.py")
    _git(source, "commit", "-q", "-m", "first")
    assert git_state(source) == {"commit": _git(source, "rev-parse", "HEAD"), "dirty": False}
    (source / "__init__.py").write_text("changed = True\n")
    assert git_state(source)["dirty"] is True

    outside = tmp_path / "installed"
    outside.mkdir()
    assert git_state(outside) is None
    monkeypatch.setattr(run_record, "SOURCE_DIR", outside)
    cfg = compose_config(["experiment=mobilenet_head"])
    data = LabelledImages("image_folder", tmp_path, ["a", "b"], {"train": [], "val": [], "test": []})
    record = write_run_record(tmp_path, cfg, fingerprint="f", pretrained=None, data=data, phases=[],
                              start=start_entry(0, "fresh"))
    assert record["git"] is None and record["pretrained"] is None

    monkeypatch.setenv("PATH", str(outside))  # no git at all
    assert git_state(source) is None


# --- complete checkpoints ----------------------------------------------------------------------------

def test_a_checkpoint_is_complete_with_its_index_and_every_data_shard(tmp_path):
    real = write_checkpoint({"w": np.arange(4, dtype=np.float32)}, tmp_path / "real" / "model.ckpt-1")
    assert complete_checkpoint(real)
    Path(f"{real}.data-00000-of-00001").unlink()
    assert not complete_checkpoint(real)  # an .index without its .data

    prefix = tmp_path / "model.ckpt-5"
    assert not complete_checkpoint(str(prefix))
    Path(f"{prefix}.index").write_bytes(b"")
    Path(f"{prefix}.data-00000-of-00002").write_bytes(b"x")
    assert not complete_checkpoint(str(prefix))  # empty index, one of two shards
    Path(f"{prefix}.index").write_bytes(b"index")
    assert not complete_checkpoint(str(prefix))  # still one of two shards
    Path(f"{prefix}.data-00001-of-00002").write_bytes(b"x")
    assert complete_checkpoint(str(prefix))
    # Another prefix's shards do not count: model.ckpt-50 is not model.ckpt-5.
    Path(f"{tmp_path}/model.ckpt-50.index").write_bytes(b"index")
    Path(f"{prefix}.data-00000-of-00002").rename(f"{tmp_path}/model.ckpt-50.data-00000-of-00001")
    assert not complete_checkpoint(str(prefix)) and complete_checkpoint(f"{tmp_path}/model.ckpt-50")


# --- orphaned temporaries ----------------------------------------------------------------------------

def test_orphans_of_every_kind_are_removed_and_everything_else_is_kept(tmp_path, caplog):
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    complete = write_checkpoint({"w": np.ones(3, np.float32)}, checkpoints / "model.ckpt-2")
    kept = ["config.yaml", "metrics.json", ".lock", ".hydra/config.yaml", "tensorboard/events.out.tfevents.1.host",
            "checkpoints/checkpoint", "checkpoints/fingerprint.json", "notes.tmp", "my_temp/part-1",
            ".metrics.json.tmp-notapid", "export/variables_temp/x", "checkpoints/model.ckpt-2.index",
            "checkpoints/model.ckpt-2.data-00000-of-00001"]
    orphans = [
        ".config.yaml.tmp-4242",  # ours, anywhere in the run directory
        "checkpoints/.fingerprint.json.tmp-17",
        "export/.export.json.tmp-99",
        "checkpoints/model.ckpt-3.data-00000-of-00001.tempstate14564384160795304752",  # bundle writer
        "checkpoints/model.ckpt-3.index.tempstate975401039378705607",
        "checkpoints/model.ckpt-4.data-00000-of-00001",  # renamed data, killed before its index
        f"checkpoints/checkpoint.tmp{UUID_HEX}",  # checkpoint state
    ]
    orphan_folders = ["checkpoints/model.ckpt-5_temp", f"checkpoints/model.ckpt-6_temp_{UUID_HEX}"]  # sharded saves
    for name in kept + orphans + [f"{folder}/part-00000-of-00001.data-00000-of-00001.tempstate9"
                                  for folder in orphan_folders]:
        path = run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text("x")
    orphans += orphan_folders

    with caplog.at_level(logging.INFO, logger="finetune.files"):
        removed = remove_orphaned_temporaries(run_dir)
    assert sorted(str(p.relative_to(run_dir)) for p in removed) == sorted(orphans)
    assert not any((run_dir / name).exists() for name in orphans)
    assert all((run_dir / name).exists() for name in kept)
    assert complete_checkpoint(complete)
    lines = [record.getMessage() for record in caplog.records if "interrupted" in record.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"Removed {len(orphans)} file(s)")
    assert remove_orphaned_temporaries(run_dir) == []


# Saves like RunState (a tf1 Saver, relative paths, fingerprint.json written atomically before each save)
# until it is killed: by the test while a save writes its .data (mode "data", 32 MB: that takes a
# while), or by itself at save 3 just before one step of writing, in the TF code that does it.
SAVE_UNTIL_KILLED = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import finetune.compat
    import numpy as np
    from finetune.compat import tf, tf1
    from finetune.files import write_json_atomically
    from tensorflow.python.lib.io import file_io

    folder, mode = Path(sys.argv[1]), sys.argv[2]
    step = 0

    def die_before(module, name, condition):
        original = getattr(module, name)
        def call(*args, **kwargs):
            if condition(*args):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        setattr(module, name, call)

    if mode == "state":  # the checkpoint state file's temporary is written, not yet renamed
        die_before(file_io, "rename", lambda *args: step == 3 and "checkpoint.tmp" in str(args[0]))
    elif mode == "deletion":  # max_to_keep drops model.ckpt-1: its .index is deleted, its .data not yet
        die_before(file_io, "delete_file", lambda *args: ".data-" in str(args[0]))
    elif mode == "own":  # our fingerprint.json temporary is written, not yet renamed
        die_before(os, "replace", lambda *args: step == 3 and Path(args[1]).name == "fingerprint.json")
    with tf.Graph().as_default():
        size = 8 << 20 if mode == "data" else 16
        weights = tf1.get_variable("w", initializer=tf.constant(np.random.rand(size).astype(np.float32)))
        saver = tf1.train.Saver(max_to_keep=2, save_relative_paths=True)
        with tf1.Session() as sess:
            sess.run(weights.initializer)
            print("ready", flush=True)
            for step in range(1, 100000 if mode == "data" else 5):
                write_json_atomically(folder / "fingerprint.json", {"step": step})
                saver.save(sess, str(folder / "model.ckpt"), global_step=step, write_meta_graph=False)
""")
# What each kill leaves, as removed: mode -> a pattern every removed name matches.
KILL_LEAVES = {
    "data": r"model\.ckpt-\d+\.(data-00000-of-00001(\.tempstate\d+)?|index\.tempstate\d+)",
    "state": r"checkpoint\.tmp[0-9a-f]{32}",
    "deletion": r"model\.ckpt-1\.data-00000-of-00001",
    "own": r"\.fingerprint\.json\.tmp-\d+",
}


def _saving(checkpoints: Path, mode: str) -> subprocess.Popen:
    checkpoints.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", SAVE_UNTIL_KILLED, str(checkpoints), mode], stdout=subprocess.PIPE,
                            text=True)


def _kill_while_data_is_written(checkpoints: Path, child: subprocess.Popen | None = None) -> None:
    """Kill ``child`` (else a new "data" process saving into ``checkpoints``) once its second save began."""
    child = child or _saving(checkpoints, "data")
    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not ("checkpoint" in (names := os.listdir(checkpoints)) and any(".tempstate" in n for n in names)):
            assert time.monotonic() < deadline, "no second save began"
            time.sleep(0.001)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def _interrupted(checkpoints: Path) -> bool:
    """Whether a save was cut short: a temporary, or a .data shard without its .index."""
    names = os.listdir(checkpoints)
    return any(".tempstate" in n or (".data-" in n and f"{n.split('.data-')[0]}.index" not in names) for n in names)


@pytest.mark.slow
def test_saves_killed_midway_leave_only_orphans_that_are_removed(tmp_path):
    """Every file left after the cleanup is the state file, fingerprint.json, or part of a complete
    checkpoint, and the latest checkpoint reads."""
    # All four at once: they start slowly (each imports TensorFlow).
    data = _saving(tmp_path / "data" / "checkpoints", "data")
    killed_by_themselves = {mode: _saving(tmp_path / mode / "checkpoints", mode)
                            for mode in ("state", "deletion", "own")}
    _kill_while_data_is_written(tmp_path / "data" / "checkpoints", data)
    for _attempt in range(2):  # the kill lands inside a save almost always; try again when it did not
        if _interrupted(tmp_path / "data" / "checkpoints"):
            break
        shutil.rmtree(tmp_path / "data")
        _kill_while_data_is_written(tmp_path / "data" / "checkpoints")
    for mode, child in killed_by_themselves.items():
        assert child.wait(timeout=120) == -signal.SIGKILL, f"{mode}: not killed where planned"
        child.stdout.close()
    for mode, pattern in KILL_LEAVES.items():
        checkpoints = tmp_path / mode / "checkpoints"
        removed = remove_orphaned_temporaries(tmp_path / mode)
        assert removed and all(re.fullmatch(pattern, p.name) for p in removed), (mode, removed)
        prefixes = {name.removesuffix(".index") for name in os.listdir(checkpoints) if name.endswith(".index")}
        for name in os.listdir(checkpoints):
            prefix = name.split(".data-")[0].removesuffix(".index")
            assert name in ("checkpoint", "fingerprint.json") or prefix in prefixes, (mode, name)
        assert all(complete_checkpoint(str(checkpoints / prefix)) for prefix in prefixes)
        latest = tf.train.latest_checkpoint(str(checkpoints))
        assert complete_checkpoint(latest) and tf.train.load_checkpoint(latest).get_tensor("w").size >= 16
