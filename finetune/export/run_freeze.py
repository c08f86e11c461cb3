"""Freeze a run's checkpoint without a ``.meta``: the export tower rebuilt from the run directory's config.

Run checkpoints carry no meta graph (a ``.meta`` is a graph file: the op gate would have to trust it). The
run directory says everything the graph needs instead: ``config.yaml`` (backbone, head, export input),
``splits.json`` (the classes) and ``metrics.json`` (the checkpoint the export was made from). This module
builds the same export tower the run exported (``input:0`` -> ``logits:0``, ``probabilities:0``), restores
the checkpoint's model variables into it through a Saver built here (the moving averages in their place
when the run kept them, as the export does), and freezes it: the graph is our own code's, nothing of a file
is imported but the weights.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from finetune.compat import tf, tf1
from finetune.config import Config
from finetune.errors import FinetuneError, first_line
from finetune.export.exporter import OUTPUTS, image_bytes_graph
from finetune.freezing import freeze_session
from finetune.graphs import GraphDef
from finetune.model.towers import Tower, build_export_tower, variables_read_by
from finetune.run_files import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, SPLITS_FILE

AVERAGE_SUFFIX = "/ExponentialMovingAverage"  # tf.train.ExponentialMovingAverage's shadow names


def run_dir_of(path: str) -> Optional[Path]:
    """The run directory ``path`` names: the folder itself (holding ``config.yaml``), or the run directory
    of a checkpoint prefix or folder inside its ``checkpoints/``; None for anything else."""
    candidate = Path(path).expanduser()
    for folder in (candidate, candidate.parent, candidate.parent.parent):
        if (folder / CONFIG_FILE).is_file() and (folder / CHECKPOINT_DIR).is_dir() and (
                folder == candidate or candidate.is_relative_to(folder / CHECKPOINT_DIR)):
            return folder
    return None


def exported_checkpoint(run_dir: Path) -> str:
    """The checkpoint prefix the run's export was made from: metrics.json's best one (when the run kept the
    best) or its last; for a run that has not finished, the latest in ``checkpoints/``."""
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, ValueError) as error:
            raise FinetuneError(f"Cannot read {metrics_path}: {error}. Pass the checkpoint itself: "
                                f"--checkpoint {run_dir / CHECKPOINT_DIR}/model.ckpt-N.") from None
        relative = (metrics.get("best") or {}).get("checkpoint") or metrics.get("checkpoint")
        if relative and Path(run_dir / f"{relative}.index").is_file():
            return str(run_dir / relative)
    latest = tf.train.latest_checkpoint(str(run_dir / CHECKPOINT_DIR))
    if latest is None:
        raise FinetuneError(f"The run directory {run_dir} holds no checkpoint yet (nothing in {CHECKPOINT_DIR}/): "
                            "train it first, or pass another checkpoint with --checkpoint.")
    return latest


def run_config(run_dir: Path) -> DictConfig:
    """The run's ``config.yaml`` on the schema (so that every key has its type and default)."""
    path = run_dir / CONFIG_FILE
    try:
        return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
    except (OSError, ValueError, OmegaConfBaseException) as error:
        raise FinetuneError(f"Cannot read the run's config {path}: {first_line(error)}. It is written by the run "
                            "itself; restore it from a copy of the run directory.") from None


def class_names(run_dir: Path) -> list[str]:
    path = run_dir / SPLITS_FILE
    try:
        classes = json.loads(path.read_text())["classes"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FinetuneError(f"Cannot read the class names from {path} ({first_line(error)}): the graph's output "
                            "size depends on them. It is written by the run itself; restore it from a copy of the "
                            "run directory.") from None
    return list(classes)


@contextlib.contextmanager
def run_session(run_dir: Path, checkpoint: str, allow_unsafe: bool = False) -> Iterator[tuple[tf1.Session, Tower]]:
    """A session holding the export tower of the run in ``run_dir``, built from its config, with
    ``checkpoint``'s weights (the moving averages when the run kept them, as its export did)."""
    cfg = run_config(run_dir)
    classes = class_names(run_dir)
    graph = tf.Graph()
    with graph.as_default():
        try:
            tower = build_export_tower(cfg.backbone, cfg.head, len(classes), allow_unsafe_ops=allow_unsafe)
        except FinetuneError:
            raise
        except (ValueError, TypeError, KeyError) as error:
            raise FinetuneError(f"Cannot rebuild the graph of the run {run_dir} from {run_dir / CONFIG_FILE}: "
                                f"{first_line(error)}.") from None
        # The variables the outputs read: a backbone is built whole, and a run cut below its top keeps none of
        # the layers above the cut in its checkpoints. The others stay uninitialised, never run.
        read = variables_read_by([tower.logits, tower.probabilities])
        variables = [variable for variable in tf1.global_variables() if variable.op.name in read]
        saver = tf1.train.Saver(var_list=_checkpoint_entries(cfg, checkpoint, variables),
                                write_version=tf1.train.SaverDef.V2)
    with tf1.Session(graph=graph) as sess:
        try:
            saver.restore(sess, checkpoint)
        except (ValueError, tf.errors.OpError) as error:
            raise FinetuneError(f"Cannot restore checkpoint {checkpoint} into the graph rebuilt from "
                                f"{run_dir / CONFIG_FILE}: {first_line(error)}. Is it a checkpoint of this run?"
                                ) from None
        yield sess, tower


def freeze_run(run_dir: Path, checkpoint: str, outputs: Optional[list[str]] = None,
               allow_unsafe: bool = False) -> GraphDef:
    """The export tower of the run in ``run_dir``, built from its config, with ``checkpoint``'s weights,
    frozen to ``outputs`` (default: logits and probabilities). With ``export.input=image_bytes`` and the
    default outputs, the graph takes ``image_bytes:0`` as the run's export does."""
    outputs = list(outputs or OUTPUTS)
    with run_session(run_dir, checkpoint, allow_unsafe) as (sess, _):
        frozen = freeze_session(sess, outputs)
    cfg = run_config(run_dir)
    if cfg.export.input == "image_bytes" and set(outputs) <= set(OUTPUTS):
        return image_bytes_graph(frozen, cfg.backbone.image_size)
    return frozen


def _checkpoint_entries(cfg: DictConfig, checkpoint: str, variables: list) -> dict:
    """Checkpoint entry -> variable for the tower's variables: a variable's moving average when the run kept
    averages (the export freezes those), else the variable itself."""
    try:
        stored = set(tf1.train.NewCheckpointReader(checkpoint).get_variable_to_shape_map())
    except (ValueError, tf.errors.OpError) as error:
        raise FinetuneError(f"Cannot read checkpoint {checkpoint}: {first_line(error)}.") from None
    entries = {}
    for variable in variables:
        name = variable.op.name
        average = name + AVERAGE_SUFFIX
        entries[average if cfg.train.moving_average_decay and average in stored else name] = variable
    missing = sorted(entry for entry in entries if entry not in stored)
    if missing:
        raise FinetuneError(f"Checkpoint {checkpoint} lacks {len(missing)} variable(s) of the graph rebuilt from the "
                            f"run's config, e.g. {missing[0]}: it is not a checkpoint of this run.")
    return entries
