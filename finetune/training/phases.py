"""Phases of training, planned: what each one trains, with which optimizer and learning rate, for how long.

``train.phases`` lists them in order. Left empty, a run is one phase made of ``optimizer.*``,
``train.epochs`` or ``train.steps`` (:func:`plain_phase`) and ``backbone.batch_norm_training``: what every
config meant before phases existed.
A phase's key left null takes the run's ``optimizer.KEY`` (:data:`finetune.config.PHASE_OPTIMIZER_KEYS`).

This module is pure Python: it resolves every phase's keys and global steps (:func:`plan_phases`) before
any graph exists. :mod:`finetune.training.optimizers` builds each phase's train op from the plan. The
loop runs the op of the phase the global step falls in (:func:`phase_at`), so a resumed run needs no
state beyond the global step.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Optional

from finetune.config import PHASE_OPTIMIZER_KEYS, BackboneConfig, OptimizerConfig, PhaseConfig, TrainConfig
from finetune.errors import FinetuneError
from finetune.vocab import EVERY_EPOCH

log = logging.getLogger(__name__)

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
    # What the phase trains on: "images", or "features" (the bottleneck cache: the training split's features
    # at the cut), decided once the training graph shows which phases can (finetune.training.features_tower).
    input: str = "images"
    # The gradient through the backbone's frozen BatchNorm layers: "fused" (TensorFlow's kernel), or "plain"
    # (built from plain ops: deterministic on a GPU; finetune.training.batch_norm_gradient).
    batch_norm_gradient: str = "fused"

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


def epoch_ended(step: int, training_images: int, batch_size: int) -> bool:
    """Whether global step ``step`` (1 for the first) completes another epoch: its batches bring the images
    trained past a multiple of the training split's size. An epoch of ``epochs`` rounded up to whole steps
    (:func:`phase_length`) therefore ends at that step."""
    images = max(training_images, 1)
    return step * batch_size // images > (step - 1) * batch_size // images


def evaluates_at(step: int, eval_every: Any, training_images: int, batch_size: int) -> bool:
    """Whether ``train.eval_every`` asks for an evaluation at global step ``step``: "epoch" at every
    :func:`epoch_ended`, an integer N every N steps, null never (the last step is the caller's)."""
    if eval_every is None:
        return False
    if eval_every == EVERY_EPOCH:
        return epoch_ended(step, training_images, batch_size)
    return step % int(eval_every) == 0


def plain_phase(train_cfg: TrainConfig) -> PhaseConfig:
    """The one phase of a run without ``train.phases``: ``train.epochs`` long when that is set (it wins over
    ``train.steps``), else ``train.steps``."""
    if train_cfg.epochs is not None:
        return PhaseConfig(name="train", epochs=train_cfg.epochs)
    return PhaseConfig(name="train", steps=train_cfg.steps)


def planned_steps(train_cfg: TrainConfig, training_images: int, batch_size: int) -> Optional[int]:
    """The run's length in steps as ``train`` sets it: ``train.epochs`` or ``train.steps`` resolved for a run
    without phases; ``train.steps`` with phases (null: the phases' sum, which the fingerprint fixes)."""
    if train_cfg.phases:
        return train_cfg.steps
    return phase_length(plain_phase(train_cfg), training_images, batch_size)


def _log_epochs(train_cfg: TrainConfig, steps: int, training_images: int, batch_size: int) -> None:
    """One line: the steps ``train.epochs`` comes to, and that ``train.steps`` is not used."""
    unused = f"; train.steps ({train_cfg.steps}) is not used" if train_cfg.steps is not None else ""
    log.info("The run's length: train.epochs=%g of %d training images / data.batch_size %d = %d steps (rounded up)%s.",
             train_cfg.epochs, training_images, batch_size, steps, unused)


def plan_phases(train_cfg: TrainConfig, optimizer_cfg: OptimizerConfig, backbone_cfg: BackboneConfig,
                training_images: int, batch_size: int) -> list[Phase]:
    """The run's phases in order, each key left null in ``train.phases`` taken from the run's own.

    ``training_images`` and ``batch_size`` turn a phase's ``epochs`` into steps. The run's length is the
    last phase's ``end``. Pure Python: no graph is touched."""
    declared = list(train_cfg.phases)
    configs = declared or [plain_phase(train_cfg)]
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
    if not declared and train_cfg.epochs is not None:
        _log_epochs(train_cfg, start, training_images, batch_size)
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
