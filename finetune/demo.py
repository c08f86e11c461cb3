"""The demo backbone: a MobileNet v1 pretrained by a run of the pipeline on the demo's source task, shipped
with the package.

Two disjoint tasks are drawn from one family of synthetic images (:mod:`finetune.data.demo_images`):
the *source* task pretrains the backbone from scratch; the *target* task, with other shapes, is what
``experiment=mobilenet_head`` finetunes on. Features learnt on the source shapes (edges, corners,
curvature) transfer; a randomly initialised backbone has none.

The backbone ships (``finetune/demo_backbone``, 0.9 MB) rather than being pretrained on first use, because
a backbone that is not trained to convergence is a different network on every floating-point path, and
convergence takes longer than a first run may. Measured while choosing the recipe: after 200 to 1000 steps
the source-task accuracy was anywhere from 0.76 to 0.97 depending on the CPU's floating-point path (oneDNN
on or off) and the rate, and the first command's accuracy moved by up to 0.2 with it; after 2000 steps both
paths reached 0.99 on the source task. Shipping the converged weights makes the first command's numbers the
same on every machine up to the head's own training, within its seed spread
(``tests/test_demo.py``), and the first run no longer pretrains.

:func:`pretrain` is how the shipped weights were made (``scripts/make_demo_assets.py --force`` remakes them,
or writes a copy elsewhere to compare): one run of :func:`finetune.pipeline.run`, above it in the layers.
``source_task.json`` beside the weights records the recipe, the source-task accuracy at every evaluation,
the machine and the sha256 of each file. The pretraining run is not the user's: the console shows one line
(what is being made, then how long it took), and its own log (restore table, phase block, progress) goes to
``pretraining.log`` in the cache's demo folder (:func:`details_in_log`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, TextIO

from omegaconf import DictConfig, OmegaConf

from finetune.config import Config
from finetune.data.demo_images import SOURCE_CLASSES, demo_root, write_image_folder
from finetune.errors import FinetuneError

log = logging.getLogger(__name__)

# The demo backbone: small enough to pretrain in minutes on two CPU cores and to ship (0.9 MB).
DEMO_BACKBONE = {"name": "mobilenet_v1", "image_size": 96, "params": {"depth_multiplier": 0.25}}
SHIPPED = Path(__file__).resolve().parent / "demo_backbone"  # package data: model.ckpt.* and source_task.json
RECORD = "source_task.json"
PRETRAIN_LOG = "pretraining.log"  # in the cache's demo folder: the last pretraining's own log
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # as in a run's finetune.log


@dataclass(frozen=True)
class PretrainRecipe:
    """How the demo backbone is pretrained on the source task. Every field changes the weights.

    Trained until the source task's accuracy levels off (``source_task.json`` records it at every
    evaluation). What the choices do:

    * BatchNorm decay 0.9: the frozen backbone's BatchNorm runs on the moving statistics, and averages
      at 0.99 lag far behind weights that change fast; at 0.9 they keep up.
    * Adam at 0.02 on batches of 64, warmed up over 100 steps and cosine-decayed to zero over 2000: the
      shapes are learnt within a few hundred steps, but the accuracy swings there (0.76 to 0.97 at 1000
      steps across floating-point paths, rates and optimizers tried); by 2000 it has settled at 0.99.
    """

    steps: int = 2000
    # The size the source images are drawn and trained at. Convolution weights do not depend on it,
    # but features learnt on smaller images (64, 80, 88 tried) transferred worse to the 96x96 target.
    image_size: int = 96
    images_per_class: int = 300
    batch_size: int = 64
    optimizer: str = "adam"  # a name of finetune.vocab.OPTIMIZERS
    learning_rate: float = 0.02
    warmup_steps: int = 100
    batch_norm_decay: float = 0.9
    seed: int = 0  # train.seed of the run (the images have their own seeds)


PRETRAIN = PretrainRecipe()
# The last name part of the network's own variables; optimizer slots (".../Adam", ".../Momentum") are left out.
MODEL_VARIABLE_LEAVES = {"weights", "depthwise_weights", "biases", "beta", "gamma", "moving_mean", "moving_variance"}


def checkpoint(folder: Path = SHIPPED) -> str:
    """The prefix of the demo backbone's checkpoint (``restore.checkpoint=demo``): the shipped one."""
    prefix = folder / "model.ckpt"
    if not Path(f"{prefix}.index").is_file():
        raise FinetuneError(
            f"The demo backbone is missing from the installed package ({prefix}.index): reinstall the project "
            f"(pip install -e .), or remake it with python scripts/make_demo_assets.py --force.")
    return str(prefix)


