"""Training throughput side by side: our pipeline with and without the feature cache, a hand-written
``feed_dict`` loop, Keras 3 ``fit`` with a frozen base, and the backbone's forward pass alone.

    python scripts/bench_train.py                      # 400 JPEGs, batch 32, 3 epochs, MobileNet v1 1.0/224
    python scripts/bench_train.py --quick              # 64 JPEGs at 96 px, batch 16, 2 epochs: a smoke test
    python scripts/bench_train.py --write docs/data.md    # replaces the table between the marker comments

Every variant trains the same images (those of the training split of a folder of JPEGs this script
makes) with the same model: MobileNet v1 1.0 cut at ``Conv2d_13_pointwise``, frozen and randomly
initialised (weights do not change speed), under a new head (global average pool + dense). Each runs in
its own process, so its peak memory (the resident-set high-water mark, from ``wait4``) is its own.
A row's "epoch 1" is the wall-clock rate of the first pass over the images, everything included
(decode, cache writes, graph tracing); "later epochs" is the rate over all the passes after it
(their images over their seconds). The
forward-only row runs the backbone to the cut on one in-memory batch: the limit of any run that
recomputes the features, shown in both columns. With the cache row, one more process measures what epoch 1
with the cache spends its CPU time on, part by part (``child_parts``), and the paragraph under the table
adds that up to the most epoch 1 can reach against the forward pass (``--no-parts`` skips it).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- bench-train:start -->"
END = "<!-- bench-train:end -->"
CUT = "Conv2d_13_pointwise"
CLASSES = 4
# The image_folder default split: the benchmark's folder is laid out so that its training split holds
# whole batches (every variant's epoch is then the same images, with no partial batch).
SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}
JPEG_SIZE = (320, 240)  # the size of a small camera photo; decoding it is part of each step's work


@dataclass(frozen=True)
class Variant:
    key: str
    label: str


VARIANTS = (
    Variant("cache", "ours, feature cache"),
    Variant("no_cache", "ours, no cache"),
    Variant("feed_dict", "feed_dict loop"),
    Variant("keras", "Keras 3 fit"),
    Variant("forward", "forward only"),
)
BY_KEY = {v.key: v for v in VARIANTS}


@dataclass
class Result:
    """One variant's measurements: images per second of each epoch, peak memory, or why there are none."""

    variant: Variant
    rates: list[float] = field(default_factory=list)
    peak_mib: Optional[float] = None
    seconds: float = 0.0
    note: str = ""

    @property
    def epoch1(self) -> Optional[float]:
        return self.rates[0] if self.rates else None

    @property
    def later(self) -> Optional[float]:
        if self.variant.key == "forward":
            return self.epoch1
        # Equal epochs: their images over their seconds is the harmonic mean of their rates. (The
        # arithmetic mean would let one near-instant epoch from the feature cache swamp the others.)
        return statistics.harmonic_mean(self.rates[1:]) if len(self.rates) > 1 else None


@dataclass(frozen=True)
class Setup:
    images: int
    epochs: int
    batch_size: int
    image_size: int
    work: Path

    @property
    def train_images(self) -> int:
        """The training split's size: whole batches, about ``SPLIT['train']`` of the images, at least one batch."""
        return max(1, int(self.images * SPLIT["train"]) // self.batch_size) * self.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return self.train_images // self.batch_size


# --- the images -----------------------------------------------------------------------------------
def split_function():
    """The project's rule for which split a file of an image folder falls in (it moved with the data
    sources; the benchmark must lay its folder out by the same rule the pipeline reads it with)."""
    try:
        from finetune.data.examples import split_of
    except ImportError:
        from finetune.data.image_folder import split_of
    from finetune.config import SplitConfig

    split = SplitConfig(**SPLIT)
    return lambda relative: split_of(relative, split)


def make_images(setup: Setup) -> tuple[Path, Path]:
    """``setup.images`` JPEGs in ``work/images/<class>/``, exactly ``setup.train_images`` of them in the
    training split (balanced classes), and the same training images hard-linked into ``work/train/``
    for the variants that read a whole folder. Returns (all images, training images)."""
    import numpy as np
    from PIL import Image

    split_of = split_function()
    want = {"train": setup.train_images}
    rest = max(2, setup.images - setup.train_images)
    want["val"] = rest - rest // 2
    want["test"] = rest // 2
    made = {name: 0 for name in want}
    rng = np.random.default_rng(0)
    all_dir, train_dir = setup.work / "images", setup.work / "train"
    tints = rng.uniform(40, 215, (CLASSES, 3))
    index = 0
    while made != want:
        index += 1
        label = index % CLASSES
        relative = f"class_{label}/img_{index:06d}.jpg"
        split = split_of(relative)
        if made[split] == want[split]:
            continue
        made[split] += 1
        # Smooth random shapes over a class tint: compressible like a photo, different in every file.
        coarse = rng.uniform(-60, 60, (6, 8, 3)) + tints[label]
        image = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize(JPEG_SIZE, Image.BICUBIC)
        noise = rng.normal(0, 12, (JPEG_SIZE[1], JPEG_SIZE[0], 3))
        pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        path = all_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        if split == "train":
            link = train_dir / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, link)
    return all_dir, train_dir


