"""Phases of training: what each one trains, with which optimizer and learning rate, for how long.

``train.phases`` lists them in order. Left empty, a run is one phase made of ``optimizer.*``,
``train.steps`` and ``backbone.batch_norm_training``: what every config meant before phases existed.
A phase's key left null takes the run's ``optimizer.KEY`` (:data:`finetune.config.PHASE_OPTIMIZER_KEYS`).

Each phase gets its own train op over its var_list, with a learning rate whose schedule (warmup, then
decay) counts from the phase's first step. Optimizer state: a phase with ``optimizer_state: reset`` gets
its own optimizer (fresh slot variables); one with ``keep`` updates through the previous phase's
optimizer(s), so slots and Adam's step counts carry on. ``lr_multipliers`` give a scope its own multiple of
the rate through one optimizer per distinct multiple (scaling gradients would be wrong for Adam and
RMSProp, which divide the scale away). The loop runs the op of the phase the global step falls in, so a
resumed run needs no state beyond the global step.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from finetune.compat import tf, tf1
from finetune.config import PHASE_OPTIMIZER_KEYS, BackboneConfig, OptimizerConfig, PhaseConfig, TrainConfig
from finetune.errors import FinetuneError
from finetune.model.towers import variables_read_by
from finetune.selection import select
from finetune.validate import DECAYS, OPTIMIZERS, implementations

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
# decay -> the keys that shape it (for the phase report)
SCHEDULE_KEYS = {"constant": (), "exponential": ("decay_rate", "decay_steps", "staircase"), "cosine": (),
                 "polynomial": ("end_learning_rate", "power"), "piecewise": ("boundaries", "factors")}


@dataclass(frozen=True)
class Phase:
    """One phase with every key resolved: the run's defaults filled in, global steps assigned."""

    name: str
    index: Optional[int]  # its place in train.phases; None for the phase a run without train.phases makes
    start: int  # its first global step
    end: int  # one past its last
    epochs: Optional[float]  # its length as configured in epochs; None when given in steps
    optimizer: str
    optimizer_state: str  # reset | keep (the first phase: reset)
    batch_norm: str  # the backbone's BatchNorm: frozen | train
    overridden: frozenset[str]  # the PHASE_OPTIMIZER_KEYS the phase sets itself (the rest: optimizer.KEY)
    # PHASE_OPTIMIZER_KEYS, resolved (lists as tuples; lr_multipliers as (pattern, factor) pairs)
    learning_rate: float
    momentum: float
    decay: str
    warmup_steps: int
    decay_rate: float
    decay_steps: Optional[int]
    staircase: bool
    end_learning_rate: float
    power: float
    boundaries: tuple[int, ...]
    factors: tuple[float, ...]
    clip_gradient_norm: float
    lr_multipliers: tuple[tuple[str, float], ...]
    var_list: tuple[str, ...]

    @property
    def steps(self) -> int:
        return self.end - self.start

    @property
    def position(self) -> int:
        """Its place among the run's phases."""
        return self.index or 0

    @property
    def named(self) -> bool:
        """Declared in train.phases: its optimizer's variables carry its name."""
        return self.index is not None

    def key(self, name: str) -> str:
        """The config key a resolved value was read from, for messages."""
        return f"train.phases[{self.index}].{name}" if name in self.overridden else f"optimizer.{name}"

    @property
    def var_list_key(self) -> str:
        return self.key("var_list")


def _plain(key: str, value: Any) -> Any:
    """A config value as an immutable plain one: lists as tuples, multipliers as (pattern, factor)."""
    if key == "lr_multipliers":
        return tuple((str(rule.pattern), float(rule.factor)) for rule in value)
    if key in ("boundaries", "factors", "var_list"):
        return tuple(value)
    return value


def steps_per_epoch(training_images: int, batch_size: int) -> float:
    """Training steps in one pass over the training split (the batches run on across epochs)."""
    return training_images / batch_size


