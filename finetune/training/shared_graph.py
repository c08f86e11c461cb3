"""One graph and session for the jobs of a sweep that differ only in ``train.seed`` and ``data.fold``.

A run's graph holds neither its seed (:mod:`finetune.seeding`) nor, where every phase trains from cached
features, its examples: the training split's features and labels and the held-out features are fed. So
the jobs of a repeated cross-validation, run one after another in one process (the sequential launcher),
need one graph between them: building it (the backbone, through TF-Slim) and warming a session up cost
more than training a head for a few hundred steps. Each job initialises every variable from its own seed
and restores the pretrained weights again, so it computes exactly what it computes alone; the graph is
shared only when that holds: no image tower (its pipelines hold the split's files), no stateful random op
(it would draw on where the previous job stopped), no mixed precision (a second session), and the same
value of everything else the graph is built from (:func:`graph_key`).

At most one graph and session are held, for the next job; a job on another graph closes them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from finetune.compat import tf1
from finetune.data.examples import LabelledImages
from finetune.seeding import random_ops_without_seed
from finetune.training.devices import Device, op_determinism, session_config
from finetune.training.features_tower import features_fit
from finetune.training.objective import class_weights
from finetune.training.run_graph import RunGraph, build_run_graph, seed_python

log = logging.getLogger(__name__)

REPEAT_KEYS = (("train", "seed"), ("data", "fold"))  # fed to the graph, never built into it


def graph_key(cfg: DictConfig, data: LabelledImages, checkpoint: Optional[str], device: Device) -> str:
    """What :func:`finetune.training.run_graph.build_run_graph` builds ``cfg``'s graph from, but for
    ``train.seed`` and ``data.fold``: the config, the weights, the device and what the graph takes of the data
    (the classes, the phases' lengths, the class weights, the held-out splits, each class's training images
    when classes are drawn equally often). Equal keys, equal graphs."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for section, key in REPEAT_KEYS:
        config.get(section, {}).pop(key, None)
    labels = [example.label for example in data.examples["train"]]
    counts = Counter(labels)
    in_epochs = cfg.train.epochs is not None or any(phase.epochs is not None for phase in cfg.train.phases)
    facts = {
        "config": config, "checkpoint": checkpoint, "device": repr(device), "classes": list(data.class_names),
        "training_images": len(labels) if in_epochs else None,  # the phases' lengths, where epochs set them
        "class_weights": class_weights(cfg.train.class_weights, data.class_names, labels),
        "held_out": [split for split, examples in data.examples.items() if examples and split != "train"],
        "class_sizes": ([counts[label] for label in range(len(data.class_names))]
                        if cfg.data.sampling == "balanced" else None),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def _fits(run: RunGraph, data: LabelledImages, cache_memory_mb: int) -> bool:
    """Whether ``data``'s training and held-out features fit in memory as the graph's did (its decision to
    train and evaluate from them, made from the split sizes of the job that built it)."""
    held_out = sum(len(data.examples[split]) for split in run.model.held_out_splits)
    return features_fit(max(len(data.examples["train"]), held_out), run.model.export.cut, cache_memory_mb)


def shareable(run: RunGraph, cfg: DictConfig) -> bool:
    """Whether another job may train on ``run``'s graph and session and compute what it would alone."""
    model = run.model
    if model.images is not None or cfg.train.mixed_precision:  # no image tower: evaluated from features too
        return False
    fetches = [run.restore.initialize, model.features.initializer, model.features.held_out_logits,
               *(ops.train_op for ops in model.phases)]
    return not random_ops_without_seed(fetches)


@dataclass
class _Held:
    key: str
    run: RunGraph
    sess: Optional[tf1.Session] = None


_held: Optional[_Held] = None


def release() -> None:
    """Close the held session and let the held graph go (the next job builds its own)."""
    global _held
    if _held is not None and _held.sess is not None:
        _held.sess.close()
    _held = None


def run_graph(cfg: DictConfig, data: LabelledImages, checkpoint: Optional[str], device: Device) -> RunGraph:
    """``cfg``'s run graph: the one held when its key is this job's (and the data fits it as it did), else a new
    one, held for the next job when :func:`shareable`. A sweep's check builds the first job's graph here."""
    global _held
    key = graph_key(cfg, data, checkpoint, device)
    if _held is not None and _held.key == key and _fits(_held.run, data, cfg.data.cache_memory_mb):
        seed_python(cfg.train.seed)  # as building the graph does
        return _held.run
    release()
    with op_determinism(cfg.train.deterministic):  # as the run trains: it decides some gradients' ops
        run = build_run_graph(cfg, data, checkpoint, gpu=device.gpu)
    if shareable(run, cfg):
        _held = _Held(key, run)
    return run


@contextlib.contextmanager
def run_session(run: RunGraph, cfg: DictConfig, device: Device) -> Iterator[tf1.Session]:
    """A session on ``run``'s graph: the held one when the graph is held (a previous job's, warmed up), kept
    for the next job unless this one fails; else a new one, closed after."""
    held = _held is not None and _held.run is run
    if held and _held.sess is not None:
        log.info("Training on the graph and session of the previous job: only train.seed and data.fold differ.")
        sess = _held.sess
    else:
        sess = tf1.Session(graph=run.graph, config=session_config(device, cfg.train.mixed_precision,
                                                                     cfg.train.deterministic))
        if held:
            _held.sess = sess
    try:
        with run.graph.as_default(), sess.as_default():  # as `with Session()` does, without closing it after
            yield sess
    except BaseException:
        if held:
            release()
        raise
    finally:
        if not held:
            sess.close()
