"""The training loop: the graph is finalized before the first step, and the listeners are called at their
moments, in order. (Stopping and crashing at a chosen step: tests/test_run_state.py, test_evaluation.py.)"""
from __future__ import annotations

import pytest
from conftest import SignalAtStep, run_pipeline, tiny_config

from finetune import pipeline
from finetune.compat import tf
from finetune.errors import RunStopped
from finetune.resolve import data_root, pretrained_checkpoint
from finetune.training.loop import Listener
from finetune.training.run_graph import build_run_graph


class Recorder(Listener):
    """Every moment the loop calls, with its step."""

    def __init__(self) -> None:
        self.moments: list[tuple] = []

    def phase_started(self, loop, phase: int, step: int) -> None:
        self.moments.append(("phase_started", phase, step))

    def step_ended(self, loop, result) -> None:
        self.moments.append(("step_ended", result.step))

    def evaluated(self, loop, step: int, results: dict) -> None:
        self.moments.append(("evaluated", step, sorted(results)))

    def checkpointed(self, loop, step: int, checkpoint: str) -> None:
        self.moments.append(("checkpointed", step, checkpoint.rsplit("/", 1)[-1]))

    def training_ended(self, loop, step: int) -> None:
        self.moments.append(("training_ended", step))

    def closed(self, loop) -> None:
        self.moments.append(("closed",))


class AddsAnOp(Listener):
    def step_ended(self, loop, result) -> None:
        tf.constant(1.0, name="added_while_training")


def _config(cache, data, *overrides: str):
    """conftest's tiny profile, without an export: the moments do not depend on what is learnt."""
    return tiny_config(cache, data, "export.enabled=false", *overrides)


def test_the_run_graph_is_finalized_before_any_session(demo_cache, tiny_data):
    cfg = _config(demo_cache, tiny_data)
    run = build_run_graph(cfg, pipeline.load_data(cfg.data, data_root(cfg.data, cfg.paths)),
                          pretrained_checkpoint(cfg.restore, cfg.paths))
    assert run.graph.finalized
    with pytest.raises(RuntimeError, match="finalized"), run.graph.as_default():
        tf.constant(0.0)


def test_nothing_adds_an_op_while_training(demo_cache, tiny_data, tmp_path):
    with pytest.raises(RuntimeError, match="finalized"):
        run_pipeline(_config(demo_cache, tiny_data, "train.steps=2"), tmp_path, listeners=[AddsAnOp()])


def test_listeners_are_called_at_their_moments_in_order(demo_cache, tiny_data, tmp_path):
    """Two phases of 3 and 2 steps, an evaluation every 2 steps and a checkpoint every 2: each evaluation
    comes before the checkpoint of its step, each phase end and the last step get both."""
    recorder = Recorder()
    cfg = _config(demo_cache, tiny_data, "train.steps=null", "train.phases=[{name: a, steps: 3}, {name: b, steps: 2}]",
                  "train.eval_every=2", "train.checkpoint_every=2")
    run_pipeline(cfg, tmp_path, listeners=[recorder])
    splits = ["val"]  # evaluations during training measure validation only
    assert recorder.moments == [
        ("phase_started", 0, 0), ("step_ended", 1),
        ("step_ended", 2), ("evaluated", 2, splits), ("checkpointed", 2, "model.ckpt-2"),
        ("step_ended", 3), ("checkpointed", 3, "model.ckpt-3"),
        ("phase_started", 1, 3), ("step_ended", 4), ("evaluated", 4, splits), ("checkpointed", 4, "model.ckpt-4"),
        ("step_ended", 5), ("evaluated", 5, splits), ("checkpointed", 5, "model.ckpt-5"),
        ("training_ended", 5), ("closed",),
    ]
    # Stopped by a signal after step 2 and resumed: the second process starts inside phase a, at step 2.
    with pytest.raises(RunStopped):
        run_pipeline(cfg, tmp_path / "stopped", listeners=[SignalAtStep(2)])
    resumed = Recorder()
    run_pipeline(cfg, tmp_path / "stopped", listeners=[resumed])
    assert resumed.moments[:2] == [("phase_started", 0, 2), ("step_ended", 3)]