def train_files(train_dir: Path) -> tuple[list[str], list[int]]:
    """The training images and their labels (class folders in sorted order, as every variant numbers them)."""
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    files = sorted((str(f), label) for label, name in enumerate(classes) for f in (train_dir / name).glob("*.jpg"))
    return [f for f, _ in files], [label for _, label in files]


# --- the variants, each in its own process ----------------------------------------------------------
def ours_command(setup: Setup, run_dir: Path, cache_mode: str) -> list[str]:
    return [
        sys.executable, "-m", "finetune", "backbone=mobilenet_v1", f"backbone.cut={CUT}",
        f"backbone.image_size={setup.image_size}", "backbone.params.depth_multiplier=1.0", "head=pool_dense",
        f"data.root={setup.work / 'images'}", f"data.batch_size={setup.batch_size}",
        f"data.feature_cache={cache_mode}", "restore.checkpoint=null", "export.enabled=false",
        f"train.steps={setup.epochs * setup.steps_per_epoch}", "train.checkpoint_every=1000000000",
        "train.eval_every=null",  # the other variants train only: no validation pass inside an epoch's time
        f"paths.cache_dir={setup.work / 'cache'}", f"hydra.run.dir={run_dir}",
    ]


def child_command(key: str, setup: Setup, out: Path) -> list[str]:
    return [
        sys.executable, str(Path(__file__).resolve()), "--child", key, "--workdir", str(setup.work),
        "--images", str(setup.images), "--epochs", str(setup.epochs), "--batch-size", str(setup.batch_size),
        "--image-size", str(setup.image_size), "--child-out", str(out),
    ]


def run_measured(command: list[str], log: Path, timeout: float) -> tuple[Optional[int], float, float]:
    """Run ``command`` with its output in ``log``; (exit status, None when it ran past ``timeout`` seconds
    and was killed; peak resident memory in MiB; seconds). ``wait4`` gives this child's own high-water
    mark, where ``getrusage(RUSAGE_CHILDREN)`` would give the largest of every child so far."""
    started = time.perf_counter()
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    killed = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if not killed and time.perf_counter() - started > timeout:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: TensorFlow's helpers go with it
            killed = True
        time.sleep(0.1)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    return (None if killed else process.returncode), usage.ru_maxrss / 1024.0, time.perf_counter() - started


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def measure(variant: Variant, setup: Setup, timeout: float, cache_mode: str) -> Result:
    """Run one variant in a fresh process and read its epoch rates."""
    logs = setup.work / "logs"
    logs.mkdir(exist_ok=True)
    log, out = logs / f"{variant.key}.log", setup.work / "results" / f"{variant.key}.json"
    out.parent.mkdir(exist_ok=True)
    if variant.key in ("cache", "no_cache"):
        run_dir = setup.work / "runs" / variant.key
        command = ours_command(setup, run_dir, cache_mode if variant.key == "cache" else "off")
        out = run_dir / "timings.json"
    else:
        command = child_command(variant.key, setup, out)
    status, peak, seconds = run_measured(command, log, timeout)
    result = Result(variant, peak_mib=peak, seconds=seconds)
    if status is None:
        result.note = f"stopped after --timeout {timeout:g} s"
        return result
    if status != 0:
        result.note = f"failed (exit status {status}): {last_line(log)}"
        return result
    data = json.loads(out.read_text())
    result.rates = [float(r) for r in data.get("epoch_images_per_second") or []]
    if len(result.rates) < (1 if variant.key == "forward" else setup.epochs):
        result.note = f"{len(result.rates)} epoch rate(s) for {setup.epochs} epochs in {out.name}"
    return result


