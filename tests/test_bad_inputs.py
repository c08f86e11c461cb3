"""The catalogue of bad inputs (issue 9): each one run as a user runs it, ending in one clear paragraph.

The one catalogue of bad input on the command line (the former tests/test_cli_errors.py and
test_pipeline.py's command-line errors are cases here). :data:`CASES` is data: an id, what the input
is (the failure table of docs/security.md, written by ``scripts/failure_table.py``), how to make it in
a temporary folder, the command, the exit status (2 bad input, 1 internal failure; see
finetune/errors.py) and fragments the message must hold (the key or file, and the fix). Every case
also asserts no Python traceback, and that an earlier run's files in the run directory stay
byte-identical.

A case runs its command line in this process (conftest.cli: the same argv, working directory,
environment, output and exit status, without a second TensorFlow start): its subject is a config, a
file or a message. A subprocess runs only where the process is the subject: the faults injected into
a real run (``script``), and the ``process`` cases, which prove that ``python -m finetune`` itself
exits with status 2 and no traceback, refused once before Hydra starts and once inside the task, after
TensorFlow is loaded. Cases that build a training graph and do not depend on the demo experiment use
the tiny profile (:func:`tiny`); those about the demo's cut names and shapes keep the demo experiment,
and fail before training anyway. The full disks are real: a small tmpfs mounted for the case (root only;
elsewhere the case is skipped, saying why).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional
from unittest import mock

import numpy as np
import pytest
from conftest import TINY_BACKBONE, CliResult, cli, tiny_overrides

# Files an earlier run left in the run directory; each case must leave them byte-identical.
EARLIER_RUN = {"config.yaml": b"train:\n  steps: 7\n", "metrics.json": b'{"val": {"accuracy": 0.5}}\n',
               "export/frozen_graph.pb": b"earlier export\n", "notes.txt": b"the user's notes\n"}
# What any run rewrites whatever happens: Hydra's record of the command, the log, the lock's holder, and
# status.json (which says the run failed, and why).
REWRITTEN = (".hydra/", "finetune.log", ".lock", "status.json")
EXPERIMENT = "experiment=mobilenet_head"
TINY_CUT = dict(override.split("=", 1) for override in TINY_BACKBONE)["backbone.cut"]  # the tiny profile's cut


@dataclass
class Paths:
    """Where a case runs: its temporary folder, the demo cache, the tiny profile's image folder (conftest's
    tiny_data: read only), and its run directory."""

    tmp: Path
    cache: Path
    data: Path

    @property
    def run(self) -> Path:
        return self.tmp / "run"


@dataclass
class Case:
    id: str
    input: str  # what the user gave, for the failure table
    args: list[str]  # after `python -m`; {tmp}, {cache}, {data}, {run} are filled in
    fragments: list[str]  # the message must hold each ({tmp}, ... filled in too)
    status: int = 2
    setup: Callable[[Paths], object] = lambda paths: None  # makes the input; may return what must stay alive
    slow: bool = False  # builds a training graph, trains, or starts a subprocess
    script: Optional[str] = None  # a subprocess `python -c SCRIPT ARGS` (faults injected into a real run)
    process: bool = False  # a subprocess `python -m ARGS`: the real entry point's exit status is the subject
    check: Callable[[Paths], None] = lambda paths: None  # more assertions after the run


def finetune(*overrides: str) -> list[str]:
    """The demo experiment's command line."""
    return ["finetune", EXPERIMENT, "hydra.run.dir={run}", *overrides]


def tiny(*overrides: str) -> list[str]:
    """The tiny profile's command line (conftest.tiny_overrides), for cases that build a training graph but
    are not about the demo experiment: a smaller graph on a smaller image folder. The feature cache is off:
    these runs stop before training, and the image tower alone is quicker to build."""
    return ["finetune", *tiny_overrides("{cache}", "{data}", "data.feature_cache=off", "hydra.run.dir={run}",
                                        *overrides)]


def early(*args: str) -> list[str]:
    """The demo experiment's command line with a run and a sweep folder that must not be made
    (:func:`nothing_made`); flags (``-m``) first, as Hydra's parser wants them."""
    flags = [arg for arg in args if arg.startswith("-")]
    return ["finetune", *flags, EXPERIMENT, "hydra.run.dir={tmp}/fresh", "hydra.sweep.dir={tmp}/sweep",
            *(arg for arg in args if arg not in flags)]


def nothing_made(paths: Paths) -> None:
    """Refused before anything starts: neither the run's nor a sweep's folder, nor Hydra's defaults, exist."""
    made = [name for name in ("fresh", "sweep", "outputs", "multirun") if (paths.tmp / name).exists()]
    assert not made and not (paths.run / ".hydra").exists(), made


def training_shard_names(paths: Paths) -> None:
    """A TF-Slim set whose split is named 'training' (the file names are all the early check reads)."""
    (paths.tmp / "slim").mkdir()
    for name in ("flowers_training_00000-of-00001.tfrecord", "labels.txt"):
        (paths.tmp / "slim" / name).write_bytes(b"")


def lacking(name: str, value: object, module: str = "finetune.preflight") -> Callable[[Paths], object]:
    """A setup under which this machine lacks something (a plugin, SLURM's commands): ``MODULE.NAME``
    is ``value`` while the case runs (run_case closes what the setup returns)."""
    def setup(paths: Paths) -> object:
        patcher = mock.patch(f"{module}.{name}", value)
        patcher.start()
        return SimpleNamespace(close=patcher.stop)
    return setup


def tools(*args: str) -> list[str]:
    return ["finetune.tools", *args]


# --- inputs made in the case's folder ---------------------------------------------------------------------

