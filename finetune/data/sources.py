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
from finetune.data.shards import find_shards, no_training_shards
from finetune.errors import FinetuneError
from finetune.vocab import DATA_SOURCES, implementations

SHOWN = 10  # classes named in a message


def check_classes(data: LabelledImages, data_cfg: DataConfig) -> None:
    """Every class has a usable training image (with data.folds: in the pool of training and validation
    examples). Classes are named before bad files are dropped, so a class whose only files were skipped
    would otherwise stay in the head and labels.txt, never trained."""
    training = data.examples["train"] + (data.examples["val"] if data_cfg.folds else [])
    held_out = data.examples["test"] + ([] if data_cfg.folds else data.examples["val"])
    trained = {example.label for example in training}
    empty = [label for label in range(len(data.class_names)) if label not in trained]
    if not empty or not training:  # no training example at all: check_splits says so
        return
    lines = []
    for label in empty[:SHOWN]:
        skipped = [bad for bad in data.bad if bad.label == label]
        held = sum(example.label == label for example in held_out)
        why = [f"{len(skipped)} file(s) skipped: " + "; ".join(f"{b.key}: {b.reason}" for b in skipped[:3]) +
               ("; ..." if len(skipped) > 3 else "")] if skipped else []
        if held:
            why.append(f"its {held} usable image(s) all fall in the "
                       f"{'test' if data_cfg.folds else 'validation or test'} "
                       "split")
        lines.append(f"  {data.class_names[label]!r}: " + ("; ".join(why) or "no example at all"))
    more = f"\n  ... and {len(empty) - SHOWN} more" if len(empty) > SHOWN else ""
    remove = {"image_folder": "remove its folder", "csv": "remove its rows",
              "tfrecord": f"remove it from {data.root / 'labels.txt'}"}.get(data.name, "remove it")
    fixes = (["replace or re-save the skipped files"] if any(bad.label in empty for bad in data.bad) else []) + [
        "add training images to the class" + (f" (data.split puts about data.split.train={data_cfg.split.train} of "
                                              "a class's images in training, unless a split column says otherwise)"
                                              if data.name != "tfrecord" else ""), remove]
    raise FinetuneError(
        f"data.root={str(data.root)!r} (data.name={data.name}) has {len(empty)} class(es) with no usable training "
        "image; the classifier would keep an output it never learns:\n" + "\n".join(lines) + more +
        f"\n{fixes[0][0].upper()}{', '.join(fixes[:-1])[1:]}, or {fixes[-1]}.")


def check_splits(data: LabelledImages, data_cfg: DataConfig) -> None:
    """At least two classes, and images in the training and validation splits."""
    where = f"data.root={str(data.root)!r} (data.name={data.name})"
    if len(data.class_names) < 2:
        unit = "class folder(s)" if data.name == "image_folder" else "class(es)"
        raise FinetuneError(f"{where} holds {len(data.class_names)} {unit} with images; a classifier needs at least "
                            f"two. Expected: {ROOT_MEANINGS[data.name]}.")
    if not data.examples["train"] and data.name == "tfrecord" and not find_shards(data.root, "train", data_cfg):
        raise FinetuneError(no_training_shards(data.root, data_cfg))  # names the .tfrecord files there
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
    data = SOURCES[data_cfg.name](Path(root), data_cfg)
    check_classes(data, data_cfg)
    data = apply_fold(data, data_cfg)
    check_splits(data, data_cfg)
    return data


ROOT_MEANINGS = {
    "image_folder": "a folder of root/<class_name>/<image> files",
    "tfrecord": "the folder holding the TFRecord shards ({prefix}_{split}_NNNNN-of-NNNNN.tfrecord) and labels.txt",
    "csv": "the CSV file of path,label[,split] rows",
}
