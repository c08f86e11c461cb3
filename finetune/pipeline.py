"""The whole run, in the order of the mission: data, graph, restore plan, restore, train, evaluate, freeze.

Each step takes the slice of the config it needs and returns what it made. Everything the run
produces lands in ``run_dir``: checkpoints, TensorBoard events, restore report, metrics, export.
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from finetune.weights import demo, zoo
from finetune import graphs
from finetune.weights.sources import resolve_checkpoint
from finetune.compat import tf, tf1
from finetune.config import DataConfig, PathsConfig, RestoreConfig
from finetune.data.image_folder import ImageFolder, scan_image_folder
from finetune.export.exporter import export_model
from finetune.model.towers import variables_read_by
from finetune.weights.restore import (RestorePlan, apply_restore, format_report, plan_restore, summarize,
                              untouched_backbone_warning, verify_restored)
from finetune.validate import validate
from finetune.training.evaluate import eval_summary, evaluate_all
from finetune.training.graph import TrainingGraph, build_summaries, build_training_graph
from finetune.training.loop import train
from finetune.training.run_state import RunState, checkpoint_step
from finetune.files import write_json_atomically, write_text_atomically

log = logging.getLogger(__name__)

DEMO = "demo"
METRICS_FILE = "metrics.json"  # the same bytes for two runs of one config
TIMINGS_FILE = "timings.json"  # what differs between runs of one config: speed


def load_data(data_cfg: DataConfig, paths_cfg: PathsConfig, create: bool = True) -> ImageFolder:
    """The image folder; with ``data.root`` unset, the demo dataset (made now unless ``create`` is off)."""
    root = data_cfg.root
    if root is None:
        root = demo.ensure_target_dataset(paths_cfg.cache_dir) if create else demo.require(
            demo.target_dataset_dir(paths_cfg.cache_dir), "data.root")
    data = scan_image_folder(root, data_cfg)
    log.info("Data: %s", data.summary())
    return data


def pretrained_checkpoint(restore_cfg: RestoreConfig, paths_cfg: PathsConfig, create: bool = True) -> Optional[str]:
    """The weights ``restore.checkpoint`` names: null, ``demo``, ``zoo:NAME``, or a path."""
    spec = restore_cfg.checkpoint
    if spec is None:
        return None
    if spec == DEMO:
        if not create:
            return demo.require(demo.checkpoint_prefix(paths_cfg.cache_dir), "restore.checkpoint")
        return demo.ensure_demo_checkpoint(paths_cfg.cache_dir)
    if zoo.is_zoo_spec(spec):
        return zoo.resolve_zoo(spec, paths_cfg.cache_dir)
    return resolve_checkpoint(spec)


@contextlib.contextmanager
def _op_determinism() -> Iterator[None]:
    """Deterministic kernels for this run only: TF's switch is process-wide, so put it back after."""
    from tensorflow.python.framework import config as tf_config

    was_enabled = tf_config.is_op_determinism_enabled()
    tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    tf1.set_random_seed(seed)


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Finetune as ``cfg`` says; write everything to ``run_dir``; return the metrics.

    The run directory is locked for this process. A finished run (its last checkpoint and metrics.json
    there, written under the same config) is reported and left untouched; a checkpoint that cannot be
    resumed (another config, ``resume=never``) stops the run before anything is written."""
    validate(cfg)
    run_dir = Path(run_dir)
    state = RunState(run_dir, cfg)
    state.lock()
    try:
        latest = state.check_resumable()
        if latest and checkpoint_step(latest) >= cfg.train.steps and (run_dir / METRICS_FILE).is_file():
            log.info("This run finished already (%s, step %d) in %s; nothing to do. Start a new run directory "
                     "(hydra.run.dir=...) to train again.", Path(latest).name, checkpoint_step(latest), run_dir)
            return json.loads((run_dir / METRICS_FILE).read_text())
        write_text_atomically(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        data = load_data(cfg.data, cfg.paths)
        checkpoint = pretrained_checkpoint(cfg.restore, cfg.paths)
        with _op_determinism():  # same config, same numbers
            metrics = _train_and_export(cfg, state, data, checkpoint)
        write_json_atomically(run_dir / TIMINGS_FILE, metrics["timings"])
        write_json_atomically(run_dir / METRICS_FILE, {key: value for key, value in metrics.items() if key != "timings"})
    finally:
        state.release()
    return metrics


@dataclass
class RunGraph:
    """The built graph of a run and the restore plan for it; what the dry run (``tools plan``) prints."""

    graph: tf.Graph
    model: TrainingGraph
    plan: RestorePlan
    summaries: tuple


def build_run_graph(cfg: DictConfig, data: ImageFolder, checkpoint: Optional[str]) -> RunGraph:
    """Towers, loss, each phase's train op, summaries and the restore plan, before any session exists."""
    graph = tf.Graph()
    with graph.as_default():
        _seed(cfg.train.seed)
        model = build_training_graph(data, cfg.backbone, cfg.head, cfg.data, cfg.optimizer, cfg.train)
        graph_shapes = {name: v.shape.as_list() for name, v in model.model_variables.items()}
        plan = plan_restore(graph_shapes, checkpoint, variables_read_by([model.export.cut]), cfg.restore)
        plan.trained = model.trained
        summaries = build_summaries(model, list(plan.restore))
    return RunGraph(graph, model, plan, summaries)


