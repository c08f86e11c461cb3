"""A run's whole graph, built in one pass and then finalized: the training graph, the restore plan and the
ops that apply it, the summaries and the run's own Savers. Nothing adds an op once training starts
(``tf.Graph.finalize``: an attempt raises), so what ``tools plan`` prints is what the run executes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
from omegaconf import DictConfig

from finetune.compat import tf, tf1
from finetune.data.examples import LabelledImages
from finetune.model.towers import variables_read_by
from finetune.training.run_state import Savers, build_savers
from finetune.training.training_graph import Summaries, TrainingGraph, build_summaries, build_training_graph
from finetune.weights.readers import open_weights
from finetune.weights.restore import RestoreOps, RestorePlan, build_restore, plan_restore


@dataclass(frozen=True)
class RunGraph:
    """The finalized graph of a run and everything built in it; what the dry run (``tools plan``) prints."""

    graph: tf.Graph
    model: TrainingGraph
    plan: RestorePlan
    restore: RestoreOps
    summaries: Summaries
    savers: Savers


def seed_python(seed: int) -> None:
    """Python's and NumPy's seeds (``train.seed``)."""
    random.seed(seed)
    np.random.seed(seed)


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and the default graph's seeds (``train.seed``): the one source of randomness. The
    graph's seed reaches only a random initializer :mod:`finetune.seeding` does not know (a graph holding one
    is not shared between seeds); every other draw reads the seed the run feeds."""
    seed_python(seed)
    tf1.set_random_seed(seed)


def build_run_graph(cfg: DictConfig, data: LabelledImages, checkpoint: Optional[str], gpu: bool = False) -> RunGraph:
    """Towers, loss, each phase's train op, the restore plan and its ops, summaries and Savers; then the
    graph is finalized. No session exists yet. ``checkpoint``: the resolved pretrained weights (or None);
    ``gpu``: the session will train on a GPU (:func:`finetune.training.training_graph.build_training_graph`)."""
    graph = tf.Graph()
    with graph.as_default():
        seed_everything(cfg.train.seed)
        model = build_training_graph(data, cfg.backbone, cfg.head, cfg.data, cfg.optimizer, cfg.train,
                                     cfg.allow_unsafe_ops, gpu, cfg.eval)
        graph_shapes = {name: v.shape.as_list() for name, v in model.model_variables.items()}
        # What the deployable model does not read: optimizer slots, moving averages, the global step.
        training_state = set(graph_shapes) - variables_read_by([model.export.logits])
        # Opened here, not by plan_restore, so that a .pb passes the op gate with this run's allow_unsafe_ops.
        source = open_weights(checkpoint, allow_unsafe=cfg.allow_unsafe_ops) if checkpoint else None
        plan = plan_restore(graph_shapes, source, variables_read_by([model.export.cut]), cfg.restore,
                            training_state, trained=model.trained)
        summaries = build_summaries(model, list(plan.restore))
        savers = build_savers(model.model_variables, keep_best=cfg.train.keep_best is not None)
        restore = build_restore(plan, model.model_variables)
    graph.finalize()
    return RunGraph(graph, model, plan, restore, summaries, savers)
