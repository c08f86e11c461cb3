"""Data sources: where a run's labelled images come from, behind one registry keyed by ``data.name``.

A source scans its files once, before any graph exists, and returns :class:`~finetune.data.examples.
LabelledImages` (the data vocabulary, :mod:`finetune.data.examples`): the class names, each split's
examples in a fixed order, the bad files it skipped, and how the input pipeline reads an example.

- ``image_folder``: ``root/<class_name>/*.jpg``, split by a hash of each path (:mod:`.image_folder`);
- ``tfrecord``: the shards TF-Slim's dataset converters write (:mod:`.tfrecord`);
- ``csv``: ``path,label[,split]`` rows (:mod:`.csv`).

``data.root`` arrives resolved (:mod:`finetune.resolve`: the demo dataset when it is unset).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from finetune.config import DataConfig
from finetune.data import csv, image_folder, tfrecord
from finetune.data.examples import LabelledImages
from finetune.data.folds import apply_fold
from finetune.errors import FinetuneError
from finetune.vocab import DATA_SOURCES, implementations


def check_splits(data: LabelledImages, data_cfg: DataConfig) -> None:
    """At least two classes, and images in the training and validation splits."""
    where = f"data.root={str(data.root)!r} (data.name={data.name})"
    if len(data.class_names) < 2:
        unit = "class folder(s)" if data.name == "image_folder" else "class(es)"
        raise FinetuneError(f"{where} holds {len(data.class_names)} {unit} with images; a classifier needs at least "
                            f"two. Expected: {ROOT_MEANINGS[data.name]}.")
    hints = {"train": f"data.split.train={data_cfg.split.train}", "val": f"data.split.val={data_cfg.split.val}"}
    for split, name in (("train", "training"), ("val", "validation")):
        if not data.examples[split]:
            raise FinetuneError(f"No image of {where} falls in the {name} split. Add images, or raise "
                                f"{hints[split]} (image_folder, csv without a split column), or check "
                                f"data.split_names.{split}={getattr(data_cfg.split_names, split)!r} (tfrecord shard "
                                "names, csv split column).")


# data.name -> scan(root, data_cfg)
SOURCES: dict[str, Callable[[Path, DataConfig], LabelledImages]] = implementations(DATA_SOURCES, {
    "image_folder": image_folder.scan_image_folder,
    "tfrecord": tfrecord.scan_tfrecords,
    "csv": csv.scan_csv,
}, "data.name")


def open_source(data_cfg: DataConfig, root: Path) -> LabelledImages:
    """Scan the data ``data.name`` names at ``root`` (``data.root``, resolved); refuse it when it cannot be
    trained on."""
    data = apply_fold(SOURCES[data_cfg.name](Path(root), data_cfg), data_cfg)
    check_splits(data, data_cfg)
    return data


ROOT_MEANINGS = {
    "image_folder": "a folder of root/<class_name>/<image> files",
    "tfrecord": "the folder holding the TFRecord shards ({prefix}_{split}_NNNNN-of-NNNNN.tfrecord) and labels.txt",
    "csv": "the CSV file of path,label[,split] rows",
}