def _restore_as_planned(sess: tf1.Session, run: RunGraph) -> None:
    """The planned restore of the pretrained weights, every restored tensor checked against the source."""
    apply_restore(sess, run.plan, run.model.model_variables)
    mismatched = verify_restored(sess, run.plan, run.model.model_variables)
    if mismatched:
        raise RuntimeError(f"restored values differ from the checkpoint for {mismatched[:5]}")


def model_graph(model: TrainingGraph) -> tf.Graph:
    """The deployable path alone (``input`` -> backbone -> head -> ``logits``, ``probabilities``), for
    TensorBoard's Graphs dashboard: the whole training graph, three towers sharing one set of variables,
    draws the shared head as detached "auxiliary" nodes."""
    outputs = [model.export.logits.op.name, model.export.probabilities.op.name]
    graph_def = model.export.logits.graph.as_graph_def(add_shapes=True)
    return graphs.import_graph(tf1.graph_util.extract_sub_graph(graph_def, outputs))


def _train_and_export(cfg: DictConfig, state: RunState, data: ImageFolder, checkpoint: Optional[str]) -> dict:
    run = build_run_graph(cfg, data, checkpoint)
    model, plan, run_dir = run.model, run.plan, state.run_dir
    with run.graph.as_default():
        state.make_saver(model.model_variables)
    log.info(summarize(plan, warn=False))
    warning = untouched_backbone_warning(plan)
    if warning:
        log.warning(warning)
    with tf1.Session(graph=run.graph) as sess:
        start = state.start(sess, lambda: _restore_as_planned(sess, run), cfg.restore.checkpoint)
        verified = None if start.resumed else (bool(plan.restore) or None)
        write_text_atomically(run_dir / "restore_report.txt", f"{start.why}\n\n{format_report(plan, verified)}")
        sess.run(model.train_iterator_initializer, {model.skip_batches: start.step})
        writer = tf1.summary.FileWriter(str(run_dir / "tensorboard"), model_graph(model))
        with state.stop_on_signals():
            train_metrics, timings = train(sess, model, cfg.train, cfg.data.batch_size, writer, state, run.summaries)
        frozen_names = [name for name in plan.restore if name not in set(plan.trained)]
        changed = verify_restored(sess, plan, model.model_variables, frozen_names)
        if changed:
            log.warning("%d restored, untrained variables changed during training (e.g. %s): BatchNorm moving "
                        "statistics update when backbone.batch_norm_training is true.", len(changed), changed[0])
        latest = state.latest()
        metrics = {
            "train": train_metrics,
            **evaluate_all(sess, model),
            "steps": checkpoint_step(latest),
            "restore": {"checkpoint": checkpoint, "restored": len(plan.restore), "initialised": len(plan.initialise),
                        "trained": len(plan.trained), "resumed_from_step": start.step if start.resumed else None,
                        "verified_bit_identical": verified, "frozen_variables_unchanged": not changed},
            "checkpoint": str(Path(latest).relative_to(run_dir)),
            "timings": timings,
        }
        writer.add_summary(eval_summary({split: metrics[split] for split in model.eval_initializers}),
                           metrics["steps"])
        writer.close()
        if cfg.export.enabled:
            metrics["export"] = export_model(sess, model.export, data, cfg.backbone, run_dir / "export", cfg.export)
    return metrics


def summary_table(metrics: dict, run_dir: Path) -> str:
    """The few lines printed at the end of a run."""
    def number(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [("train (last steps)", metrics["train"])] + [(s, metrics[s]) for s in ("val", "test") if s in metrics]
    lines = [f"{'split':<20}{'accuracy':>10}{'loss':>10}"]
    lines += [f"{name:<20}{number(m['accuracy']):>10}{number(m['loss']):>10}" for name, m in rows]
    speed = metrics.get("timings", {}).get("images_per_second")
    lines.append(f"{metrics['steps']} steps" + (f", {speed:.0f} images/s" if speed else ""))
    if "export" in metrics:
        worst = max(metrics["export"]["parity"].values())
        lines.append(f"frozen graph: {metrics['export']['frozen_graph']} (max |session - frozen| = {worst:.1e})")
    lines.append(f"run directory: {run_dir}")
    return "\n".join(lines)