def measure_parts(setup: Setup, timeout: float) -> Optional[dict[str, float]]:
    """``child_parts`` in a process of its own; None (said on stderr) when it fails."""
    print("epoch 1 with the cache, part by part: running", file=sys.stderr)
    log, out = setup.work / "logs" / "parts.log", setup.work / "results" / "parts.json"
    status, _, seconds = run_measured(child_command("parts", setup, out), log, timeout)
    if status != 0:
        print(f"parts: {'stopped' if status is None else 'failed'}: {last_line(log)}", file=sys.stderr)
        return None
    parts = json.loads(out.read_text())
    print(f"parts: {seconds:.0f} s, {parts}", file=sys.stderr)
    return parts


def child_feed_dict(setup: Setup) -> list[float]:
    """The well-known hand-written recipe: the slim graph, a new head, ``minimize(var_list=head)``, and a
    Python loop that reads each batch's files with PIL, resizes them and feeds numpy arrays."""
    import numpy as np
    from PIL import Image

    from finetune.compat import tf, tf1
    from finetune.model.backbones import get_network_fn

    files, labels = train_files(setup.work / "train")
    size = setup.image_size
    images = tf1.placeholder(tf.float32, [None, size, size, 3], name="images")
    targets = tf1.placeholder(tf.int64, [None], name="labels")
    _, end_points = get_network_fn("mobilenet_v1", 0, is_training=False)(images / 127.5 - 1.0)
    with tf1.variable_scope("head"):
        pooled = tf.reduce_mean(end_points[CUT], [1, 2])
        weights = tf1.get_variable("weights", [pooled.shape[-1], CLASSES], initializer=tf1.glorot_uniform_initializer())
        biases = tf1.get_variable("biases", [CLASSES], initializer=tf1.zeros_initializer())
        logits = tf.matmul(pooled, weights) + biases
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits))
    head = tf1.get_collection(tf1.GraphKeys.TRAINABLE_VARIABLES, scope="head")
    train_op = tf1.train.MomentumOptimizer(0.01, 0.9).minimize(loss, var_list=head)

    def load(path: str) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)

    rng, rates = np.random.default_rng(0), []
    with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        for _ in range(setup.epochs):
            started = time.perf_counter()
            order = rng.permutation(len(files))
            for first in range(0, len(order), setup.batch_size):
                batch = order[first:first + setup.batch_size]
                feed = {images: np.stack([load(files[i]) for i in batch]), targets: [labels[i] for i in batch]}
                sess.run(train_op, feed)
            rates.append(len(files) / (time.perf_counter() - started))
    return rates


def child_keras(setup: Setup) -> list[float]:
    """Keras 3 ``fit``: a frozen ``keras.applications.MobileNet`` base called with ``training=False``, the
    same head, images from ``image_dataset_from_directory``. Eager TensorFlow: finetune is not imported."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    if not tf.executing_eagerly():  # Keras 3 needs eager TensorFlow; finetune.compat switches it off
        raise RuntimeError("eager execution is off in the Keras process: something imported finetune")

    size = setup.image_size
    dataset = keras.utils.image_dataset_from_directory(
        setup.work / "train", image_size=(size, size), batch_size=setup.batch_size, seed=0, verbose=False)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    base = keras.applications.MobileNet(weights=None, include_top=False, input_shape=(size, size, 3), alpha=1.0)
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    features = base(keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs), training=False)
    outputs = keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(features))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    count = setup.train_images

    class EpochRates(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.rates: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
            self.rates.append(count / (time.perf_counter() - self.started))

    clock = EpochRates()
    model.fit(dataset, epochs=setup.epochs, callbacks=[clock], verbose=0)
    return clock.rates


def child_forward(setup: Setup) -> list[float]:
    """The backbone to the cut alone on one in-memory batch, run as many times as an epoch has steps."""
    import numpy as np

    from finetune.compat import tf, tf1
    from finetune.model.backbones import get_network_fn

    size = setup.image_size
    pixels = np.random.default_rng(0).uniform(0, 255, (setup.batch_size, size, size, 3)).astype(np.float32)
    initial = tf1.placeholder(tf.float32, pixels.shape)
    batch = tf1.Variable(initial, trainable=False, name="batch")  # in the session's memory: nothing fed per run
    _, end_points = get_network_fn("mobilenet_v1", 0, is_training=False)(batch / 127.5 - 1.0)
    features = end_points[CUT]
    runs = max(3, setup.steps_per_epoch)
    with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer(), {initial: pixels})
        sess.run(features.op)  # the first run sets up kernels: not the steady state
        started = time.perf_counter()
        for _ in range(runs):
            sess.run(features.op)
        return [runs * setup.batch_size / (time.perf_counter() - started)]


class CpuClock:
    """Wall and process CPU seconds (every thread of this process) since it was made or last read."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        lap = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return lap


