"""The whole run, in the order of the mission: data, graph, restore plan, restore, train, evaluate, freeze.

Each step takes the slice of the config it needs and returns what it made. Everything the run
produces lands in ``run_dir``: checkpoints, TensorBoard events, restore report, metrics, export.
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
from pathlib import Path
from typing import Iterator
from typing import Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from finetune import demo
from finetune.checkpoints import resolve_checkpoint
from finetune.compat import tf, tf1
from finetune.config import DataConfig, PathsConfig, RestoreConfig
from finetune.errors import FinetuneError
from finetune.data import ImageFolder, scan_image_folder
from finetune.export import export_model, validate_export_config
from finetune.head import validate_head
from finetune.model import variables_read_by
from finetune.restore import apply_restore, format_report, plan_restore, summarize, verify_restored
from finetune.train import build_summaries, build_training_graph, evaluate, train

log = logging.getLogger(__name__)

DEMO = "demo"


def load_data(data_cfg: DataConfig, paths_cfg: PathsConfig) -> ImageFolder:
    root = data_cfg.root if data_cfg.root is not None else demo.ensure_target_dataset(paths_cfg.cache_dir)
    data = scan_image_folder(root, data_cfg)
    log.info("Data: %s", data.summary())
    return data


def pretrained_checkpoint(restore_cfg: RestoreConfig, paths_cfg: PathsConfig) -> Optional[str]:
    if restore_cfg.checkpoint is None:
        return None
    if restore_cfg.checkpoint == DEMO:
        return demo.ensure_demo_checkpoint(paths_cfg.cache_dir)
    return resolve_checkpoint(restore_cfg.checkpoint)


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
    """Finetune as ``cfg`` says; write everything to ``run_dir``; return the metrics."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise FinetuneError(f"Config key(s) {missing} must be set (they are '???'), e.g. on the command line: "
                            f"python -m finetune ... {missing[0]}=VALUE")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    validate_head(cfg.head)
    validate_export_config(cfg.export)
    data = load_data(cfg.data, cfg.paths)
    checkpoint = pretrained_checkpoint(cfg.restore, cfg.paths)
    with _op_determinism():  # same config, same numbers
        metrics = _train_and_export(cfg, run_dir, data, checkpoint)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _train_and_export(cfg: DictConfig, run_dir: Path, data: ImageFolder, checkpoint: Optional[str]) -> dict:
    graph = tf.Graph()
    with graph.as_default():
        _seed(cfg.train.seed)
        model = build_training_graph(data, cfg.backbone, cfg.head, cfg.data, cfg.optimizer, cfg.train)
        graph_shapes = {name: v.shape.as_list() for name, v in model.model_variables.items()}
        plan = plan_restore(graph_shapes, checkpoint, variables_read_by([model.export.cut]), cfg.restore)
        plan.trained = model.trained
        summaries = build_summaries(model, list(plan.restore))
        saver = tf1.train.Saver(var_list=model.model_variables, max_to_keep=3)
    log.info(summarize(plan))

    checkpoint_dir = run_dir / "checkpoints"
    resume = tf.train.latest_checkpoint(str(checkpoint_dir))
    with tf1.Session(graph=graph) as sess:
        if resume:
            log.info("Resuming from %s: this run's own checkpoint wins over restore.checkpoint=%s because it holds the "
                     "trained head and optimizer state.", resume, cfg.restore.checkpoint)
            saver.restore(sess, resume)
            verified = None
        else:
            apply_restore(sess, plan, model.model_variables)
            mismatched = verify_restored(sess, plan, model.model_variables)
            if mismatched:
                raise RuntimeError(f"restored values differ from the checkpoint for {mismatched[:5]}")
            verified = bool(plan.restore) or None
        (run_dir / "restore_report.txt").write_text(format_report(plan, verified))

        writer = tf1.summary.FileWriter(str(run_dir / "tensorboard"), graph)
        train_metrics = train(sess, model, cfg.train, cfg.data.batch_size, writer, saver,
                              str(checkpoint_dir / "model.ckpt"), summaries)
        frozen_names = [name for name in plan.restore if name not in set(plan.trained)]
        changed = verify_restored(sess, plan, model.model_variables, frozen_names)
        if changed:
            log.warning("%d restored, untrained variables changed during training (e.g. %s): BatchNorm moving "
                        "statistics update when backbone.batch_norm_training is true.", len(changed), changed[0])
        metrics = {
            "train": train_metrics,
            **{split: evaluate(sess, model, split) for split in model.eval_initializers},
            "steps": train_metrics["steps"],
            "images_per_second": train_metrics["images_per_second"],
            "restore": {"checkpoint": checkpoint, "restored": len(plan.restore), "initialised": len(plan.initialise),
                        "trained": len(plan.trained), "verified_bit_identical": verified,
                        "frozen_variables_unchanged": not changed},
            "checkpoint": tf.train.latest_checkpoint(str(checkpoint_dir)),
        }
        for split in ("val", "test"):
            if split in metrics:
                writer.add_summary(tf1.Summary(value=[
                    tf1.Summary.Value(tag=f"{split}/{key}", simple_value=metrics[split][key])
                    for key in ("loss", "accuracy")]), metrics["steps"])
        writer.close()
        if cfg.export.enabled:
            metrics["export"] = export_model(sess, model.export, data, cfg.backbone, run_dir / "export", cfg.export)
    return metrics


def summary_table(metrics: dict, run_dir: Path) -> str:
    """The few lines printed at the end of a run."""
    rows = [("train (last steps)", metrics["train"])] + [(s, metrics[s]) for s in ("val", "test") if s in metrics]
    lines = [f"{'split':<20}{'accuracy':>10}{'loss':>10}"]
    lines += [f"{name:<20}{m['accuracy']:>10.3f}{m['loss']:>10.3f}" for name, m in rows]
    lines.append(f"{metrics['steps']} steps, {metrics['images_per_second']:.0f} images/s")
    if "export" in metrics:
        worst = max(metrics["export"]["parity"].values())
        lines.append(f"frozen graph: {metrics['export']['frozen_graph']} (max |session - frozen| = {worst:.1e})")
    lines.append(f"run directory: {run_dir}")
    return "\n".join(lines)
