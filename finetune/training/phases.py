"""Phases of training: what each one trains, with which optimizer and learning rate, for how long.

``train.phases`` lists them in order. Left empty, a run is one phase made of ``optimizer.*``,
``train.steps`` and ``backbone.batch_norm_training``: what every config meant before phases existed.

Each phase gets its own train op: its var_list, its own optimizer (so its own slot variables: a phase
starts with fresh optimizer state), and a learning rate whose schedule counts from the phase's first
step. The loop runs the op of the phase the global step falls in, so a resumed run needs no state
beyond the global step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from finetune.compat import tf, tf1
from finetune.config import BackboneConfig, OptimizerConfig, PhaseConfig, TrainConfig
from finetune.errors import FinetuneError
from finetune.model.towers import variables_read_by
from finetune.selection import select
from finetune.validate import DECAYS, OPTIMIZERS, implementations

log = logging.getLogger(__name__)

# name -> (learning rate, momentum, optimizer name) -> optimizer. A name of None keeps TF's default,
# so a one-phase run's slot variables keep the names they always had (head/.../Momentum).
OPTIMIZER_BUILDERS = implementations(OPTIMIZERS, {
    "sgd": lambda lr, momentum, name: tf1.train.GradientDescentOptimizer(lr, name=name or "GradientDescent"),
    "momentum": lambda lr, momentum, name: tf1.train.MomentumOptimizer(lr, momentum, name=name or "Momentum"),
    "adam": lambda lr, momentum, name: tf1.train.AdamOptimizer(lr, name=name or "Adam"),
    "rmsprop": lambda lr, momentum, name: tf1.train.RMSPropOptimizer(lr, momentum=momentum, name=name or "RMSProp"),
}, "optimizer.name")
# decay -> (phase, steps into the phase) -> learning rate
SCHEDULES = implementations(DECAYS, {
    "constant": lambda phase, step: tf.constant(phase.learning_rate, name="learning_rate"),
    "cosine": lambda phase, step: tf1.train.cosine_decay(phase.learning_rate, step, max(phase.steps, 1)),
}, "optimizer.decay")


@dataclass(frozen=True)
class Phase:
    """One phase with every key resolved: the run's defaults filled in, global steps assigned."""

    name: str
    start: int  # its first global step
    end: int  # one past its last
    var_list: tuple[str, ...]
    var_list_key: str  # the config key the var_list came from, for error messages
    optimizer: str
    learning_rate: float
    momentum: float
    decay: str
    batch_norm: str  # the backbone's BatchNorm: frozen | train
    named: bool  # declared in train.phases (its optimizer's variables carry its name)

    @property
    def steps(self) -> int:
        return self.end - self.start


def plan_phases(train_cfg: TrainConfig, optimizer_cfg: OptimizerConfig, backbone_cfg: BackboneConfig) -> list[Phase]:
    """The run's phases in order, each key left null in ``train.phases`` taken from the run's own."""
    declared = list(train_cfg.phases)
    configs = declared or [PhaseConfig(name="train", steps=train_cfg.steps)]
    phases, start = [], 0
    for index, cfg in enumerate(configs):
        phases.append(Phase(
            name=cfg.name, start=start, end=start + cfg.steps,
            var_list=tuple(cfg.var_list if cfg.var_list is not None else optimizer_cfg.var_list),
            var_list_key=f"train.phases[{index}].var_list" if cfg.var_list is not None else "optimizer.var_list",
            optimizer=cfg.optimizer or optimizer_cfg.name,
            learning_rate=cfg.learning_rate if cfg.learning_rate is not None else optimizer_cfg.learning_rate,
            momentum=optimizer_cfg.momentum,
            decay=cfg.decay or optimizer_cfg.decay,
            batch_norm=cfg.batch_norm or ("train" if backbone_cfg.batch_norm_training else "frozen"),
            named=bool(declared),
        ))
        start += cfg.steps
    return phases


def phase_at(phases: list[Phase], step: int) -> int:
    """The index of the phase that runs global step ``step`` (the last phase for a step past the end)."""
    for index, phase in enumerate(phases):
        if step < phase.end:
            return index
    return len(phases) - 1


@dataclass
class PhaseOps:
    """What one phase runs: its train op, and the loss, accuracy and learning rate it reports."""

    phase: Phase
    train_op: tf.Operation
    loss: tf.Tensor  # cross-entropy of the training batch
    accuracy: tf.Tensor
    learning_rate: tf.Tensor
    trained: list[str]  # variable names in its var_list


def trainable_selection(patterns: tuple[str, ...], key: str, loss: tf.Tensor) -> list[tf.Variable]:
    """The trainable variables ``patterns`` select, among those the loss depends on: TF-Slim builds the
    whole backbone, and its layers above the cut get no gradient, so they are not trained."""
    read = variables_read_by([loss])
    trainable = [v for v in tf1.trainable_variables() if v.op.name in read]
    names = select([v.op.name for v in trainable], list(patterns), key=key)
    if not names:
        scopes = sorted({v.op.name.split("/")[0] + "/" for v in trainable})
        raise FinetuneError(
            f"Config key '{key}' ({list(patterns)}) selects no trainable variable the loss depends on (layers "
            f"above backbone.cut do not count). Top-level scopes with such variables: {scopes}. Patterns match "
            "the start of variable names."
        )
    chosen = set(names)
    return [v for v in trainable if v.op.name in chosen]


def _regularization_for(var_list: list[tf.Variable]) -> list[tf.Tensor]:
    """Weight-decay terms of the trained variables only: terms on frozen weights are constants."""
    trained = {v.op.name for v in var_list}
    return [loss for loss in tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)
            if variables_read_by([loss]) & trained]


def build_phase(phase: Phase, loss: tf.Tensor, accuracy: tf.Tensor, update_ops: list[tf.Operation],
                global_step: tf.Variable) -> PhaseOps:
    """The train op of ``phase``: its optimizer over its var_list, on the loss of the training tower
    whose backbone BatchNorm mode it asked for (``update_ops``: that tower's moving-average updates)."""
    scope = f"optimizer_{phase.name}" if phase.named else "optimizer"
    with tf.name_scope(scope):
        var_list = trainable_selection(phase.var_list, phase.var_list_key, loss)
        step_in_phase = tf.cast(global_step, tf.int64) - phase.start
        learning_rate = SCHEDULES[phase.decay](phase, step_in_phase)
        total_loss = tf.add_n([loss] + _regularization_for(var_list), name="total_loss")
        optimizer = OPTIMIZER_BUILDERS[phase.optimizer](learning_rate, phase.momentum,
                                                        f"{phase.optimizer}_{phase.name}" if phase.named else None)
        with tf.control_dependencies(update_ops):
            train_op = optimizer.minimize(total_loss, global_step, var_list)
    return PhaseOps(phase, train_op, loss, accuracy, learning_rate, [v.op.name for v in var_list])