PART_ROUNDS = 3  # each part is measured this many times and its least CPU time kept: other processes only add


def child_parts(setup: Setup) -> dict[str, float]:
    """What epoch 1 with the feature cache does, part by part, each part alone in this process (CPU seconds
    per training image, or once per split): the forward pass, decoding, extracting (the cache's own
    extractor: the process's batch decoder, prefetching in tf.data, feeding the backbone), writing the entries,
    reading and hashing the files, the model key. Our pipeline's own functions and classes throughout."""
    import numpy as np

    from finetune.compat import tf, tf1
    from finetune.config import compose_config
    from finetune.data.decode import shared_decode_image
    from finetune.data.features import FeatureExtractor
    from finetune.model.towers import build_backbone_to_cut

    cfg = compose_config(ours_command(setup, setup.work / "runs" / "parts", "require")[3:-2])
    size = setup.image_size
    encoded = tf1.placeholder(tf.string, [None])

    decoded = tf.data.Dataset.from_tensor_slices(encoded).map(
        lambda e: shared_decode_image(e, size), num_parallel_calls=cfg.data.num_parallel_calls)
    decode_iterator = tf1.data.make_initializable_iterator(decoded.batch(cfg.data.eval_batch_size))
    pixels_in = tf1.placeholder(tf.float32, (None, size, size, 3))  # what the extractor feeds, as the export tower
    initial = tf1.placeholder(tf.float32, (setup.batch_size, size, size, 3))
    batch = tf1.Variable(initial, trainable=False, name="batch")
    with tf1.variable_scope(tf1.get_variable_scope(), reuse=tf1.AUTO_REUSE):
        cut, _ = build_backbone_to_cut(pixels_in, cfg.backbone, False)
        forward, _ = build_backbone_to_cut(batch, cfg.backbone, False)
    extractor = FeatureExtractor(pixels_in, cut, size, cfg.data.eval_batch_size, cfg.data.num_parallel_calls)
    graph = PartsGraph(extractor, forward, encoded, decode_iterator.initializer, decode_iterator.get_next())
    pixels = np.random.default_rng(0).uniform(0, 255, initial.shape).astype(np.float32)
    with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer(), {initial: pixels})
        sess.run(forward.op)  # as the forward-only row: its first run is not the steady state
        rounds = [measure_parts_once(sess, graph, setup, last=index == PART_ROUNDS - 1) for index in range(PART_ROUNDS)]
    parts = {name: min(measured[name] for measured in rounds) for name in rounds[0]}
    parts["forward_cores"] = max(measured["forward_cores"] for measured in rounds)
    return {"cores": float(os.cpu_count() or 1), **parts}


@dataclass(frozen=True)
class PartsGraph:
    extractor: object  # finetune.data.features.FeatureExtractor
    forward: object  # the backbone's cut over an in-memory batch
    encoded: object  # the decoding part's input: encoded images
    decode_initializer: object
    decoded: object  # the next batch of decoded pixels


