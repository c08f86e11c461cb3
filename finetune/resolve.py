"""Specs -> things, before a run: the folder ``data.root`` means and the weights ``restore.checkpoint`` means.

``data.root`` unset (``image_folder``) means the demo dataset; ``restore.checkpoint`` is null, ``demo``
(the demo backbone shipped with the package, :mod:`finetune.demo`), ``zoo:NAME`` (a published checkpoint,
downloaded once) or a path. One resolver serves every caller, in one of three modes:

- ``create`` (a run): make the demo assets and download zoo checkpoints that are not there yet;
- ``require`` (``tools plan``, a dry run): make nothing; a demo asset that is not built is an error;
- ``check`` (the sweep pre-check): make, download and refuse nothing that the first job will make;
  such a checkpoint resolves to None and the data root to where the demo dataset will be.

:func:`path_problems` is the check of every file and folder a config names, without TensorFlow.
Importing this module does not import TensorFlow: the demo, the zoo and the weight readers are
imported when a spec needs them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import DictConfig

from finetune.config import DataConfig, PathsConfig, RestoreConfig
from finetune.data.shards import shard_problems
from finetune.errors import FinetuneError, cache_errors
from finetune.files import makeable
from finetune.vocab import DEMO_CHECKPOINT, IMPORTED_BACKBONE_FILES, ZOO_PREFIX

if TYPE_CHECKING:  # the pipeline imports TensorFlow
    from finetune.pipeline import RunInputs

log = logging.getLogger(__name__)

CREATE, REQUIRE, CHECK = "create", "require", "check"
MODES = (CREATE, REQUIRE, CHECK)


def resolve(cfg: DictConfig, mode: str = CREATE) -> "RunInputs":
    """The data root and pretrained weights of ``cfg``, for :func:`finetune.pipeline.run`."""
    from finetune.pipeline import RunInputs

    return RunInputs(data_root(cfg.data, cfg.paths, mode), pretrained_checkpoint(cfg.restore, cfg.paths, mode))


def data_root(data_cfg: DataConfig, paths_cfg: PathsConfig, mode: str = CREATE) -> Path:
    """``data.root``, or with image_folder's root unset the demo dataset's folder (drawn now in ``create``
    mode; in ``check`` mode it may not exist yet)."""
    if data_cfg.root is not None:
        return Path(data_cfg.root).expanduser()
    if data_cfg.name != "image_folder":
        raise FinetuneError(f"Config key 'data.root' is unset; data.name={data_cfg.name} needs it. Set data.root=PATH.")
    from finetune.data import demo_images

    root = demo_images.target_dataset_dir(paths_cfg.cache_dir)
    if mode == CREATE:
        with cache_errors(paths_cfg.cache_dir):
            return demo_images.ensure_target_dataset(paths_cfg.cache_dir)
    if mode == REQUIRE and not root.is_dir():
        raise _not_built("data.root", root)
    return root


def pretrained_checkpoint(restore_cfg: RestoreConfig, paths_cfg: PathsConfig, mode: str = CREATE) -> Optional[str]:
    """The weights ``restore.checkpoint`` names: None (null), the demo backbone's prefix, a zoo checkpoint's
    prefix, or the file or prefix a path points at (a folder: its latest checkpoint)."""
    spec = restore_cfg.checkpoint
    if spec is None:
        return None
    cache_dir = paths_cfg.cache_dir
    if spec == DEMO_CHECKPOINT:
        from finetune import demo

        return demo.checkpoint()
    if str(spec).startswith(ZOO_PREFIX):
        from finetune.weights import zoo

        if mode == CHECK:  # the cached copy only: the check never downloads
            cached = zoo.cached_checkpoint(zoo.get_zoo_entry(spec), cache_dir)
            if cached is None:
                log.info("%s is not downloaded yet (the first job downloads it): its restore is not checked.", spec)
            return cached
        with cache_errors(cache_dir):
            return zoo.resolve_zoo(spec, cache_dir)
    from finetune.weights.readers import resolve_checkpoint

    return resolve_checkpoint(spec)


def _not_built(key: str, path: Path) -> FinetuneError:
    return FinetuneError(f"The demo asset for '{key}' is not built yet ({path}). Build it with "
                         "`python scripts/make_demo_assets.py` or run the experiment once.")


# --- the paths a config names, checked without TensorFlow ------------------------------------------------
def _path_problem(key: str, value: Any, sweep: bool, must_exist: bool = True, kind: str = "",
                  fix: str = "") -> Optional[str]:
    """A relative path in a sweep, or a path that does not exist (a checkpoint prefix counts by its .index);
    ``kind`` "folder" or "file": a path of the other kind. ``fix``: what the key wants, for the message."""
    path = os.path.expanduser(str(value))
    if sweep and not os.path.isabs(path):
        return (f"Config key '{key}' is {value!r}, a relative path. A sweep job may run in another working "
                f"directory (a cluster node, a launcher's job folder), where it names another place or nothing. "
                f"Give an absolute path: {key}={os.path.abspath(path)}")
    fix = fix or "Fix the path on the command line or in your experiment file."
    suffixes = ("",) if kind else ("", ".index", ".meta")  # a checkpoint prefix is no file itself
    if must_exist and not any(os.path.exists(path + suffix) for suffix in suffixes):
        return f"Config key '{key}' is {value!r}, which does not exist ({os.path.abspath(path)}). {fix}"
    if kind == "folder" and os.path.exists(path) and not os.path.isdir(path):
        return f"Config key '{key}' is {value!r}, which is not a folder. {fix}"
    if kind == "file" and os.path.isdir(path):
        return f"Config key '{key}' is {value!r}, a folder, not a file. {fix}"
    return None


# data.name -> what data.root must be, and what to give it (the sources' own scan says the same, later)
DATA_ROOTS = {
    "image_folder": ("folder", "Give a folder laid out as root/<class_name>/<image>.jpg, or leave data.root unset "
                               "for the built-in demo data."),
    "tfrecord": ("folder", "Give the folder holding the TFRecord shards ({prefix}_{split}_NNNNN-of-NNNNN.tfrecord) "
                           "and labels.txt."),
    "csv": ("file", "Give the CSV file of path,label[,split] rows."),
}


CHECKPOINT_FIX = ("Give a checkpoint prefix (the path without .index/.data-*), a folder holding checkpoints, a frozen "
                  f"graph (.pb) or an .npz file; or restore.checkpoint={DEMO_CHECKPOINT}, {ZOO_PREFIX}NAME or null.")


def path_problems(cfg: DictConfig, sweep: bool = True) -> list[str]:
    """The files and folders ``cfg`` names: they exist (the cache folder: can be made) and, in a
    ``sweep``, are absolute; a tfrecord folder holds shards of the training split under its
    ``data.split_names`` (:func:`finetune.data.shards.shard_problems`). The demo assets and zoo
    checkpoints are made on first use: not paths."""
    found = []
    if cfg.data.root is not None:
        kind, fix = DATA_ROOTS.get(cfg.data.name, ("", ""))
        found.append(_path_problem("data.root", cfg.data.root, sweep, kind=kind, fix=fix))
        if found[-1] is None and cfg.data.name == "tfrecord":  # the shards' names: split names, record prefix
            found += shard_problems(Path(cfg.data.root).expanduser(), cfg.data)
    checkpoint = cfg.restore.checkpoint
    if checkpoint is not None and checkpoint != DEMO_CHECKPOINT and not str(checkpoint).startswith(ZOO_PREFIX):
        found.append(_path_problem("restore.checkpoint", checkpoint, sweep, fix=CHECKPOINT_FIX))
    for name in IMPORTED_BACKBONE_FILES.get(cfg.backbone.name, ()):
        value = cfg.backbone.params.get(name)
        if isinstance(value, str):
            found.append(_path_problem(f"backbone.params.{name}", value, sweep))
    cache_dir = str(cfg.paths.cache_dir)
    found.append(_path_problem("paths.cache_dir", cache_dir, sweep, must_exist=False))
    if found[-1] is None and makeable(cache_dir):
        found[-1] = (f"Config key 'paths.cache_dir' is {cache_dir!r}, which is not a folder and cannot be made "
                     "(a file is in the way, or no permission). Point FINETUNE_CACHE or paths.cache_dir=... at a "
                     "folder you can write.")
    return [problem for problem in found if problem]