def phase_length(cfg: PhaseConfig, training_images: int, batch_size: int) -> int:
    """A phase's steps: its ``steps``, or its ``epochs`` rounded up to whole steps."""
    if cfg.steps is not None:
        return int(cfg.steps)
    # round() first: 0.3 epochs of 100 images in batches of 10 is 3 steps, not ceil(3.0000000000000004).
    return max(1, math.ceil(round(cfg.epochs * steps_per_epoch(training_images, batch_size), 9)))


def plan_phases(train_cfg: TrainConfig, optimizer_cfg: OptimizerConfig, backbone_cfg: BackboneConfig,
                training_images: int, batch_size: int) -> list[Phase]:
    """The run's phases in order, each key left null in ``train.phases`` taken from the run's own.

    ``training_images`` and ``batch_size`` turn a phase's ``epochs`` into steps. The run's length is the
    last phase's ``end``. Pure Python: no graph is touched."""
    declared = list(train_cfg.phases)
    configs = declared or [PhaseConfig(name="train", steps=train_cfg.steps)]
    phases, start = [], 0
    for index, cfg in enumerate(configs):
        own = frozenset(key for key in PHASE_OPTIMIZER_KEYS if getattr(cfg, key) is not None)
        values = {key: _plain(key, getattr(cfg if key in own else optimizer_cfg, key)) for key in PHASE_OPTIMIZER_KEYS}
        steps = phase_length(cfg, training_images, batch_size)
        phases.append(Phase(
            name=cfg.name, index=index if declared else None, start=start, end=start + steps,
            epochs=None if cfg.steps is not None else float(cfg.epochs),
            optimizer=cfg.optimizer or optimizer_cfg.name,
            optimizer_state=cfg.optimizer_state if index else "reset",  # the first phase has nothing to keep
            batch_norm=cfg.batch_norm or ("train" if backbone_cfg.batch_norm_training else "frozen"),
            overridden=own, **values,
        ))
        start += steps
    if declared and train_cfg.steps is not None and train_cfg.steps != start:
        lengths = ", ".join(f"{p.name}: {p.steps}" + (f" ({p.epochs:g} epochs)" if p.epochs is not None else "")
                            for p in phases)
        if any(p.epochs is not None for p in phases):
            lengths += (f"; an epoch is {training_images} training images / data.batch_size {batch_size} = "
                        f"{steps_per_epoch(training_images, batch_size):g} steps, rounded up per phase")
        raise FinetuneError(
            f"Config key 'train.steps' is {train_cfg.steps}, but train.phases add up to {start} steps ({lengths}). "
            "Set train.steps=null to train for the phases' sum, or change the phases' lengths.")
    return phases


def phase_at(phases: list[Phase], step: int) -> int:
    """The index of the phase that runs global step ``step`` (the last phase for a step past the end)."""
    for index, phase in enumerate(phases):
        if step < phase.end:
            return index
    return len(phases) - 1


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


@dataclass
class PhaseOps:
    """What one phase runs: its train op, and the loss, accuracy and learning rate it reports."""

    phase: Phase
    train_op: tf.Operation
    loss: tf.Tensor  # cross-entropy of the training batch (label-smoothed when train.label_smoothing > 0)
    accuracy: tf.Tensor
    learning_rate: tf.Tensor  # the schedule's rate; a variable with a multiplier learns at a multiple of it
    trained: list[str]  # variable names in its var_list
    multipliers: dict[str, float] = field(default_factory=dict)  # trained name -> its factor, where not 1
    optimizer_names: list[str] = field(default_factory=list)  # the TF optimizers' names: the slot suffixes
    gradient_norm: Optional[tf.Tensor] = None  # the global norm before clipping (when clip_gradient_norm > 0)
    input: str = "images"  # images | features: the training split's features at the cut (the bottleneck cache)


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


def first_match(name: str, multipliers: tuple[tuple[str, float], ...]) -> Optional[int]:
    """The index of the first multiplier whose pattern matches variable ``name`` (re.match); None if none."""
    return next((index for index, (pattern, _) in enumerate(multipliers) if re.match(pattern, name)), None)


def multiplier_of(name: str, multipliers: tuple[tuple[str, float], ...]) -> float:
    """The learning-rate factor of variable ``name``: the first matching pattern's, else 1."""
    index = first_match(name, multipliers)
    return 1.0 if index is None else multipliers[index][1]