def measure_parts_once(sess, graph: PartsGraph, setup: Setup, last: bool) -> dict[str, float]:
    """One round of ``child_parts``: each part's CPU seconds (per image, or once); entries kept when ``last``."""
    import hashlib

    import numpy as np

    from finetune.compat import tf, tf1
    from finetune.data.features import FeatureStore, model_key

    files, _ = train_files(setup.work / "train")
    count, parts = len(files), {}
    clock, runs = CpuClock(), max(3, setup.steps_per_epoch)
    for _ in range(runs):
        sess.run(graph.forward.op)
    wall, cpu = clock.lap()
    parts["forward"], parts["forward_cores"] = cpu / (runs * setup.batch_size), cpu / wall
    images = [Path(f).read_bytes() for f in files]
    clock.lap()
    hashes = [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]
    parts["read_hash"] = clock.lap()[1] / count
    feed = np.empty(count, dtype=object)
    feed[:] = images
    sess.run(graph.decode_initializer, {graph.encoded: feed})
    parts["start"] = clock.lap()[1]
    while True:
        try:
            sess.run(graph.decoded)
        except tf.errors.OutOfRangeError:
            break
    parts["decode"] = clock.lap()[1] / count
    features = np.concatenate(list(graph.extractor.batches(sess, images)))
    parts["extract"] = clock.lap()[1] / count
    key = model_key(sess, tf1.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES, scope="MobilenetV1/"), {"bench": "parts"})
    parts["model_key"] = clock.lap()[1]
    store = FeatureStore(setup.work / "parts_cache", key, features.shape[1:])
    clock.lap()
    for image_hash, row in zip(hashes, features):
        store.write(image_hash, row)
    parts["write"] = clock.lap()[1] / count
    if not last:
        shutil.rmtree(store.folder)  # every round writes new entries, as epoch 1 does
    return parts


CHILDREN = {"feed_dict": child_feed_dict, "keras": child_keras, "forward": child_forward, "parts": child_parts}