def small_dataset(paths: Paths, classes: int = 2, per_class: int = 12) -> Path:
    """A few of the demo's images in ``tmp/data/<class>/``."""
    source = paths.cache / "demo" / "target_images"
    root = paths.tmp / "data"
    for class_dir in sorted(source.iterdir())[:classes]:
        (root / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy(image, root / class_dir.name / image.name)
    return root


def with_bad_file(name: str, content: bytes) -> Callable[[Paths], None]:
    def setup(paths: Paths) -> None:
        root = small_dataset(paths)
        (root / sorted(os.listdir(root))[0] / name).write_bytes(content)
    return setup


def truncated_png(paths: Paths) -> None:
    root = small_dataset(paths)
    good = sorted((root / sorted(os.listdir(root))[0]).iterdir())[0].read_bytes()
    (root / sorted(os.listdir(root))[0] / "cut_short.png").write_bytes(good[:len(good) // 2])


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (its pixel data is a stub: nothing may decode it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def non_utf8_name(paths: Paths) -> None:
    root = small_dataset(paths)
    good = sorted((root / sorted(os.listdir(root))[0]).iterdir())[0].read_bytes()
    with open(os.path.join(os.fsencode(root / sorted(os.listdir(root))[0]), b"caf\xe9.png"), "wb") as handle:
        handle.write(good)  # Latin-1 bytes: not UTF-8


def single_class(paths: Paths) -> None:
    small_dataset(paths, classes=1)


def empty_folder(paths: Paths) -> None:
    (paths.tmp / "data").mkdir()


def class_of_bad_files(paths: Paths) -> None:
    """A third class folder whose only file is an HTML page saved as .jpg."""
    root = small_dataset(paths)
    (root / "zebra").mkdir()
    (root / "zebra" / "photo.jpg").write_bytes(b"<html>403 Forbidden</html>\n")


def split_folders_unknown_class(paths: Paths) -> None:
    """``data/train/<2 classes>/`` and ``data/val/`` with those and a third."""
    root = small_dataset(paths, classes=3)
    classes = sorted(p.name for p in root.iterdir())
    for split in ("train", "val"):
        for name in classes[:2] if split == "train" else classes:
            shutil.copytree(root / name, root / split / name)
    for name in classes:
        shutil.rmtree(root / name)


def csv_one_file_two_labels(paths: Paths) -> None:
    """A CSV listing one image as ./CLASS/NAME under its class and as CLASS/NAME under another."""
    root = small_dataset(paths)
    classes = sorted(os.listdir(root))
    rows = [f"{c}/{name},{c}" for c in classes for name in sorted(os.listdir(root / c))]
    first = rows[0].split(",")[0]
    (root / "labels.csv").write_text("filename,label\n" + "\n".join(rows) + f"\n./{first},{classes[1]}\n")


def private_cache_secret_opened(paths: Paths) -> None:
    """A feature cache whose secret key group and others can read."""
    (paths.tmp / "cache" / "features").mkdir(parents=True)
    (paths.tmp / "cache" / "features" / "secret.key").write_bytes(os.urandom(32))
    (paths.tmp / "cache" / "features" / "secret.key").chmod(0o644)


def regular_file(paths: Paths) -> None:
    (paths.tmp / "file").write_text("a regular file, not a folder\n")


def write_checkpoint(prefix: Path, arrays: dict[str, np.ndarray]) -> None:
    """A checkpoint holding ``arrays`` under their names."""
    from finetune.compat import tf1

    prefix.parent.mkdir(parents=True, exist_ok=True)
    graph = tf1.Graph()
    with graph.as_default():
        variables = {name: tf1.Variable(value, name=name.replace(":", "_")) for name, value in arrays.items()}
        saver = tf1.train.Saver(var_list=variables)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            saver.save(sess, str(prefix), write_meta_graph=False, write_state=False)


def demo_arrays(paths: Paths) -> dict[str, np.ndarray]:
    from finetune.compat import tf1

    from finetune import demo

    reader = tf1.train.NewCheckpointReader(demo.checkpoint())
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def other_backbone_checkpoint(paths: Paths) -> None:
    rng = np.random.default_rng(0)
    write_checkpoint(paths.tmp / "other" / "model.ckpt", {
        "InceptionV1/Conv2d_1a_7x7/weights": rng.standard_normal((7, 7, 3, 64), np.float32),
        "InceptionV1/Logits/Conv2d_0c_1x1/biases": np.zeros(1001, np.float32)})


def other_class_count_checkpoint(paths: Paths) -> None:
    """The demo backbone and a head for 3 classes (the data has 5), on the tiny profile's cut: its first
    layer reads as many channels as the cut has."""
    backbone = demo_arrays(paths)
    channels = backbone[f"MobilenetV1/{TINY_CUT}/weights"].shape[-1]
    head = {"head/conv2d_0/weights": np.zeros((3, 3, channels, 64), np.float32),
            **{f"head/conv2d_0/BatchNorm/{name}": np.ones(64, np.float32)
               for name in ("gamma", "beta", "moving_mean", "moving_variance")},
            "head/dense_3/weights": np.zeros((64, 3), np.float32), "head/dense_3/biases": np.zeros(3, np.float32)}
    write_checkpoint(paths.tmp / "earlier" / "model.ckpt", {**backbone, **head})


def copy_demo_checkpoint(paths: Paths) -> Path:
    """A copy of the shipped demo backbone's checkpoint files, to damage."""
    from finetune import demo

    target = paths.tmp / "weights"
    target.mkdir()
    for path in Path(demo.checkpoint()).parent.glob("model.ckpt.*"):
        shutil.copyfile(path, target / path.name)
    return target / "model.ckpt"


def index_without_data(paths: Paths) -> None:
    prefix = copy_demo_checkpoint(paths)
    for data in prefix.parent.glob("model.ckpt.data-*"):
        data.unlink()


def cut_short_data(paths: Paths) -> None:
    prefix = copy_demo_checkpoint(paths)
    for data in prefix.parent.glob("model.ckpt.data-*"):
        data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])


def state_names_missing_checkpoint(paths: Paths) -> None:
    prefix = copy_demo_checkpoint(paths)
    (prefix.parent / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-500"\n'
                                              'all_model_checkpoint_paths: "model.ckpt-500"\n')


def not_a_graphdef(paths: Paths) -> None:
    (paths.tmp / "model.pb").write_bytes(b"<html>404 Not Found</html>\n" * 20)


def object_npz(paths: Paths) -> None:
    objects = np.empty(2, dtype=object)
    objects[:] = [{"a": 1}, "text"]
    np.savez(paths.tmp / "weights.npz", **{"MobilenetV1/Conv2d_0/weights": objects})


def locked_run_dir(paths: Paths) -> object:
    """The run directory held by another process (here: this test's process), as a running run holds it."""
    paths.run.mkdir(parents=True, exist_ok=True)
    handle = open(paths.run / ".lock", "a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write("process 4242 on the-other-node\n")
    handle.flush()
    return handle  # kept open (and locked) until the case ends


def existing_image(paths: Paths) -> None:
    small_dataset(paths, per_class=1)


def garbage_checkpoint(paths: Paths) -> None:
    """A checkpoint prefix whose `.index` and `.data` files hold bytes that are no checkpoint."""
    (paths.tmp / "broken.ckpt.index").write_bytes(b"this is not a checkpoint index")
    (paths.tmp / "broken.ckpt.data-00000-of-00001").write_bytes(b"nor is this data")


def nan_checkpoint(paths: Paths) -> None:
    """The demo backbone with NaN and infinite values in three of its tensors: what a diverged run saves."""
    arrays = demo_arrays(paths)
    arrays["MobilenetV1/Conv2d_0/weights"].flat[:3] = np.nan
    arrays["MobilenetV1/Conv2d_1_depthwise/depthwise_weights"].flat[0] = np.inf
    arrays["MobilenetV1/Conv2d_1_pointwise/BatchNorm/moving_variance"][:] = np.nan
    write_checkpoint(paths.tmp / "diverged" / "model.ckpt", arrays)


class Mounted:
    """A small tmpfs mounted at a folder for the length of a case (root only); close() unmounts it."""

    def __init__(self, folder: Path, kib: int, read_only: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        options = f"size={kib}k" + (",ro" if read_only else "")
        if os.geteuid() != 0:
            pytest.skip("a full disk needs a small real file system: mounting a tmpfs needs root, and this test "
                        "runs as an ordinary user")
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                              text=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"this sandbox cannot mount a tmpfs ({made.stderr.strip() or made.returncode}): no small "
                        "real file system to fill")
        self.folder = folder

    def close(self) -> None:
        subprocess.run(["umount", str(self.folder)], check=True)


def read_only_folder(folder: Path) -> Optional[Mounted]:
    """A folder no file can be written into: a read-only tmpfs as root (root writes through any mode bits),
    else a folder without write permission."""
    if os.geteuid() == 0:
        return Mounted(folder, 64, read_only=True)
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    return None


def tiny_graph(paths: Paths, checkpoint: bool = False) -> None:
    """A small classifier of our own in ``tmp``: ``model.pb`` frozen (input:0 float [N, 8, 8, 3] -> logits:0,
    probabilities:0, its 64 KiB weight a frozen variable 'w' that pb2ckpt finds) and, with ``checkpoint``,
    the checkpoint ``ckpt/model.ckpt`` with its .meta that tools freeze reads."""
    from finetune import freezing, graphs
    from finetune.compat import tf, tf1

    graph = tf1.Graph()
    with graph.as_default():
        pixels = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        weights = tf1.Variable(np.random.default_rng(0).standard_normal((192, 85), np.float32), name="w")
        logits = tf.identity(tf.matmul(tf.reshape(pixels, [-1, 192]), weights), name="logits")
        tf.nn.softmax(logits, name="probabilities")
        saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            graphs.save_graph_def(freezing.freeze_session(sess, ["logits", "probabilities"]), paths.tmp / "model.pb")
            if checkpoint:
                saver.save(sess, str(paths.tmp / "ckpt" / "model.ckpt"))


def pb_and_full_disk(paths: Paths) -> Mounted:
    tiny_graph(paths)
    return Mounted(paths.tmp / "full", 16)  # four pages: the 64 KiB .data does not fit


def checkpoint_and_read_only_folder(paths: Paths) -> Optional[Mounted]:
    tiny_graph(paths, checkpoint=True)
    return read_only_folder(paths.tmp / "read_only")


def pb_and_huge_png(paths: Paths) -> None:
    tiny_graph(paths)
    (paths.tmp / "huge.png").write_bytes(png_header(40000, 40000))
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 200, 30)).save(paths.tmp / "fine.png")
    (paths.tmp / "notes.png").write_bytes(b"not an image\n")


def left_empty(folder: str) -> Callable[[Paths], None]:
    """A check: nothing (half-)written in ``tmp/folder``."""
    def check(paths: Paths) -> None:
        assert list((paths.tmp / folder).iterdir()) == []
    return check


# Faults injected into a real run: `python -c SCRIPT ARGS` runs the command line with one write patched
# to fail as it fails on a full disk.
FAULT = """
import errno, sys
import finetune.compat
from finetune.compat import tf, tf1
{patch}
from finetune.__main__ import main
sys.argv = ["finetune", *sys.argv[1:]]
main()
"""
SCRIPTS = {
    # The run's second checkpoint (step 8) fails inside TensorFlow's Saver.
    "checkpoint": FAULT.format(patch="""
original, calls = tf1.train.Saver.save, []
def save(*args, **kwargs):
    calls.append(1)
    if len(calls) > 1:
        raise tf.errors.ResourceExhaustedError(None, None, "checkpoints/model.ckpt-8_temp; No space left on device")
    return original(*args, **kwargs)
tf1.train.Saver.save = save
"""),
    # The export (after the final checkpoint) fails writing its first file.
    "export": FAULT.format(patch="""
import finetune.pipeline as pipeline
def export_model(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "export/frozen_graph.pb")
pipeline.export_model = export_model
"""),
}


def checkpoint_kept_and_usable(step: int) -> Callable[[Paths], None]:
    def check(paths: Paths) -> None:
        from finetune.compat import tf1
        from finetune.files import complete_checkpoint

        checkpoints = paths.run / "checkpoints"
        latest = tf1.train.latest_checkpoint(str(checkpoints))
        assert latest is not None and latest.endswith(f"model.ckpt-{step}") and complete_checkpoint(latest)
        reader = tf1.train.NewCheckpointReader(latest)  # usable: every tensor reads back
        assert all(reader.get_tensor(name) is not None for name in reader.get_variable_to_shape_map())
        leftovers = [p.name for p in checkpoints.iterdir() if "tempstate" in p.name or ".tmp" in p.name]
        assert not leftovers, leftovers
    return check


CASES: list[Case] = [
    # --- the command line and the config (refused before TensorFlow starts) ---
    # A real `python -m finetune` process: refused before Hydra starts, exit status 2, no traceback.
    Case("misspelt-key", "a misspelt key: `train.stpes=3`", finetune("train.stpes=3"),
         ["train.stpes", "Did you mean train.steps", "Fix the spelling"], slow=True, process=True),
    Case("misspelt-nested-key", "a misspelt nested key: `train.early_stopping.patiense=3`",
         finetune("train.early_stopping.patiense=3"),
         ["train.early_stopping.patiense", "train.early_stopping.patience"]),
    Case("unknown-key", "a key the schema lacks, added with `+`: `+train.warmup=10`", finetune("+train.warmup=10"),
         ["train.warmup", "drop the override"]),
    Case("wrong-type", "a wrong type: `train.steps=ten`", finetune("train.steps=ten"),
         ["train.steps", "could not be converted to Integer"]),
    Case("wrong-type-bool", "a wrong type: `export.enabled=maybe`", finetune("export.enabled=maybe"),
         ["export.enabled", "not a valid bool"]),
    Case("unknown-group-option", "an unknown config group option: `head=resnet_head`", finetune("head=resnet_head"),
         ["head=resnet_head", "the config group 'head' has no option 'resnet_head'", "Did you mean head=",
          "pool_dense"]),
    Case("unknown-experiment", "an unknown experiment: `experiment=mobilnet_head`",
         ["finetune", "experiment=mobilnet_head", "hydra.run.dir={run}"],
         ["experiment=mobilnet_head", "Did you mean experiment=mobilenet_head?"]),
    Case("zero-steps", "zero steps: `train.steps=0`", finetune("train.steps=0"), ["train.steps", "> 0"]),
    Case("negative-steps", "negative steps: `train.steps=-5`", finetune("train.steps=-5"), ["train.steps", "> 0"]),
    Case("zero-batch", "a zero batch size: `data.batch_size=0`", finetune("data.batch_size=0"), ["data.batch_size"]),
    Case("negative-eval-batch", "a negative batch size: `data.eval_batch_size=-8`", finetune("data.eval_batch_size=-8"),
         ["data.eval_batch_size"]),
    Case("zero-learning-rate", "a zero learning rate: `optimizer.learning_rate=0`",
         finetune("optimizer.learning_rate=0"), ["optimizer.learning_rate"]),
    Case("negative-learning-rate", "a negative learning rate: `optimizer.learning_rate=-0.01`",
         finetune("optimizer.learning_rate=-0.01"), ["optimizer.learning_rate"]),
    Case("zero-image-size", "a zero image size: `backbone.image_size=0`", finetune("backbone.image_size=0"),
         ["backbone.image_size"]),
    Case("negative-split", "a negative split fraction: `data.split.val=-0.1`",
         finetune("data.split.train=1.0", "data.split.val=-0.1", "data.split.test=0.1"),
         ["data.split.train/val/test", "summing to 1"]),
    Case("split-sum", "split fractions not summing to 1: `data.split.train=0.9`", finetune("data.split.train=0.9"),
         ["data.split.train/val/test", "summing to 1"]),
    Case("zero-max-pixels", "a zero pixel limit: `data.max_pixels=0`", finetune("data.max_pixels=0"),
         ["data.max_pixels"]),
    Case("bad-regex-include", "an include pattern that is no valid regex: `restore.include=['MobilenetV1/(']`",
         finetune("restore.include=['MobilenetV1/(']"), ["restore.include", "MobilenetV1/("]),
    Case("bad-regex-var-list", "a var_list pattern that is no valid regex: `optimizer.var_list=['head/[']`",
         finetune("optimizer.var_list=['head/[']"), ["optimizer.var_list", "head/["]),
    Case("unknown-resume", "an unknown resume policy: `resume=sometimes`", finetune("resume=sometimes"),
         ["resume", "auto", "never", "must"]),
    Case("unknown-backbone", "an unknown backbone: `backbone.name=mobilenet_v9`",
         finetune("backbone.name=mobilenet_v9"), ["backbone.name", "Did you mean", "mobilenet_v1", "backbone=NAME"]),
    Case("unknown-metric", "an optimized_metric that names no number: `optimized_metric=val.acuracy`",
         finetune("optimized_metric=val.acuracy"), ["optimized_metric"]),
    Case("run-dir-below-file", "a run directory that cannot be made (below a regular file)",
         ["finetune", EXPERIMENT, "hydra.run.dir={tmp}/file/run"], ["hydra.run.dir", "{tmp}/file", "is a file"],
         setup=regular_file),
    Case("tools-bad-top-k", "`tools predict --top-k -3`", tools("predict", "{tmp}/model.pb", "x.png", "--top-k", "-3"),
         ["--top-k", "-3"]),
    # --- the model: refused when the graph is built ---
    # The demo experiment's names: MobileNet v1 cut at Conv2d_11_pointwise, a 6x6 cut at 96 pixels.
    Case("misspelt-cut", "a misspelt cut: `backbone.cut=Conv2d_11_pointwize`",
         finetune("backbone.cut=Conv2d_11_pointwize"), ["backbone.cut", "Conv2d_11_pointwise"],
         slow=True, process=True),
    Case("cut-of-another-backbone", "a cut of another backbone: `backbone.cut=Mixed_5c` on MobileNet v1",
         finetune("backbone.cut=Mixed_5c"), ["backbone.cut", "Mixed_5c", "Conv2d_11_pointwise"], slow=True),
    Case("pool-window-too-large", "a head whose pooling window is larger than its input (`head=keras_recipe` on "
         "a 6x6 cut)", finetune("head=keras_recipe"),
         ["'avg_pool_1'", "5x5 window", "only 4x4", "[None, 6, 6, 128]", "padding SAME"], slow=True),
    Case("var-list-matches-nothing", "a var_list that matches no variable: `optimizer.var_list=[heda/]`",
         tiny("optimizer.var_list=[heda/]"), ["optimizer.var_list", "heda/"], slow=True),
    Case("include-matches-nothing", "a restore.include that matches nothing: `restore.include=[MobilenetV9/]`",
         tiny("restore.include=[MobilenetV9/]"), ["restore.include", "MobilenetV9/"], slow=True),
    Case("exclude-matches-nothing", "a restore.exclude that matches nothing: `restore.exclude=[Mobilenet_V1/]`",
         tiny("restore.exclude=[Mobilenet_V1/]"), ["restore.exclude", "Mobilenet_V1/"], slow=True),
    # --- data ---
    # A real `python -m finetune` process: refused inside the task, after TensorFlow is loaded.
    Case("data-missing", "a data folder that does not exist", finetune("data.root={tmp}/nowhere"),
         ["data.root", "{tmp}/nowhere", "does not exist", "root/<class_name>/<image>.jpg"]),
    Case("data-is-a-file", "a data.root that is a file", finetune("data.root={tmp}/file"),
         ["data.root", "{tmp}/file", "not a folder", "root/<class_name>/<image>.jpg"], setup=regular_file),
    Case("data-empty", "an empty data folder", finetune("data.root={tmp}/data"),
         ["data.root", "{tmp}/data", "0 class folder(s)", "at least two"], setup=empty_folder),
    Case("data-single-class", "a data folder with one class", finetune("data.root={tmp}/data"),
         ["{tmp}/data", "1 class folder(s)", "at least two"], setup=single_class),
    Case("image-not-an-image", "a file named .jpg that is not an image (an HTML error page)",
         finetune("data.root={tmp}/data"), ["error_page.jpg", "not an image", "Remove or replace them"],
         setup=with_bad_file("error_page.jpg", b"<html>403 Forbidden</html>\n")),
    Case("image-truncated", "a truncated PNG (a download cut short)", finetune("data.root={tmp}/data"),
         ["cut_short.png", "truncated PNG", "Remove or replace them"], setup=truncated_png),
    Case("image-zero-bytes", "a zero-byte image file", finetune("data.root={tmp}/data"),
         ["empty.jpg", "empty file (0 bytes)", "Remove or replace them"], setup=with_bad_file("empty.jpg", b"")),
    Case("image-over-max-pixels", "a 40000x40000 PNG (over `data.max_pixels`, refused before decoding)",
         finetune("data.root={tmp}/data"), ["huge.png", "data.max_pixels", "raise data.max_pixels"],
         setup=with_bad_file("huge.png", png_header(40000, 40000))),
    Case("image-over-custom-limit", "an image over a lowered limit: `data.max_pixels=1000` (96x96 images)",
         finetune("data.root={tmp}/data", "data.max_pixels=1000"), ["96x96 = 9,216 pixels", "data.max_pixels=1,000"],
         setup=existing_image),
    Case("image-name-not-utf8", "an image whose file name is not UTF-8", finetune("data.root={tmp}/data"),
         ["caf\\xe9.png", "not valid UTF-8", "rename it"], setup=non_utf8_name),
    Case("empty-train-split", "an empty train split (`data.split.train=0.001` on 24 images)",
         finetune("data.root={tmp}/data", "data.split.train=0.001", "data.split.val=0.5", "data.split.test=0.499"),
         ["training split", "data.split.train"], setup=small_dataset),
    # --- weights ---
    Case("checkpoint-missing", "a restore.checkpoint that does not exist",
         finetune("restore.checkpoint={tmp}/none.ckpt"),
         ["restore.checkpoint", "{tmp}/none.ckpt", "checkpoint prefix"]),
    Case("checkpoint-not-a-checkpoint", "a checkpoint whose `.index` and `.data` files are no checkpoint (garbage)",
         tiny("restore.checkpoint={tmp}/broken.ckpt"), ["restore.checkpoint", "{tmp}/broken.ckpt"],
         setup=garbage_checkpoint, slow=True),
    Case("checkpoint-other-backbone", "a checkpoint of another backbone (Inception v1)",
         tiny("restore.checkpoint={tmp}/other/model.ckpt"), ["restore.checkpoint", "missing in checkpoint"],
         setup=other_backbone_checkpoint, slow=True),
    Case("checkpoint-without-head", ("a restore.include naming the head, which the backbone's checkpoint lacks: "
                                     "`restore.include=[MobilenetV1/,head/]`"),
         tiny("restore.include=[MobilenetV1/,head/]"), ["restore.checkpoint", "missing in checkpoint: head/"],
         slow=True),
    Case("checkpoint-other-shape", "a checkpoint of another width (`depth_multiplier=0.5` vs 0.25)",
         tiny("backbone.params.depth_multiplier=0.5"),
         ["restore.checkpoint", "shape mismatch: MobilenetV1/Conv2d_0/weights graph [3, 3, 3, 16] vs checkpoint "
                                "[3, 3, 3, 8]"], slow=True),
    Case("checkpoint-other-class-count", "a checkpoint whose head has another class count (3 vs 5)",
         tiny("restore.checkpoint={tmp}/earlier/model.ckpt", "restore.include=[MobilenetV1/,head/]"),
         ["restore.checkpoint", "shape mismatch: head/dense_3/weights graph [64, 5] vs checkpoint [64, 3]"],
         setup=other_class_count_checkpoint, slow=True),
    Case("checkpoint-index-without-data", "a checkpoint `.index` without its `.data` file",
         tiny("restore.checkpoint={tmp}/weights/model.ckpt"), ["restore.checkpoint", "{tmp}/weights/model.ckpt"],
         setup=index_without_data, slow=True),
    Case("checkpoint-data-cut-short", "a checkpoint whose `.data` file is cut short",
         tiny("restore.checkpoint={tmp}/weights/model.ckpt"),
         ["restore.checkpoint", "{tmp}/weights/model.ckpt", "damaged or cut short", "Download or copy it again"],
         setup=cut_short_data, slow=True),
    Case("checkpoint-state-names-missing", "a checkpoint folder whose `checkpoint` file names a missing checkpoint",
         finetune("restore.checkpoint={tmp}/weights"),
         ["restore.checkpoint", "'checkpoint' file names", "model.ckpt-500"],
         setup=state_names_missing_checkpoint),
    Case("pb-not-a-graphdef", "a `.pb` that is not a GraphDef (an HTML page)",
         tiny("restore.checkpoint={tmp}/model.pb"), ["{tmp}/model.pb", "GraphDef"], setup=not_a_graphdef,
         slow=True),
    Case("tools-pb-not-a-graphdef", "`tools inspect` on a `.pb` that is not a GraphDef",
         tools("inspect", "{tmp}/model.pb"), ["{tmp}/model.pb", "GraphDef"], setup=not_a_graphdef),
    Case("npz-object-array", "an `.npz` holding an object array (needs pickle: never loaded)",
         tiny("restore.checkpoint={tmp}/weights.npz"), ["{tmp}/weights.npz", "never unpickled"],
         setup=object_npz, slow=True),
    Case("zoo-unknown-name", "an unknown zoo checkpoint: `restore.checkpoint=zoo:mobilenet_v1_0.3_96`",
         finetune("restore.checkpoint=zoo:mobilenet_v1_0.3_96"),
         ["restore.checkpoint", "not a published TF-Slim zoo checkpoint", "mobilenet_v1_0.25_128"]),
    Case("zoo-offline", "a zoo checkpoint with no network: `restore.checkpoint=zoo:mobilenet_v1_0.25_128`",
         finetune("restore.checkpoint=zoo:mobilenet_v1_0.25_128"),
         ["restore.checkpoint", "mobilenet_v1_0.25_128.tgz", "could not be downloaded", "tar"]),
    # --- the run directory, the cache, the disk ---
    Case("cache-below-file", "a cache directory that cannot be written (below a regular file)",
         finetune("paths.cache_dir={tmp}/file/cache"), ["paths.cache_dir", "{tmp}/file/cache", "FINETUNE_CACHE"],
         setup=regular_file),
    Case("run-dir-in-use", "two runs in one run directory at once", finetune(),
         ["{run}", "in use by process 4242 on the-other-node", "hydra.run.dir"], setup=locked_run_dir),
    Case("resume-must-nothing", "`resume=must` with no checkpoint to resume", finetune("resume=must"),
         ["resume=must", "holds no checkpoint"]),
    Case("disk-full-checkpoint", "a full disk while a checkpoint is written (TensorFlow's ResourceExhaustedError)",
         tiny("train.steps=8", "train.checkpoint_every=4", "export.enabled=false", "data.batch_size=4")[1:],
         ["The disk is full", "model.ckpt-4", "model.ckpt-4",
          "free some space and run it again in the same run directory",
          "Resume it with: python -m finetune experiment=mobilenet_head", "hydra.run.dir={run}"],
         slow=True, script="checkpoint", check=checkpoint_kept_and_usable(4)),
    Case("disk-full-export", "a full disk during export (OSError ENOSPC)",
         tiny("train.steps=4", "data.batch_size=4")[1:],
         ["The disk is full", "export/frozen_graph.pb", "model.ckpt-4",
          "run it again in the same run directory to resume",
          "Resume it with: python -m finetune experiment=mobilenet_head", "hydra.run.dir={run}"],
         slow=True, script="export", check=checkpoint_kept_and_usable(4)),
    # --- tools ---
    Case("tools-missing-pb", "`tools predict` on a missing `.pb`", tools("predict", "{tmp}/missing.pb", "{tmp}/x.png"),
         ["{tmp}/missing.pb"]),
    Case("tools-freeze-missing-checkpoint", "`tools freeze` of a missing checkpoint",
         tools("freeze", "--checkpoint", "{tmp}/missing.ckpt", "--outputs", "a", "--output", "{tmp}/out.pb"),
         ["{tmp}/missing.ckpt"]),
    Case("tools-unknown-option", "`tools inspect` with an unknown option", tools("inspect", "--colour", "x"),
         ["unrecognized arguments", "--colour"]),
    # --- issue 18: status and summarize ---
    Case("sweep-done-under-another-config", "a sweep run again after its experiment changed: a done job's recorded "
         "config is another", ["finetune", "-m", EXPERIMENT, "optimizer.learning_rate=0.02",
                               "hydra.sweep.dir={tmp}/sweep", "hydra.sweep.subdir=job${hydra.job.num}"],
         ["Job #0 of this sweep, {tmp}/sweep/job0, finished under another config", "data.split.train (0.5 -> 0.6)",
          "hydra.sweep.dir=NEW_DIR", "delete the job directory", "put those keys back"],
         setup=lambda paths: job_done_under_another_config(paths), check=lambda paths: done_job_untouched(paths)),
    Case("summarize-output-unwritable", "`tools summarize --output` into a folder that cannot be made (below a file)",
         tools("summarize", "{tmp}/sweep", "--output", "{tmp}/file/tables"),
         ["summarize --output {tmp}/file/tables", "cannot be written", "Name a folder you can write"],
         setup=lambda paths: (regular_file(paths), job_done_under_another_config(paths)),
         check=lambda paths: done_job_untouched(paths)),
    # --- issue 18: classes and the cache ---
    Case("class-of-bad-files", "a class folder whose only file is skipped (not an image)",
         finetune("data.root={tmp}/data", "data.max_bad_fraction=0.5"),
         ["{tmp}/data", "1 class(es) with no usable training image", "'zebra': 1 file(s) skipped: zebra/photo.jpg: not "
          "an image", "remove its folder"], setup=class_of_bad_files),
    Case("csv-one-file-two-labels", "a CSV listing one image under two spellings and two labels",
         finetune("data=csv", "data.root={tmp}/data/labels.csv"),
         ["{tmp}/data/labels.csv", "more than once, under another label or split", "line 2: ", "line 26: './",
          "List each image once"], setup=csv_one_file_two_labels),
    Case("cache-secret-readable", "a feature-cache secret key that group and others can read (mode 0644)",
         ["finetune", "experiment=mobilenet_head", *TINY_BACKBONE, "data.root={data}", "train.steps=4",
          "paths.cache_dir={tmp}/cache", "data.feature_cache=require", "hydra.run.dir={run}"],
         ["{tmp}/cache/features/secret.key", "readable or writable by group or others (mode 0644)", "chmod 600",
          "delete it"], setup=private_cache_secret_opened, slow=True),
    # --- issue 18: internal errors ---
    Case("depth-multiplier-negative", "a width factor <= 0: `backbone.params.depth_multiplier=-0.5`",
         finetune("backbone.params.depth_multiplier=-0.5"), ["backbone.params.depth_multiplier", "-0.5", "> 0"]),
    Case("depth-multiplier-zero", "a zero width factor on the tiny profile: `backbone.params.depth_multiplier=0`",
         tiny("backbone.params.depth_multiplier=0"), ["backbone.params.depth_multiplier", "a number > 0"]),
    Case("checkpoint-nan", "a checkpoint holding NaN and infinite values (saved by a diverged run)",
         tiny("restore.checkpoint={tmp}/diverged/model.ckpt"),
         ["restore.checkpoint", "{tmp}/diverged/model.ckpt", "NaN or infinite values in 3 tensor(s)",
          "MobilenetV1/Conv2d_0/weights (3 of 216 values)", "MobilenetV1/Conv2d_1_depthwise/depthwise_weights (1 of",
          "another checkpoint"], setup=nan_checkpoint, slow=True),
    Case("tools-pb2ckpt-disk-full", "`tools pb2ckpt` onto a full disk (a 16 KiB tmpfs)",
         tools("pb2ckpt", "{tmp}/model.pb", "{tmp}/full/model.ckpt"),
         ["The disk is full", "{tmp}/full/model.ckpt", "No space left on device", "nothing was written there",
          "another disk"], setup=pb_and_full_disk, check=left_empty("full")),
    Case("tools-freeze-read-only", "`tools freeze --output` into a read-only folder",
         tools("freeze", "--checkpoint", "{tmp}/ckpt/model.ckpt", "--outputs", "probabilities", "--output",
               "{tmp}/read_only/model.pb"),
         ["Cannot write {tmp}/read_only/model.pb", "nothing was written there", "another folder"],
         setup=checkpoint_and_read_only_folder, check=left_empty("read_only")),
    Case("tools-predict-huge-png", "`tools predict` on a 40000x40000 PNG and a text file named .png (nothing else)",
         tools("predict", "{tmp}/model.pb", "{tmp}/huge.png", "{tmp}/notes.png", "--input",
               "input:0", "--output", "probabilities:0"),
         ["None of the 2 image(s) can be classified", "{tmp}/huge.png: more pixels than PIL reads, over "
          "data.max_pixels=50000000", "{tmp}/notes.png: not an image", "--max-pixels"], setup=pb_and_huge_png),
    Case("tools-freeze-run-without-checkpoint", "`tools freeze` of a run directory that holds no checkpoint yet",
         tools("freeze", "--checkpoint", "{run}", "--output", "{tmp}/model.pb"),
         ["{run}", "holds no checkpoint yet", "train it first"],
         setup=lambda paths: (paths.run / "checkpoints").mkdir(parents=True)),
    # --- issue 19: errors before anything starts ---
    # Refused before Hydra starts (finetune.preflight) or before it makes the run directory (the paths): no
    # folder made, no Hydra text (tests/test_cli.py's probe: no TensorFlow either, under a second).
    Case("group-option-wrong", "a backbone group option that does not exist: `backbone=resnet50`",
         early("backbone=resnet50"), ["backbone=resnet50",
                                      "Did you mean backbone=resnet_v2_50 or backbone=resnet_v1_50?",
                                      "Its options:"], check=nothing_made),
    Case("optimizer-option-wrong", "an optimizer group option that does not exist: `optimizer=adamw`",
         early("optimizer=adamw"), ["optimizer=adamw", "Did you mean optimizer=adam?"], check=nothing_made),
    Case("experiment-option-wrong", "an experiment that does not exist: `experiment=mobilenet_heads`",
         ["finetune", "experiment=mobilenet_heads", "hydra.run.dir={tmp}/fresh"],
         ["experiment=mobilenet_heads", "Did you mean experiment=mobilenet_head?"], check=nothing_made),
    Case("group-misspelt", "a misspelt group: `optimiser.learning_rate=0.1`", early("optimiser.learning_rate=0.1"),
         ["no group or key 'optimiser'", "Did you mean optimizer.learning_rate=0.1?"], check=nothing_made),
    Case("launcher-plugin-missing", "`hydra/launcher=submitit_slurm` without the hydra-submitit-launcher plugin",
         early("-m", "hydra/launcher=submitit_slurm", "train.steps=1,2"),
         ["hydra/launcher=submitit_slurm", "hydra-submitit-launcher, which is not installed",
          'pip install "finetune[cluster]"'],
         setup=lacking("installed", lambda module: module != "hydra_plugins.hydra_submitit_launcher"),
         check=nothing_made),
    Case("sweeper-plugin-missing", "`hparams_search=optuna` without the hydra-optuna-sweeper plugin",
         early("hparams_search=optuna"), ["hparams_search=optuna", "hydra-optuna-sweeper, which is not installed",
                                          'pip install "finetune[cluster]"'],
         setup=lacking("installed", lambda module: module != "hydra_plugins.hydra_optuna_sweeper"), check=nothing_made),
    Case("slurm-missing", "`hydra/launcher=slurm` sweep on a machine without SLURM (no srun, no sbatch)",
         early("-m", "hydra/launcher=slurm", "train.steps=1,2"),
         ["hydra/launcher=slurm", "no sbatch and no srun on PATH", "hydra/launcher=local_submitit"],
         setup=lacking("missing_slurm_commands", lambda: ["sbatch", "srun"]), check=nothing_made),
    Case("sweep-with-cfg", "`-m` together with `--cfg job`", early("-m", "--cfg=job", "train.steps=1,2"),
         ["-m and --cfg cannot go together", "finetune.tools validate -m"], check=nothing_made),
    Case("graph-file-missing", "a frozen-graph backbone whose `.pb` does not exist",
         early("backbone=frozen_graph", "backbone.params.graph={tmp}/missing.pb", "backbone.cut=x:0"),
         ["backbone.params.graph", "{tmp}/missing.pb", "does not exist"], check=nothing_made),
    Case("tfrecord-split-name-wrong",
         "TFRecord shards named `..._training_...` while data.split_names.train is `train`",
         early("data=tfrecord", "data.root={tmp}/slim"),
         ["no shard of the training split", "flowers_training_00000-of-00001.tfrecord", "data.split_names.train"],
         setup=training_shard_names, check=nothing_made),
    Case("csv-root-is-a-folder", "`data=csv` whose data.root is a folder, not the CSV file",
         early("data=csv", "data.root={tmp}"), ["data.root", "a folder, not a file", "CSV file"], check=nothing_made),
    # --- issue 19: folder layouts ---
    Case("split-folders-beside-classes", "an image folder holding `train/` beside class folders (which layout?)",
         finetune("data.root={tmp}/data"), ["{tmp}/data", "folders named like splits (train) beside others",
                                            "classifier of split names", "data.layout=class_folders"],
         setup=lambda paths: shutil.copytree(small_dataset(paths), paths.tmp / "data" / "train")),
    Case("split-folders-unknown-class", "split folders whose `val/` holds a class `train/` lacks",
         finetune("data.root={tmp}/data"), ["The val folder", "class folder(s) the training folder lacks",
                                            "cannot predict a class it was not trained on"],
         setup=lambda paths: split_folders_unknown_class(paths)),
    # --- issue 20: tools evaluate ---
    Case("evaluate-unknown-class", "`tools evaluate` on data holding a class the model has no output for",
         tools("evaluate", "{tmp}/model/model.pb", "data.root={tmp}/data", "--output", "{tmp}/eval"),
         ["has 1 class(es) the model {tmp}/model/model.pb does not know", "(12 image(s))", "The model's 85 classes",
          "leave those images out"], setup=lambda paths: model_knowing_one_class(paths),
         check=lambda paths: nothing_named(paths, "eval")),
    Case("evaluate-no-labels", "`tools evaluate` on a SavedModel without class names (no model.json, no --labels)",
         tools("evaluate", "{tmp}/saved", "data.root={tmp}/data", "--output", "{tmp}/eval"),
         ["{tmp}/saved comes with no class names", "--labels FILE"],
         setup=lambda paths: saved_model_without_labels(paths), check=lambda paths: nothing_named(paths, "eval")),
    Case("evaluate-foreign-graph", "`tools evaluate` on a .pb without the model.json an export writes",
         tools("evaluate", "{tmp}/model.pb", "data.root={tmp}/data", "--output", "{tmp}/eval"),
         ["{tmp}/model.pb has no model.json beside it", "tools predict"], setup=lambda paths: tiny_graph(paths)),
    Case("evaluate-bad-split", "`tools evaluate --split validation` (the split is called val)",
         tools("evaluate", "{tmp}/model.pb", "--split", "validation"), ["--split 'validation'", "val,test"]),
    # --- issue 20, item 5: test-time augmentation (eval.tta) ---
    Case("tta-view-unknown", "an unknown test-time augmentation view: `eval.tta=[identity,flip_lr]`",
         early("eval.tta=[identity,flip_lr]"),
         ["Config key 'eval.tta'", "'flip_lr' is neither a view nor a preset", "Did you mean", "flip_left_right",
          "center_crop_P", "presets: flips (identity, flip_left_right)", "eval.tta=..."], check=nothing_made),
    # --- issue 19: a run's length in epochs, evaluations during training ---
    Case("epochs-with-phases", "`train.epochs=2` with train.phases, whose phases have lengths of their own",
         ["finetune", "experiment=mobilenet_two_phase", "hydra.run.dir={run}", "train.epochs=2"],
         ["'train.epochs' is 2, but train.phases is set too", "train.epochs=null", "train.phases.N.epochs"]),
    Case("eval-every-zero", "`train.eval_every=0`, which once meant: evaluate only after training",
         finetune("train.eval_every=0"), ["'train.eval_every' is 0", "'epoch'", "an integer > 0", "null does"]),
    # --- issue 20: quantized TFLite and ONNX exports (refused before anything starts) ---
    Case("tflite-quantization-without-tflite", "`export.tflite_quantization=int8` without `export.tflite=true`",
         early("export.tflite_quantization=int8"), ["export.tflite_quantization", "set export.tflite=true too"],
         check=nothing_made),
    Case("tflite-quantization-wrong", "a TFLite quantization that does not exist: `export.tflite_quantization=int4`",
         early("export.tflite=true", "export.tflite_quantization=int4"),
         ["export.tflite_quantization", "none, dynamic, float16, int8", "Did you mean int8?"], check=nothing_made),
    Case("onnx-extra-missing", "`export.onnx=true` without tf2onnx and onnxruntime installed",
         early("export.onnx=true"), ["export.onnx", "tf2onnx and onnxruntime are not installed",
                                     'pip install "finetune[onnx]"'],
         setup=lacking("missing_packages", lambda modules: list(modules), module="finetune.validate"),
         check=nothing_made),
]


def model_knowing_one_class(paths: Paths) -> None:
    """tiny_graph's model in ``tmp/model`` with a model.json and labels naming the first class of
    :func:`small_dataset` and 84 others, so the dataset's second class is unknown to it."""
    tiny_graph(paths)
    data = small_dataset(paths)
    known = sorted(folder.name for folder in data.iterdir())[0]
    (paths.tmp / "model").mkdir()
    (paths.tmp / "model.pb").rename(paths.tmp / "model" / "model.pb")
    (paths.tmp / "model" / "labels.txt").write_text("".join(f"{name}\n" for name in
                                                             [known, *(f"other_{i}" for i in range(84))]))
    (paths.tmp / "model" / "model.json").write_text(json.dumps({
        "input": "input:0", "input_type": "float", "image_size": 8, "labels": "labels.txt",
        "outputs": {"logits": "logits:0", "probabilities": "probabilities:0"}}))


def saved_model_without_labels(paths: Paths) -> None:
    """tiny_graph's model as a SavedModel folder ``tmp/saved`` (nothing beside it), and :func:`small_dataset`."""
    from finetune import graphs
    from finetune.export import formats

    tiny_graph(paths)
    small_dataset(paths)
    formats.write_saved_model(graphs.load_graph_def(paths.tmp / "model.pb"), "input:0",
                              {"probabilities": "probabilities:0"}, paths.tmp / "saved")


def nothing_named(paths: Paths, folder: str) -> None:
    """The folder ``tmp/folder`` was not made (nor a temporary one beside it)."""
    assert not [path.name for path in paths.tmp.iterdir() if folder in path.name]


def fill(text: str, paths: Paths) -> str:
    for name, value in (("tmp", paths.tmp), ("cache", paths.cache), ("data", paths.data), ("run", paths.run)):
        text = text.replace("{" + name + "}", str(value))
    return text


def earlier_files(run_dir: Path) -> dict[str, bytes]:
    """The run directory's files, but those every start rewrites (:data:`REWRITTEN`)."""
    if not run_dir.is_dir():
        return {}
    found = {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    return {name: data for name, data in found.items() if not name.startswith(REWRITTEN)}


def closed_port() -> int:
    """A local port nothing listens on (bound, then released): a download from it fails at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


Result = CliResult | subprocess.CompletedProcess


def run_case(case: Case, tmp: Path, cache: Path, data: Path, timeout: int = 600) -> tuple[Result, str]:
    """Make the case's input in ``tmp`` (and an earlier run's files in its run directory), run its command
    as a user does, with FINETUNE_CACHE=``cache`` and no network (``data``: the tiny profile's images);
    returns the result (exit status, stdout, stderr) and its stdout + stderr.

    In this process (conftest.cli) unless the case's subject is the process: ``script`` and ``process``
    cases start ``python`` as a user does."""
    paths = Paths(tmp, cache, data)
    for relative, content in EARLIER_RUN.items():
        if case.script is None:  # a fault-injected run trains: it starts in an empty run directory
            (paths.run / relative).parent.mkdir(parents=True, exist_ok=True)
            (paths.run / relative).write_bytes(content)
    alive = case.setup(paths)
    args = [fill(arg, paths) for arg in case.args]
    no_network = {"FINETUNE_ZOO_URL": f"http://127.0.0.1:{closed_port()}"}
    try:
        if case.script or case.process:
            python = [sys.executable, "-c", SCRIPTS[case.script]] if case.script else [sys.executable, "-m"]
            env = {**os.environ, "FINETUNE_CACHE": str(cache), **no_network}
            result: Result = subprocess.run([*python, *args], cwd=tmp, env=env, capture_output=True, text=True,
                                            timeout=timeout, errors="backslashreplace", check=False)
        else:
            result = cli(args, tmp, cache=cache, env=no_network)
    finally:
        if hasattr(alive, "close"):
            alive.close()
    return result, result.stdout + result.stderr


def first_sentence(output: str, limit: int = 240) -> str:
    """The first sentence of the paragraph the user sees: our logged error, a tool's ``error:`` line,
    argparse's complaint, or else (validation, Hydra) the first lines of the output."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    logged = [line.split("[ERROR] - ", 1)[1] for line in lines if "[ERROR] - " in line and "][finetune]" in line]
    tool = [i for i, line in enumerate(lines) if line.startswith("error:")]
    usage = [line.split(": error: ", 1)[1] for line in lines if ": error: " in line]
    if logged:
        text = logged[0]
    elif tool:
        text = " ".join(lines[tool[0]:])[len("error:"):].strip()
    elif usage:
        text = usage[0]
    else:
        text = " ".join(lines[:2])
    end = len(text)
    for i, char in enumerate(text):
        if char == "." and (i + 1 == len(text) or text[i + 1] == " ") and not text[:i + 1].endswith(("e.g.", "i.e.")):
            end = i + 1
            break
    text = text[:end]
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _params() -> list:
    params = []
    for case in CASES:
        params.append(pytest.param(case, id=case.id, marks=[pytest.mark.slow] if case.slow else []))
    return params


@pytest.mark.parametrize("case", _params())
def test_bad_input_gives_one_clear_paragraph(case: Case, demo_cache, tiny_data, tmp_path):
    result, output = run_case(case, tmp_path, demo_cache, tiny_data)
    paths = Paths(tmp_path, demo_cache, tiny_data)
    assert result.returncode == case.status, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for fragment in case.fragments:
        assert fill(fragment, paths) in output, (fill(fragment, paths), output[-3000:])
    if case.script is None:
        assert earlier_files(paths.run) == {k: v for k, v in EARLIER_RUN.items()} or not paths.run.exists()
        status = paths.run / "status.json"
        if status.exists():  # written by a run that got as far as its task: it failed, and says why
            recorded = json.loads(status.read_text())
            assert recorded["state"] == "failed" and recorded["message"].split("\n")[0] in output, recorded
    case.check(paths)


def test_the_catalogue_is_large_and_its_ids_unique():
    assert len(CASES) >= 40 and len({case.id for case in CASES}) == len(CASES)
    # The real entry point's proof stays: a process refused before Hydra starts, and one refused in its task.
    assert {case.id for case in CASES if case.process} == {"misspelt-key", "misspelt-cut"}
    assert all(case.slow for case in CASES if case.process or case.script)


def test_an_unexpected_exception_is_one_paragraph_exit_1_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    from finetune.tools import plan

    def broken(args):
        raise KeyError("no such thing")

    monkeypatch.setattr(plan, "run", broken)  # the parser takes each command's run when it is built
    plain = cli(["finetune.tools", "plan"], tmp_path)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert "internal error: KeyError: 'no such thing'; this is a bug or an environment problem" in plain.stderr
    assert "--debug" in plain.stderr
    debug = cli(["finetune.tools", "--debug", "plan"], tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "internal error: KeyError" in debug.stderr


def test_an_unexpected_exception_in_a_run_exits_1_and_hydra_verbose_shows_the_traceback(demo_cache, tmp_path,
                                                                                        monkeypatch):
    from finetune import pipeline

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(pipeline, "run", broken)  # the task looks it up when it runs
    for verbose in (False, True):
        args = [EXPERIMENT, f"hydra.run.dir={tmp_path}/run{int(verbose)}"] + (["hydra.verbose=true"] if verbose else [])
        result = cli(["finetune", *args], tmp_path, cache=demo_cache)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output[-3000:]
        assert "internal error: ZeroDivisionError: division by zero; this is a bug" in output
        assert "hydra.verbose=true" in output
        assert ("Traceback" in output) == verbose, output[-3000:]


def test_a_misspelt_key_names_the_closest_keys():
    from finetune.__main__ import misspelt_override

    assert "Did you mean optimizer.learning_rate" in misspelt_override("optimizer.learnig_rate=0.1")
    for fine in ("train.steps=3", "experiment=x", "+train.x=1", "backbone.params.anything=1", "hydra.verbose=true",
                 "train.phases=[]", "train.early_stopping.metric=val.loss", "train.phases.1.learning_rate=0"):
        assert misspelt_override(fine) is None, fine


def test_the_image_scan_names_each_bad_file_from_its_header(tmp_path):
    from finetune.data.bad_files import file_problem
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(good)
    jpeg = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(jpeg)
    (tmp_path / "cut.jpg").write_bytes(jpeg.read_bytes()[:jpeg.stat().st_size // 2])
    (tmp_path / "text.png").write_bytes(b"hello")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "big.png").write_bytes(png_header(300, 300))
    Image.new("RGB", (8, 8)).convert("1").save(tmp_path / "onebit.bmp")  # PIL reads it; TensorFlow cannot
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "good.bmp")
    names = ["good.png", "good.jpg", "cut.jpg", "text.png", "empty.png", "big.png", "onebit.bmp", "good.bmp"]
    problems = {name: file_problem(tmp_path / name, max_pixels=80_000) for name in names}
    assert [name for name, problem in problems.items() if problem] == ["cut.jpg", "text.png", "empty.png", "big.png",
                                                                       "onebit.bmp"]
    assert "truncated JPEG" in problems["cut.jpg"] and "over data.max_pixels=80,000" in problems["big.png"]
    assert "1-bit BMP" in problems["onebit.bmp"]


def test_disk_full_is_recognised_only_for_a_full_disk():
    from finetune.errors import disk_full
    from finetune.compat import tf

    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(tf.errors.ResourceExhaustedError(None, None, "x.tempstate1; No space left on device"))
    assert not disk_full(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))


# --- issue 18: status and summarize ---------------------------------------------------------------------
DONE_STATUS = (b'{"state": "done", "step": 2, "message": null, "objective": 0.5, '
               b'"started": "2024-05-01T12:00:00+00:00", '
               b'"ended": "2024-05-01T12:01:00+00:00", "job": {"num": 0, "id": "0", "overrides": '
               b'["experiment=mobilenet_head", "optimizer.learning_rate=0.02"]}, "host": "h", "pid": 1}\n')


def job_done_under_another_config(paths: Paths) -> None:
    """Job 0 of a sweep, done (as a finished run leaves status.json and checkpoints/fingerprint.json) under the
    demo experiment as it was before its data.split.train was edited from 0.5 to 0.6."""
    from finetune.config import compose_config
    from finetune.fingerprint import fingerprint, fingerprint_config

    config = fingerprint_config(compose_config([EXPERIMENT, "optimizer.learning_rate=0.02"]))
    config["data"]["split"]["train"] = 0.5
    job = paths.tmp / "sweep" / "job0"
    (job / "checkpoints").mkdir(parents=True)
    (job / "status.json").write_bytes(DONE_STATUS)
    (job / "metrics.json").write_text(json.dumps({"val": {"accuracy": 0.5}, "steps": 2}))
    (job / "checkpoints" / "fingerprint.json").write_text(json.dumps({"fingerprint": fingerprint(config),
                                                                     "config": config}))
    (paths.tmp / "sweep" / "multirun.yaml").write_text("hydra: {}\n")


def done_job_untouched(paths: Paths) -> None:
    job = paths.tmp / "sweep" / "job0"
    assert (job / "status.json").read_bytes() == DONE_STATUS
    assert sorted(path.name for path in job.iterdir()) == ["checkpoints", "metrics.json", "status.json"]


def test_disk_full_is_recognised_anywhere_in_the_message_or_the_chain():
    """TensorFlow's real message for a full disk during a save starts "Graph execution error:" and names the
    errno further down (seen on a full tmpfs); a library may re-raise a write error as another type."""
    from finetune.errors import disk_full, disk_full_error
    from finetune.compat import tf

    real = ("Graph execution error:\n\nDetected at node 'save/SaveV2' defined at (most recent call last):\n"
            "Node: 'save/SaveV2'\n/run/checkpoints/model.ckpt-8.data-00000-of-00001.tempstate1; No space left on "
            "device\n\t [[{{node save/SaveV2}}]]\nHint: If you want to see a list of allocated tensors when OOM "
            "happens, add report_tensor_allocations_upon_oom to RunOptions")
    assert disk_full(tf.errors.ResourceExhaustedError(None, None, real))
    assert disk_full(tf.errors.UnknownError(None, None, "Failed to write\nmodel.ckpt: Disk quota exceeded"))
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert disk_full(OSError("write failed: [Errno 28] No space left on device"))  # errno lost, the text kept
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "export/model.tflite")
        except OSError as error:
            raise RuntimeError("the converter failed") from error
    except RuntimeError as wrapped:
        assert disk_full(wrapped)
        message = str(disk_full_error(wrapped, "x", None))
        assert "writing export/model.tflite failed (No space left on device)" in message
    message = str(disk_full_error(tf.errors.ResourceExhaustedError(None, None, real), "/run", "/run/model.ckpt-4"))
    assert "(/run/checkpoints/model.ckpt-8.data-00000-of-00001.tempstate1; No space left on device)" in message
    oom = "Graph execution error:\nOOM when allocating tensor with shape[4096,4096]\nHint: ... OOM happens"
    assert not disk_full(tf.errors.ResourceExhaustedError(None, None, oom))
    assert not disk_full(ValueError("No space left on device"))  # neither an OSError nor TensorFlow's
    assert not disk_full(tf.errors.UnknownError(None, None, "Failed to write model.ckpt: Permission denied"))


@pytest.mark.slow  # trains the tiny profile for 8 steps
def test_a_real_full_disk_during_a_checkpoint_save_keeps_the_last_checkpoint(tiny_run, demo_cache, tiny_data,
                                                                              tmp_path):
    """The run's checkpoint folder on a tmpfs with room for its files and one checkpoint but not two: the
    step-8 save fails in TensorFlow on a real ENOSPC. One paragraph, exit status 2, model.ckpt-4 kept whole."""
    paths = Paths(tmp_path, demo_cache, tiny_data)
    # Room, in tmpfs pages, for what a finished tiny run's checkpoint folder holds (one checkpoint and the
    # small files), plus half a checkpoint: the second save runs out of space in the middle of its .data.
    page = 4096
    held = [p for p in (tiny_run[0] / "checkpoints").iterdir() if p.is_file()]
    data_pages = sum(-(-p.stat().st_size // page) for p in held if ".data-" in p.name)
    pages = sum(-(-p.stat().st_size // page) for p in held) + data_pages // 2
    mount = Mounted(paths.run / "checkpoints", pages * page // 1024)
    try:
        result = cli([fill(arg, paths) for arg in tiny("train.steps=8", "train.checkpoint_every=4",
                                                       "export.enabled=false", "data.batch_size=4")],
                     tmp_path, cache=demo_cache)
        output = result.stdout + result.stderr
        assert result.returncode == 2, output[-3000:]
        assert "Traceback" not in output and "internal error" not in output, output[-3000:]
        for fragment in ("The disk is full: writing", "model.ckpt-8", "No space left on device",
                         f"The last complete checkpoint, {paths.run}/checkpoints/model.ckpt-4, is kept",
                         "free some space and run it again in the same run directory to resume"):
            assert fragment in output, (fragment, output[-3000:])
        checkpoint_kept_and_usable(4)(paths)
    finally:
        mount.close()