def source_task(folder: Path = SHIPPED) -> dict[str, Any]:
    """What ``source_task.json`` records of the demo backbone in ``folder``."""
    return json.loads((folder / RECORD).read_text())


def file_digests(folder: Path) -> dict[str, str]:
    """The sha256 of each checkpoint file in ``folder``."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("model.ckpt.*"))}


def pretrain_config(source_root: Path, cache_dir: str | Path, recipe: PretrainRecipe = PRETRAIN) -> DictConfig:
    """The source-task run: the whole MobileNet v1 from scratch, BatchNorm in training mode."""
    overrides = {
        "backbone": {**DEMO_BACKBONE, "image_size": recipe.image_size, "cut": "Conv2d_13_pointwise",
                     "batch_norm_training": True,
                     "params": {**DEMO_BACKBONE["params"], "batch_norm_decay": recipe.batch_norm_decay}},
        "head": {"layers": [{"type": "global_avg_pool"}, {"type": "dropout", "rate": 0.2}, {"type": "dense"}]},
        "data": {"root": str(source_root), "batch_size": recipe.batch_size, "augment": [{"type": "flip_left_right"}]},
        "restore": {"checkpoint": None},
        "optimizer": {"name": recipe.optimizer, "learning_rate": recipe.learning_rate, "decay": "cosine",
                      "warmup_steps": recipe.warmup_steps, "var_list": [".*"]},
        "train": {"steps": recipe.steps, "seed": recipe.seed, "checkpoint_every": recipe.steps, "log_every": 20,
                  "eval_every": max(recipe.steps // 10, 1),
                  "histogram_every": 200},
        "export": {"enabled": False},
        "paths": {"cache_dir": str(cache_dir)},
    }
    return OmegaConf.merge(OmegaConf.structured(Config), overrides)


def pretrain(folder: Path, cache_dir: str | Path, recipe: PretrainRecipe = PRETRAIN,
             console: Optional[TextIO] = None) -> str:
    """Pretrain the demo backbone by ``recipe`` and publish it in ``folder`` (replacing what is there): MobileNet
    v1 variables only, under their official names, and ``source_task.json``. The source images are drawn into
    ``cache_dir``. The ``console`` (default: stderr) gets one line; the run's own log goes to
    ``CACHE/demo/pretraining.log`` (:func:`details_in_log`). Returns the checkpoint prefix."""
    what = (f"Making the demo backbone ({recipe.steps} steps on the source task's {len(SOURCE_CLASSES)} shapes) "
            f"in {folder}")
    with details_in_log(what, demo_root(cache_dir) / PRETRAIN_LOG, console) as notes:
        accuracy = _pretrain_and_publish(folder, cache_dir, recipe)
        notes.append(f"source-task val accuracy {accuracy:.3f}")
    return str(folder / "model.ckpt")


@contextlib.contextmanager
def details_in_log(what: str, log_path: Path, console: Optional[TextIO] = None) -> Iterator[list[str]]:
    """Run the block with its details out of the user's way: ``console`` (default: stderr) shows ``what`` and,
    at the end, how long it took (with the notes the block appended to the yielded list) or that it failed, and
    where the details are; everything the block logs or prints (the run's restore table, phase block, progress
    lines, a failure's traceback) goes to ``log_path``. The log is written under a temporary name and renamed
    at the end, so two makers at once each leave a whole log (the last one's). An error still propagates."""
    console = console or sys.stderr
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = log_path.with_name(f".{log_path.name}.tmp-{os.getpid()}")
    console.write(f"{what} ... ")
    console.flush()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    notes: list[str] = []
    outcome, written, started = "failed after", False, time.perf_counter()
    try:
        with open(temporary, "w", encoding="utf-8") as stream:
            handler = logging.StreamHandler(stream)
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            root.handlers[:] = [handler]  # the console's handlers are left out while the block runs
            root.setLevel(logging.INFO)
            try:
                # Not a terminal: the run's progress comes as log lines, not a bar.
                with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                    yield notes
                outcome = "done in"
            except BaseException:
                log.exception("%s failed", what)
                raise
            finally:
                root.handlers[:], root.level = saved_handlers, saved_level
    finally:
        if temporary.is_file():  # a failure's log too: it says why
            os.replace(temporary, log_path)
            written = True
        details = "".join(f", {note}" for note in notes) + (f"; details in {log_path}" if written else "")
        console.write(f"{outcome} {time.perf_counter() - started:.0f} s{details}\n")
        console.flush()


def _pretrain_and_publish(folder: Path, cache_dir: str | Path, recipe: PretrainRecipe) -> float:
    """:func:`pretrain`'s work: draw the source images, run the pipeline, publish the model variables and the
    record in ``folder``. Returns the source-task validation accuracy."""
    from finetune import pipeline  # above this module's other users (resolve): imported only to pretrain
    from finetune.weights.readers import read_checkpoint, write_checkpoint

    # Drawn at the pretraining size (no resize while training); another size gets its own folder.
    source = write_image_folder(demo_root(cache_dir) / f"source_images_{recipe.image_size}", SOURCE_CLASSES,
                                recipe.images_per_class, recipe.image_size, seed=1)
    log.info("Pretraining the demo backbone on the source task (%s), %d steps", ", ".join(SOURCE_CLASSES),
             recipe.steps)
    run_dir = demo_root(cache_dir) / f"pretrain_run.tmp-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    metrics = pipeline.run(pretrain_config(source, cache_dir, recipe), run_dir, pipeline.RunInputs(source, None))
    seconds = time.perf_counter() - started
    tensors = {name: value for name, value in read_checkpoint(str(run_dir / metrics["checkpoint"])).items()
               if name.startswith("MobilenetV1/") and name.rsplit("/", 1)[-1] in MODEL_VARIABLE_LEAVES}
    curve = [(entry["step"], entry["val"]["accuracy"])
             for entry in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    write_checkpoint(tensors, staging / "model.ckpt")
    for stray in staging.glob("checkpoint"):  # the state file names absolute paths: the prefix is enough
        stray.unlink()
    record = {"classes": list(SOURCE_CLASSES), "recipe": asdict(recipe), "val_accuracy": metrics["val"]["accuracy"],
              "val_accuracy_by_step": curve, "seconds": round(seconds), "machine": _machine(),
              "sha256": file_digests(staging)}
    (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if folder.exists():  # remade: the old folder steps aside first, so one rename publishes the new one
        retired = folder.with_name(f"{folder.name}.old-{os.getpid()}")
        os.replace(folder, retired)
        os.replace(staging, folder)
        shutil.rmtree(retired)
    else:
        os.replace(staging, folder)
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("Demo backbone ready: %s (source-task val accuracy %.3f after %d steps, %.0f s)", folder,
             metrics["val"]["accuracy"], recipe.steps, seconds)
    return metrics["val"]["accuracy"]


def _machine() -> dict[str, str]:
    import tensorflow as tf

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "tensorflow": tf.__version__,
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset: on where supported)")}
