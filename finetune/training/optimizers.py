"""Each phase's train op: its optimizer(s) over its var_list, with its learning-rate schedule.

Built from the plan of :mod:`finetune.training.phases`. Each phase gets its own train op over its
var_list, with a learning rate whose schedule (warmup, then decay) counts from the phase's first step.
Optimizer state: a phase with ``optimizer_state: reset`` gets its own optimizer (fresh slot variables);
one with ``keep`` updates through the previous phase's optimizer(s), so slots and Adam's step counts
carry on. ``lr_multipliers`` give a scope its own multiple of the rate through one optimizer per
distinct multiple (scaling gradients would be wrong for Adam and RMSProp, which divide the scale away).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from finetune.compat import tf, tf1
from finetune.errors import FinetuneError
from finetune.model.towers import variables_read_by
from finetune.selection import select
from finetune.training.phases import SCHEDULE_KEYS, Phase, first_match, multiplier_of, optimizer_chains
from finetune.vocab import DECAYS, OPTIMIZERS, implementations

log = logging.getLogger(__name__)

# TF's own names of the optimizers: a run without train.phases keeps them, so its slot variables keep
# the names they always had (head/.../Momentum).
OPTIMIZER_NAMES = {"sgd": "GradientDescent", "momentum": "Momentum", "adam": "Adam", "rmsprop": "RMSProp"}
# name -> (learning rate, momentum, optimizer name) -> optimizer; the rate and momentum may be callables.
OPTIMIZER_BUILDERS = implementations(OPTIMIZERS, {
    "sgd": lambda lr, momentum, name: tf1.train.GradientDescentOptimizer(lr, name=name),
    "momentum": lambda lr, momentum, name: tf1.train.MomentumOptimizer(lr, momentum, name=name),
    "adam": lambda lr, momentum, name: tf1.train.AdamOptimizer(lr, name=name),
    "rmsprop": lambda lr, momentum, name: tf1.train.RMSPropOptimizer(lr, momentum=momentum, name=name),
}, "optimizer.name")
# decay -> (phase, steps since its warmup ended (int64), the phase's steps after warmup) -> learning rate
SCHEDULES = implementations(DECAYS, {
    "constant": lambda phase, step, length: tf.constant(phase.learning_rate, name="learning_rate"),
    "exponential": lambda phase, step, length: tf1.train.exponential_decay(
        phase.learning_rate, step, phase.decay_steps or length, phase.decay_rate, phase.staircase),
    "cosine": lambda phase, step, length: tf1.train.cosine_decay(phase.learning_rate, step, length),
    # decay_steps one short of the length: end_learning_rate is the rate of the phase's last step.
    "polynomial": lambda phase, step, length: tf1.train.polynomial_decay(
        phase.learning_rate, step, max(length - 1, 1), phase.end_learning_rate, phase.power),
    # piecewise_constant takes factors[0] up to and including its first boundary; ours switch AT a boundary.
    "piecewise": lambda phase, step, length: tf1.train.piecewise_constant(
        step, [b - 1 for b in phase.boundaries], [phase.learning_rate * f for f in phase.factors]),
}, "optimizer.decay")


def learning_rate(phase: Phase, step: tf.Tensor) -> tf.Tensor:
    """The learning rate of ``phase`` at ``step`` (int64) steps into it: 0 at its first step.

    Warmup: step t < warmup_steps trains at ``learning_rate * (t + 1) / warmup_steps``, so the first step
    takes 1/warmup_steps of the rate (not 0) and the last warmup step the full rate. Then the decay runs
    over the remaining ``steps - warmup_steps`` steps, starting at learning_rate (piecewise: at
    ``learning_rate * factors[0]``):

    - constant: learning_rate;
    - exponential: ``learning_rate * decay_rate ** (d / decay_steps)``, d the steps since warmup,
      decay_steps null = the remaining steps; staircase floors ``d / decay_steps``;
    - cosine: to zero at the end of the phase (one past its last step), as TF's cosine_decay;
    - polynomial: ``(learning_rate - end) * (1 - d / (remaining - 1)) ** power + end``: end_learning_rate
      at the phase's last step;
    - piecewise: ``learning_rate * factors[i]`` from d = boundaries[i - 1] on (factors[0] before the first).
    """
    warmup = phase.warmup_steps
    length = max(phase.steps - warmup, 1)
    if not warmup:
        return SCHEDULES[phase.decay](phase, step, length)
    with tf.name_scope("learning_rate"):
        decayed = SCHEDULES[phase.decay](phase, tf.maximum(step - warmup, 0), length)
        warming = phase.learning_rate * tf.cast(step + 1, tf.float32) / warmup
        return tf.where(step < warmup, warming, decayed, name="warmup_then_decay")


@dataclass(frozen=True)
class PhaseOps:
    """What one phase runs: its train op, and the loss, accuracy and learning rate it reports."""

    phase: Phase
    train_op: tf.Operation
    loss: tf.Tensor  # cross-entropy of the training batch (label-smoothed when train.label_smoothing > 0)
    accuracy: tf.Tensor
    learning_rate: tf.Tensor  # the schedule's rate; a variable with a multiplier learns at a multiple of it
    trained: tuple[str, ...]  # variable names in its var_list
    multipliers: dict[str, float] = field(default_factory=dict)  # trained name -> its factor, where not 1
    optimizer_names: tuple[str, ...] = ()  # the TF optimizers' names: the slot suffixes
    gradient_norm: Optional[tf.Tensor] = None  # the global norm before clipping (when clip_gradient_norm > 0)


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


class _PhaseSetting:
    """A setting of an optimizer that several phases share (the learning rate, the momentum), as the
    callable TF's optimizers accept: they call it while building each apply_gradients, so each phase's
    update ops read that phase's value. Set ``value`` before building a phase's updates."""

    def __init__(self) -> None:
        self.value: Any = None

    def __call__(self) -> Any:
        return self.value


@dataclass
class _OptimizerGroup:
    """One optimizer of a chain and, per phase of the chain, the factor of the variables it updates there."""

    optimizer: Any
    rate: _PhaseSetting
    momentum: _PhaseSetting
    factors: dict[int, float]  # phase index -> factor (phases where it updates nothing are absent)

    def set_phase(self, phase: Phase, rate: tf.Tensor) -> None:
        factor = self.factors[phase.position]
        self.rate.value = rate if factor == 1.0 else tf.multiply(rate, factor, name=f"learning_rate_x{factor:g}")
        self.momentum.value = phase.momentum


def _group_name(base: str, factors: dict[int, float], chain: list[int]) -> str:
    """An optimizer's name: the chain's, with the factors it applies (in the chain's phases that use it)
    when they are not all 1: Momentum_x0.1, momentum_head_x1_0.1."""
    values = [factors[index] for index in chain if index in factors]
    if all(factor == 1.0 for factor in values):
        return base
    shown = values[:1] if len(set(values)) == 1 else values
    return f"{base}_x" + "_".join(f"{factor:g}" for factor in shown)


def _plan_groups(chain: list[int], phases: list[Phase], selected: list[list[tf.Variable]],
                 mixed_precision: bool = False) -> dict[str, _OptimizerGroup]:
    """Variable name -> its optimizer in ``chain``. Variables whose factors agree in every phase of the chain
    that trains both share one optimizer; a variable keeps its optimizer (its slots) across the chain."""
    factors: dict[str, dict[int, float]] = {}
    for index in chain:
        for variable in selected[index]:
            name = variable.op.name
            factors.setdefault(name, {})[index] = multiplier_of(name, phases[index].lr_multipliers)
    signatures: list[dict[int, float]] = []
    members: dict[str, int] = {}
    for name, own in factors.items():
        match = next((i for i, signature in enumerate(signatures)
                      if all(signature.get(p, f) == f for p, f in own.items())), None)
        if match is None:
            signatures.append(dict(own))
            match = len(signatures) - 1
        else:
            signatures[match].update(own)
        members[name] = match
    first = phases[chain[0]]
    base = f"{first.optimizer}_{first.name}" if first.named else OPTIMIZER_NAMES[first.optimizer]
    groups = []
    for signature in signatures:
        rate, momentum = _PhaseSetting(), _PhaseSetting()
        optimizer = OPTIMIZER_BUILDERS[first.optimizer](rate, momentum, _group_name(base, signature, chain))
        if mixed_precision:  # float16 gradients underflow: scale the loss up, the gradients back down
            optimizer = tf1.mixed_precision.MixedPrecisionLossScaleOptimizer(optimizer, "dynamic")
        groups.append(_OptimizerGroup(optimizer, rate, momentum, signature))
    return {name: groups[group_index] for name, group_index in members.items()}


def tower_key(phase: Phase) -> str:
    """Which training tower a phase trains on: ``features`` (the cached features), else its backbone
    BatchNorm mode (``frozen`` or ``train``)."""
    return "features" if phase.input == "features" else phase.batch_norm


def build_phases(phases: list[Phase], towers: dict[str, tuple[tf.Tensor, tf.Tensor, list[tf.Operation]]],
                 global_step: tf.Variable, mixed_precision: bool = False) -> list[PhaseOps]:
    """Every phase's train op. ``towers``: key (:func:`tower_key`) -> (loss, accuracy, BatchNorm updates) of
    a training tower. ``mixed_precision`` (train.mixed_precision): every optimizer scales the loss
    dynamically (TF's MixedPrecisionLossScaleOptimizer)."""
    tower_keys = [tower_key(phase) for phase in phases]
    selected = [trainable_selection(phase.var_list, phase.var_list_key, towers[key][0])
                for phase, key in zip(phases, tower_keys)]
    groups: dict[int, dict[str, _OptimizerGroup]] = {}
    for chain in optimizer_chains(phases):
        chain_groups = _plan_groups(chain, phases, selected, mixed_precision)
        groups.update({index: chain_groups for index in chain})
    return [build_phase(phase, selected[index], groups[index], *towers[tower_keys[index]], global_step)
            for index, phase in enumerate(phases)]


def build_phase(phase: Phase, var_list: list[tf.Variable], groups: dict[str, _OptimizerGroup], loss: tf.Tensor,
                accuracy: tf.Tensor, update_ops: list[tf.Operation], global_step: tf.Variable) -> PhaseOps:
    """The train op of ``phase``: its optimizer(s) over its var_list, on the loss of the training tower
    whose backbone BatchNorm mode it asked for (``update_ops``: that tower's moving-average updates)."""
    scope = f"optimizer_{phase.name}" if phase.named else "optimizer"
    with tf.name_scope(scope):
        step_in_phase = tf.cast(global_step, tf.int64) - phase.start
        rate = learning_rate(phase, step_in_phase)
        total_loss = tf.add_n([loss] + _regularization_for(var_list), name="total_loss")
        # The phase's optimizers in the order their variables come in var_list: one without multipliers.
        used = list({id(groups[v.op.name]): groups[v.op.name] for v in var_list}.values())
        for group in used:
            group.set_phase(phase, rate)
        gradient_norm = None
        with tf.control_dependencies(update_ops):
            grads_and_vars = used[0].optimizer.compute_gradients(total_loss, var_list)
            if phase.clip_gradient_norm > 0:
                clipped, gradient_norm = tf.clip_by_global_norm([g for g, _ in grads_and_vars],
                                                                phase.clip_gradient_norm, name="clip_gradients")
                grads_and_vars = list(zip(clipped, [v for _, v in grads_and_vars]))
            applies = [group.optimizer.apply_gradients([(g, v) for g, v in grads_and_vars
                                                        if groups[v.op.name] is group]) for group in used]
            # The global step counts every step, applied or not: with mixed precision the loss scale skips
            # a step whose gradients overflowed, and an optimizer given the global step would not count it,
            # so the schedule, the phases and the checkpoints would drift from the loop's count.
            with tf.control_dependencies(applies):
                train_op = tf1.assign_add(global_step, 1, name="train_op").op
    multipliers = {v.op.name: groups[v.op.name].factors[phase.position] for v in var_list
                   if groups[v.op.name].factors[phase.position] != 1.0}
    return PhaseOps(phase, train_op, loss, accuracy, rate, tuple(v.op.name for v in var_list), multipliers,
                    tuple(group.optimizer.get_name() for group in used), gradient_norm)


def _parameters(variable: tf.Variable) -> int:
    return int(np.prod(variable.shape.as_list()))


def phase_summary(ops: PhaseOps, model_variables: dict[str, tf.Variable]) -> dict:
    """What a phase trains and how, JSON-ready: for the log (:func:`format_phase_summary`) and the run directory."""
    phase = ops.phase
    scopes: dict[str, dict[str, int]] = {}
    for name in ops.trained:
        scope = scopes.setdefault(name.split("/")[0] + "/", {"variables": 0, "parameters": 0})
        scope["variables"] += 1
        scope["parameters"] += _parameters(model_variables[name])
    schedule: dict[str, Any] = {"learning_rate": phase.learning_rate, "decay": phase.decay,
                                "warmup_steps": phase.warmup_steps}
    for key in SCHEDULE_KEYS[phase.decay]:
        value = getattr(phase, key)
        schedule[key] = list(value) if isinstance(value, tuple) else value
    if phase.decay == "exponential" and phase.decay_steps is None:
        schedule["decay_steps"] = max(phase.steps - phase.warmup_steps, 1)
    optimizer: dict[str, Any] = {"name": phase.optimizer, "variables": list(ops.optimizer_names)}
    if phase.optimizer in ("momentum", "rmsprop"):
        optimizer["momentum"] = phase.momentum
    return {
        "name": phase.name, "first_step": phase.start + 1, "last_step": phase.end, "steps": phase.steps,
        "epochs": phase.epochs,
        "trainable_variables": list(ops.trained), "trainable_parameters": sum(s["parameters"] for s in scopes.values()),
        "scopes": scopes, "var_list": list(phase.var_list),
        "optimizer": optimizer, "optimizer_state": phase.optimizer_state,
        "learning_rate_schedule": schedule,
        "lr_multipliers": [{"pattern": pattern, "factor": factor, "variables": sum(  # those it is the first match of
                                first_match(name, phase.lr_multipliers) == index for name in ops.trained)}
                           for index, (pattern, factor) in enumerate(phase.lr_multipliers)],
        "clip_gradient_norm": phase.clip_gradient_norm, "batch_norm": phase.batch_norm, "input": phase.input,
        "batch_norm_gradient": phase.batch_norm_gradient,
    }
