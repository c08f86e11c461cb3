"""What each phase trains on, started when the training loop enters the phase.

A phase on images (re)starts the training split's iterator after the batches already trained; a phase
on cached features first makes sure the training split's features at the cut exist for the weights the
session holds now (read from the bottleneck cache, computed where missing), then feeds them to the
features tower, skipping the same batches. Both inputs draw the same shuffled sequence, so where a
phase switches from one to the other the examples carry on as if nothing changed.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional
import numpy as np

from finetune.compat import tf1
from finetune.data.feature_fill import cached_features
from finetune.data.features import FeatureStore, model_key
from finetune.data.examples import LabelledImages
from finetune.training.training_graph import TrainingGraph

log = logging.getLogger(__name__)


class PhaseInputs:
    """Starts each phase's input for the loop (``start``); holds the features of the phase under way."""

    def __init__(self, model: TrainingGraph, data: LabelledImages, cache_dir: str | Path) -> None:
        self.model, self.data, self.cache_dir = model, data, cache_dir
        self._features: dict[str, tuple[str, np.ndarray]] = {}  # split -> (model key, its features) last made
        self._fixed_key: Optional[str] = None  # the model key, when nothing below the cut can change

    def start(self, sess: tf1.Session, index: int, step: int) -> None:
        """Ready phase ``index``'s input to yield the batch of global step ``step + 1`` next."""
        model = self.model
        if not model.uses_features(index):
            sess.run(model.images.train_iterator_initializer, {model.skip_batches: step})
            return
        tower = model.features
        labels = np.array([example.label for example in self.data.examples["train"]], np.int64)
        sess.run(tower.initializer, {tower.features: self.features(sess), tower.labels: labels,
                                     model.skip_batches: step})

    def features(self, sess: tf1.Session, split: str = "train") -> np.ndarray:
        """``split``'s features under the session's current weights below the cut, in example order."""
        tower = self.model.features
        key = self._model_key(sess)
        if split in self._features and self._features[split][0] == key:
            return self._features[split][1]
        self._features.pop(split, None)  # let the old array go before making the new one
        store = FeatureStore(self.cache_dir, key, tower.shape)
        started = time.perf_counter()
        features, stats = cached_features(sess, store, tower.extractor, self.data, self.data.examples[split])
        log.info("Feature cache %s, %s split: %d images' features reused, %d computed%s, in %.1f s.", store.folder,
                 split, stats.reused, stats.computed,
                 f" ({stats.rejected} entries failed their checks and were recomputed)" if stats.rejected else "",
                 time.perf_counter() - started)
        self._features[split] = (key, features)
        return features

    def _model_key(self, sess: tf1.Session) -> str:
        """The cache's model key for the session's weights below the cut. Hashing them reads every one (large for
        a deep backbone); when every phase trains from the cache they never change, so once is enough."""
        if self._fixed_key is not None:
            return self._fixed_key
        tower = self.model.features
        key = model_key(sess, tower.below_cut, {"graph_to_cut_sha256": tower.graph_sha256})
        if self.model.evaluates_features:
            self._fixed_key = key
        return key
