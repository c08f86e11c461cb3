"""Where a graph's randomness comes from: ``train.seed`` as a tensor the graph reads, not a number built in.

Every draw a run makes in its graph is stateless and keyed by the seed: each variable's initial value (by the
seed and the variable's name, so not by how many ops were made before it), the dropout masks, the order of
the training data, the augmentation. The seed is fed to :func:`seed_feed` when the variables are initialised,
and held from then on by the variable ``train_seed``, which the train ops and the input pipelines read. So
one graph serves every seed: the jobs of a sweep over ``train.seed`` (and ``data.fold``) can share it
(:func:`random_ops_without_seed` says when they cannot).
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Callable, Iterable, Iterator, Optional

from tensorflow.python.ops import init_ops, init_ops_v2

from finetune.compat import tf, tf1
from finetune.graphs import upstream_ops

FEED_NAME, VARIABLE_NAME = "train_seed_feed", "train_seed"
_COLLECTION = "finetune_train_seed"
# TensorFlow 1's random initializers that TensorFlow 2 has as stateless initializers of the same distribution.
_STATELESS = ("VarianceScaling", "GlorotUniform", "GlorotNormal", "TruncatedNormal", "RandomNormal", "RandomUniform")
# Ops that draw from a hidden state: run twice, they draw twice; their seed is built into the graph.
STATEFUL_RANDOM_OPS = frozenset({
    "RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal", "RandomShuffle",
    "Multinomial", "RandomGamma", "RandomPoisson", "RandomPoissonV2", "ParameterizedTruncatedNormal",
    "RandomCrop", "StatefulUniform", "StatefulUniformInt", "StatefulStandardNormalV2", "StatefulTruncatedNormal",
    "StatefulRandomBinomial",
})


def _seed_ops() -> tuple[tf.Tensor, tf.Tensor]:
    """The default graph's seed placeholder and the read of the variable holding it, made at its root on first use."""
    graph = tf1.get_default_graph()
    made = graph.get_collection(_COLLECTION)
    if made:
        return made[0], made[1]
    with graph.name_scope(None), tf.control_dependencies(None):
        # 0 when nothing is fed: a tool that restores every variable never initialises one from it.
        feed = tf1.placeholder_with_default(tf.constant(0, tf.int64), [], name=FEED_NAME)
        variable = tf1.Variable(feed, trainable=False, name=VARIABLE_NAME, dtype=tf.int64)
        value = tf.identity(variable, name=f"{VARIABLE_NAME}_value")
    graph.add_to_collection(_COLLECTION, feed)
    graph.add_to_collection(_COLLECTION, value)
    return feed, value


def seed_feed() -> tf.Tensor:
    """The placeholder the run feeds ``train.seed`` to when it initialises the variables (int64 scalar)."""
    return _seed_ops()[0]


def seed_value() -> tf.Tensor:
    """``train.seed`` as the graph holds it once the variables are initialised (int64 scalar): what dropout and
    the input pipelines read."""
    return _seed_ops()[1]


def name_key(name: str) -> int:
    """A stable 31-bit number for ``name`` (a variable's or a layer's): its place among the seeded draws."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big") >> 1


def stateless_initializer(initializer: Any, name: str, dtype: tf.DType) -> Optional[Callable]:
    """``initializer`` drawing statelessly from ``[seed * 2**32 + name_key(name), 0]``: the same distribution
    through TensorFlow 2's initializer of that name. None for one it does not know (it keeps its own draw) and
    for one that draws nothing."""
    if initializer is None and dtype.is_floating:
        initializer = init_ops.glorot_uniform_initializer()  # what get_variable gives a float variable without one
    kind = type(initializer).__name__
    if not isinstance(initializer, init_ops.Initializer) or kind not in _STATELESS:
        return None
    config = {key: value for key, value in initializer.get_config().items() if key not in ("seed", "dtype")}
    if config.get("distribution") == "normal":  # TensorFlow 1's old name for the truncated normal
        config["distribution"] = "truncated_normal"

    def initial_value(shape: Any, dtype: tf.DType = dtype, partition_info: Any = None) -> tf.Tensor:
        # Called only when the variable is made (a reused one makes no op).
        seeded = getattr(init_ops_v2, kind)(**config, seed=seed_feed() * 2**32 + name_key(name))
        return seeded(shape, dtype=dtype)
    return initial_value


def seeded_getter(getter: Callable, name: str, *args: Any, **kwargs: Any) -> tf.Variable:
    """A variable-scope custom getter: every variable made under it draws its initial value from the seed."""
    seeded = stateless_initializer(kwargs.get("initializer"), name, tf.as_dtype(kwargs.get("dtype") or tf.float32))
    if seeded is not None:
        kwargs["initializer"] = seeded
    return getter(name, *args, **kwargs)


@contextlib.contextmanager
def no_graph_seed() -> Iterator[None]:
    """Make ops whose seed TensorFlow mixes with the graph's seed (``Dataset.shuffle``) without it: their seed
    is the fed one alone, so the graph holds no number that differs between seeds."""
    graph = tf1.get_default_graph()
    kept = graph.seed
    graph.seed = None
    try:
        yield
    finally:
        graph.seed = kept


def random_ops_without_seed(fetches: Iterable[tf.Tensor | tf.Operation]) -> list[str]:
    """The stateful random ops that ``fetches`` run (a walk over data and control inputs): each draws from a
    seed built into the graph and a state that the next run moves on, so a graph holding one cannot serve
    another seed, nor the same seed twice in one session."""
    return sorted(op.name for op in upstream_ops(fetches) if op.type in STATEFUL_RANDOM_OPS)
