"""The config fingerprint: which config a run directory's checkpoints and results belong to.

The resolved config minus :data:`UNFINGERPRINTED` (keys that cannot change a run's numbers), hashed. The
first checkpoint writes it into ``checkpoints/fingerprint.json`` (with the config, to name what changed);
``run.json`` records it too. A run resumes its checkpoints only under the same fingerprint
(:meth:`finetune.training.run_state.RunState.check_resumable`), and a sweep run again reports a job done only
under the same fingerprint (:mod:`finetune.sweeps.launchers`); both say what changed with
:func:`changed_keys`. No TensorFlow: a sweep's launcher compares fingerprints before any job starts.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from finetune.run_files import CHECKPOINT_DIR, FINGERPRINT_FILE, RUN_RECORD_FILE

# Keys that cannot change a run's numbers (logging cadence, where files go, what is exported, how the
# run is resumed, the input caches, which draw the same sequence either way) and the run's length (train.steps,
# train.epochs), so that a run can be extended (or, at or below its saved step, is reported finished).
# Everything else of the resolved config is in the fingerprint. eval (test-time augmentation) only adds a pass
# at the final evaluation, through ops made after all the others, so it changes no trained weight. data.layout
# is left out because what it decides, the examples of each split, is held to by the data identity check
# (splits.json, finetune.training.data_identity) instead: a run started before the key existed resumes
# (train.epochs likewise).
UNFINGERPRINTED = ("train.steps", "train.epochs", "train.log_every", "train.histogram_every", "train.checkpoint_every",
                   "train.eval_every", "train.top_k", "train.keep_best", "train.early_stopping", "train.device",
                   "data.num_parallel_calls", "data.eval_batch_size", "data.cache_memory_mb", "data.feature_cache",
                   "data.max_bad_fraction", "data.layout", "eval", "export", "paths", "optimized_metric", "resume")
SHOWN_CHANGES = 8  # keys named in a message; more are "..."


def fingerprinted(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config (a plain dict, not changed) minus :data:`UNFINGERPRINTED`."""
    config = copy.deepcopy(config)
    for key in UNFINGERPRINTED:
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return config


def fingerprint_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus :data:`UNFINGERPRINTED`: what must match for a checkpoint to be resumed."""
    return fingerprinted(OmegaConf.to_container(cfg, resolve=True))


def fingerprint(config: dict[str, Any]) -> str:
    """The sha256 of a :func:`fingerprint_config`."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def differing_keys(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, each with its old and new value."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for name in sorted(set(old) | set(new))
                for key in differing_keys(old.get(name), new.get(name), f"{path}.{name}" if path else name)]
    return [] if old == new else [f"{path} ({old!r} -> {new!r})"]


def changed_keys(saved: dict[str, Any], config: dict[str, Any]) -> Optional[str]:
    """None when ``saved`` (``{"fingerprint", "config"}``, as recorded) is ``config``'s fingerprint, else the
    keys that changed, for a message (at most :data:`SHOWN_CHANGES`)."""
    if saved.get("fingerprint") == fingerprint(config):
        return None
    changes = differing_keys(saved.get("config"), config)
    if not changes:  # the same keys, recorded by another version's fingerprint: no key to name
        return "no key differs, but the fingerprint does (recorded by another version of finetune)"
    return "; ".join(changes[:SHOWN_CHANGES]) + (" ..." if len(changes) > SHOWN_CHANGES else "")


def recorded_fingerprint(run_dir: str | Path) -> Optional[dict[str, Any]]:
    """``{"fingerprint", "config"}`` a run directory recorded: its checkpoints' fingerprint.json, else its
    run.json (the config minus the unfingerprinted keys); None when it recorded neither (or unreadably)."""
    run_dir = Path(run_dir)
    for path in (run_dir / CHECKPOINT_DIR / FINGERPRINT_FILE, run_dir / RUN_RECORD_FILE):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("fingerprint"), str) \
                and isinstance(record.get("config"), dict):
            config = record["config"] if path.name == FINGERPRINT_FILE else fingerprinted(record["config"])
            return {"fingerprint": record["fingerprint"], "config": config}
    return None