# --- the table -------------------------------------------------------------------------------------
def ratio(value: Optional[float], reference: Optional[float]) -> str:
    if value is None or not reference:
        return "-"
    x = value / reference
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def rate(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def table(results: list[Result]) -> str:
    """The Markdown table: one row per variant, ratios against Keras ``fit`` and the forward pass."""
    by_key = {r.variant.key: r for r in results}
    keras, forward = by_key.get("keras"), by_key.get("forward")
    rows = ["| variant | epoch 1 images/s | later epochs images/s | later epochs vs Keras fit | "
            "epoch 1 vs forward only | peak memory MiB |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        later_vs_keras = ratio(r.later, keras.later if keras else None)
        first_vs_forward = ratio(r.epoch1, forward.epoch1 if forward else None)
        memory = "-" if r.peak_mib is None else f"{r.peak_mib:.0f}"
        label = f"{r.variant.label} ({r.note})" if r.note else r.variant.label
        rows.append(f"| {label.replace('|', '/')} | {rate(r.epoch1)} | {rate(r.later)} | {later_vs_keras} | "
                    f"{first_vs_forward} | {memory} |")
    return "\n".join(rows) + "\n"


def parts_text(parts: Optional[dict[str, float]], setup: Setup) -> str:
    """What limits epoch 1 with the cache, from ``child_parts``: where its CPU time goes, and the rate it
    could reach against the forward pass were every core busy in both, but for the one-off parts (starting
    tf.data, the model key), which run on one core while the others wait."""
    if not parts:
        return ""
    count, cores = setup.train_images, parts["cores"]
    ms = {name: 1000 * parts[name] for name in ("forward", "decode", "extract", "write", "read_hash")}
    per_image = ms["extract"] + ms["write"] + ms["read_hash"]
    once = parts["start"] + parts["model_key"]
    forward_seconds = count * parts["forward"] / cores
    epoch1_seconds = (count * (parts["extract"] + parts["write"] + parts["read_hash"]) - parts["start"]) / cores + once
    return (f"Where epoch 1 with the cache spends its CPU time, each part measured alone by the script (the least "
            f"of {PART_ROUNDS} rounds), in milliseconds per training image: the forward pass {ms['forward']:.1f} "
            f"(keeping {parts['forward_cores']:.1f} of the {cores:.0f} cores busy); extracting as the cache does "
            f"{ms['extract']:.1f}, of which decoding {ms['decode']:.1f} and starting the tf.data pipeline, once "
            f"per chunk, {parts['start']:.2f} s; writing the entry {ms['write']:.1f}; reading and hashing the file "
            f"{ms['read_hash']:.2f}; the model key, once, {parts['model_key']:.2f} s. That is {per_image:.1f} ms an "
            f"image where the forward pass alone takes {ms['forward']:.1f}, and {once:.2f} s on one core: were "
            f"every core busy in both otherwise, the {count} images of epoch 1 would take {epoch1_seconds:.2f} s "
            f"and the forward pass {forward_seconds:.2f} s, at most {forward_seconds / epoch1_seconds:.2f}x the "
            f"forward-only rate.\n")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_line(setup: Setup) -> str:
    today = datetime.date.today().isoformat()
    return (f"{setup.images} JPEGs ({setup.train_images} in the training split, {JPEG_SIZE[0]}x{JPEG_SIZE[1]}), "
            f"batch {setup.batch_size}, {setup.epochs} epochs, MobileNet v1 1.0/{setup.image_size} cut at {CUT}, "
            f"random weights. Measured {today} on {os.cpu_count()} CPU cores ({cpu_name()}), Python "
            f"{platform.python_version()}, TensorFlow {version('tensorflow')}, Keras {version('keras')} "
            f"(`python scripts/bench_train.py`).\n")


def replace_between_markers(readme: Path, text: str) -> None:
    """``text`` between the two marker lines of ``readme`` (added at the end when missing), atomically."""
    from finetune.files import write_between_markers

    write_between_markers(readme, BEGIN, END, text)


# --- command line ----------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--images", type=int, help="JPEGs to make (default 400; --quick: 64)")
    parser.add_argument("--epochs", type=int, help="epochs (default 3; --quick: 2); at least 2")
    parser.add_argument("--batch-size", type=int, help="default 32; --quick: 16")
    parser.add_argument("--image-size", type=int, help="the model's input side (default 224; --quick: 96)")
    parser.add_argument("--quick", action="store_true", help="a tiny run: for tests and development")
    parser.add_argument("--variants", nargs="+", choices=list(BY_KEY), default=list(BY_KEY),
                        help="run these only (default: all)")
    parser.add_argument("--no-parts", dest="parts", action="store_false",
                        help="skip measuring epoch 1 with the cache part by part (run when the cache row is)")
    parser.add_argument("--write", metavar="FILE", type=Path, help="replace the table between the markers in FILE")
    parser.add_argument("--workdir", type=Path, help="keep images, logs and run directories here (default: a "
                                                     "temporary folder, removed at the end)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one variant may take")
    # data.feature_cache of the cache row
    parser.add_argument("--cache-mode", default="require", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.images = args.images or (64 if quick else 400)
    args.epochs = args.epochs or (2 if quick else 3)
    args.batch_size = args.batch_size or (16 if quick else 32)
    args.image_size = args.image_size or (96 if quick else 224)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 and the later ones are reported apart")
    if args.images * SPLIT["train"] < args.batch_size:
        parser.error(f"--images {args.images} is too few for one training batch of {args.batch_size}")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    temporary = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench_train_")) if temporary else args.workdir.resolve()
    setup = Setup(args.images, args.epochs, args.batch_size, args.image_size, work)
    if args.child:
        measured = CHILDREN[args.child](setup)
        args.child_out.write_text(json.dumps(measured if isinstance(measured, dict)
                                             else {"epoch_images_per_second": measured}))
        return
    try:
        started = time.perf_counter()
        work.mkdir(parents=True, exist_ok=True)
        if (work / "images").exists():
            sys.exit(f"error: {work / 'images'} exists; give an empty --workdir")
        make_images(setup)
        results = []
        for key in args.variants:
            print(f"{BY_KEY[key].label}: running", file=sys.stderr)
            result = measure(BY_KEY[key], setup, args.timeout, args.cache_mode)
            print(f"{result.variant.label}: {result.seconds:.0f} s, epochs {[round(r, 1) for r in result.rates]} "
                  f"images/s, peak {result.peak_mib:.0f} MiB {result.note}".rstrip(), file=sys.stderr)
            results.append(result)
        parts = measure_parts(setup, args.timeout) if args.parts and "cache" in args.variants else None
        text = table(results) + "\n" + machine_line(setup) + ("\n" + parts_text(parts, setup) if parts else "")
        print(f"total: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    if args.write:
        replace_between_markers(args.write, text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