def optimizer_chains(phases: list[Phase]) -> list[list[int]]:
    """Phase indices grouped by shared optimizer state: a ``keep`` phase joins the previous phase's chain."""
    chains: list[list[int]] = []
    for index, phase in enumerate(phases):
        if index and phase.optimizer_state == "keep":
            chains[-1].append(index)
        else:
            chains.append([index])
    return chains


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


def build_phases(phases: list[Phase], towers: dict[str, tuple[tf.Tensor, tf.Tensor, list[tf.Operation]]],
                 global_step: tf.Variable, tower_keys: Optional[list[str]] = None,
                 mixed_precision: bool = False) -> list[PhaseOps]:
    """Every phase's train op. ``towers``: key -> (loss, accuracy, BatchNorm updates) of a training tower;
    phase i trains on ``towers[tower_keys[i]]``, by default the tower of the backbone BatchNorm mode its
    ``batch_norm`` asks for (the keys ``frozen`` and ``train``). ``mixed_precision`` (train.mixed_precision):
    every optimizer scales the loss dynamically (TF's MixedPrecisionLossScaleOptimizer)."""
    tower_keys = tower_keys or [phase.batch_norm for phase in phases]
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
            if len(used) == 1:
                train_op = used[0].optimizer.apply_gradients(grads_and_vars, global_step)
            else:
                applies = [group.optimizer.apply_gradients([(g, v) for g, v in grads_and_vars
                                                            if groups[v.op.name] is group]) for group in used]
                with tf.control_dependencies(applies):
                    train_op = tf1.assign_add(global_step, 1, name="train_op").op
    multipliers = {v.op.name: groups[v.op.name].factors[phase.position] for v in var_list
                   if groups[v.op.name].factors[phase.position] != 1.0}
    return PhaseOps(phase, train_op, loss, accuracy, rate, [v.op.name for v in var_list], multipliers,
                    [group.optimizer.get_name() for group in used], gradient_norm)


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
        "clip_gradient_norm": phase.clip_gradient_norm, "batch_norm": phase.batch_norm, "input": ops.input,
    }


def format_phase_summary(summary: dict) -> str:
    """A few log lines from :func:`phase_summary`: steps, what is trained, the optimizer and schedule."""
    s = summary
    length = f"steps {s['first_step']}-{s['last_step']} ({s['steps']} steps"
    length += f", {s['epochs']:g} epochs)" if s.get("epochs") is not None else ")"
    scopes = ", ".join(f"{scope} {c['variables']} variables ({c['parameters']:,} parameters)"
                       for scope, c in s["scopes"].items())
    optimizer = s["optimizer"]
    momentum = f" {optimizer['momentum']:g}" if "momentum" in optimizer else ""
    schedule = s["learning_rate_schedule"]
    shape = ", ".join(f"{key} {value}" for key, value in schedule.items()
                      if key not in ("learning_rate", "decay", "warmup_steps"))
    rate = f"learning rate {schedule['learning_rate']:g}, {schedule['decay']}" + (f" ({shape})" if shape else "")
    if schedule["warmup_steps"]:
        rate += f" after {schedule['warmup_steps']} warmup steps"
    state = "state kept from the previous phase" if s["optimizer_state"] == "keep" else "fresh state"
    lines = [f"Phase {s['name']!r}: {length}",
             f"  trains {len(s['trainable_variables'])} variables ({s['trainable_parameters']:,} parameters) "
             f"matching {s['var_list']}",
             f"  by scope: {scopes}",
             f"  {optimizer['name']}{momentum} ({state}); {rate}"]
    extras = [f"{m['pattern']!r} x{m['factor']:g} ({m['variables']} variables)" for m in s["lr_multipliers"]]
    if extras:
        lines.append(f"  learning-rate multipliers: {', '.join(extras)}")
    if s["clip_gradient_norm"]:
        lines.append(f"  gradients clipped to global norm {s['clip_gradient_norm']:g}")
    lines.append(f"  backbone BatchNorm {s['batch_norm']}")
    if s.get("input") == "features":
        lines.append("  trains the head on the cached features at the cut (bottleneck cache)")
    return "\n".join(lines)
