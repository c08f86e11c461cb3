"""Moving averages of the trained weights (``train.moving_average_decay``, as TF-Slim's
``--moving_average_decay``): updated after every train op, swapped in for evaluation and export.

The shadows are model variables (saved, resumed). The backups that hold the trained values while the
averages are swapped in are not: they belong to no collection, and each is written before it is read.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from finetune.compat import tf, tf1


@dataclass(frozen=True)
class MovingAverages:
    """The shadows of the trained variables, and the ops that start them and swap them in and out."""

    shadows: dict[str, tf.Variable]  # trained variable name -> its average
    start: tf.Operation  # every shadow := its variable
    save_trained: tf.Operation  # every backup := its variable
    load_averages: tf.Operation  # every variable := its shadow
    restore_trained: tf.Operation  # every variable := its backup


def build_moving_averages(decay: float, variables: list[tf.Variable], train_ops: Sequence[tf.Operation],
                          names: Sequence[str]) -> tuple[MovingAverages, list[tf.Operation]]:
    """Shadows of ``variables`` and, for each train op (of the phase named in ``names``), the op that runs it
    and then updates every average (all of them, every step, as TF-Slim does). ``decay`` is used as given
    (no num_updates ramp): :func:`start_averages` starts the shadows from the weights training starts from."""
    # TF's default name: shadows are VARIABLE/ExponentialMovingAverage, as TF-Slim's tools expect.
    ema = tf1.train.ExponentialMovingAverage(decay)
    averaged = []
    for train_op, name in zip(train_ops, names):
        with tf.name_scope(f"moving_average_{name}"), tf.control_dependencies([train_op]):
            averaged.append(tf.group(ema.apply(variables), name="train_then_average"))
    shadows = {v.op.name: ema.average(v) for v in variables}
    with tf.name_scope("evaluation_weights"):
        backups = {v.op.name: tf1.Variable(tf.zeros(v.shape, v.dtype.base_dtype), trainable=False, collections=[],
                                           name=v.op.name.replace("/", "_")) for v in variables}
        start = tf.group([shadows[v.op.name].assign(v) for v in variables], name="start_averages")
        save_trained = tf.group([backups[v.op.name].assign(v) for v in variables], name="save_trained")
        load_averages = tf.group([v.assign(shadows[v.op.name]) for v in variables], name="load_averages")
        restore_trained = tf.group([v.assign(backups[v.op.name]) for v in variables], name="restore_trained")
    return MovingAverages(shadows, start, save_trained, load_averages, restore_trained), averaged


def start_averages(sess: tf1.Session, averages: Optional[MovingAverages]) -> None:
    """Set every moving average to its variable's current value: call it after a fresh start's restore,
    so the averages start from the pretrained weights rather than the initializers. No-op without them."""
    if averages is not None:
        sess.run(averages.start)


_SWAPPED: set[tuple[int, int]] = set()  # (session, averages) pairs whose averages are in the variables now


@contextlib.contextmanager
def evaluation_weights(sess: tf1.Session, averages: Optional[MovingAverages]) -> Iterator[None]:
    """While inside: the model variables hold the weights that evaluation and export use (the moving
    averages of the trained weights when there are any); afterwards, the trained ones. Nested, the inner
    one changes nothing (it must not back the averages up as trained weights)."""
    key = (id(sess), id(averages))
    if averages is None or key in _SWAPPED:
        yield
        return
    sess.run(averages.save_trained)
    sess.run(averages.load_averages)
    _SWAPPED.add(key)
    try:
        yield
    finally:
        _SWAPPED.discard(key)
        sess.run(averages.restore_trained)
