"""The ``image_folder`` source, in one of two layouts (``data.layout``):

- ``class_folders``: ``root/<class_name>/*.jpg|*.png``, split deterministically by file name. Each file's
  split depends on a hash of its path relative to ``root`` and nothing else, so adding images never moves
  existing ones between train, val and test.
- ``split_folders``: ``root/<split>/<class_name>/...`` (timm's and ImageNet's layout), each image in the split
  its folder names (``data.split_names``, and ``val`` or ``validation`` for validation); the classes are the
  training folder's, and a class a held-out split lacks is reported, an unknown one refused.
- ``auto`` (the default) picks ``split_folders`` when the folders under ``root`` are split names, and refuses
  a mix of split names and other folders: split names are never trained on as classes.

Hidden entries (``.name``, macOS's ``._name.jpg``) are not images and are passed over. A class folder that is
a symlink into ``root`` itself is refused: every image under it would be trained twice, under two labels. A
file reached twice (a symlink beside its target, two links to one file) is one example (:mod:`.same_files`).
With ``data.root`` unset, the built-in demo dataset is used (:mod:`finetune.resolve` finds it).
"""
from __future__ import annotations

import logging
from pathlib import Path

from finetune.config import DataConfig
from finetune.data.bad_files import drop_bad, file_problem, shown_name, utf8_name
from finetune.data.examples import (SPLITS, Example, LabelledImages, check_class_names, split_fractions, split_names,
                                     split_of)
from finetune.data.same_files import Listed, merge_same_files
from finetune.errors import FinetuneError

log = logging.getLogger(__name__)


def scan_image_folder(root: Path, data_cfg: DataConfig) -> LabelledImages:
    """List images and classes under ``root``, assign each image to its split, and drop bad files."""
    if not root.is_dir():
        raise FinetuneError(
            f"Config key 'data.root' points to {str(root)!r}, which is not a directory. Give a folder laid "
            "out as root/<class_name>/<image>.jpg, or leave data.root unset to use the built-in demo data."
        )
    extensions = {ext.lower() for ext in data_cfg.extensions}
    folders = _folders(root)
    split_dirs = split_folders(root, folders, data_cfg)
    listed: list[Listed] = []
    class_names: list[str] = []
    given_split: dict[str, str] = {}  # split_folders: key -> the split its folder names
    for split, base in split_dirs or [(None, root)]:
        class_dirs = _folders(base)
        _refuse_looped_classes(root, class_dirs)
        if split is not None and split != "train":
            _check_held_out_classes(base, class_dirs, class_names, split)
        for class_dir in class_dirs:
            images = sorted(p for p in class_dir.rglob("*")
                            if p.suffix.lower() in extensions and not p.name.startswith(".") and p.is_file())
            if not images:
                continue
            if class_dir.name not in class_names:
                class_names.append(class_dir.name)
            label = class_names.index(class_dir.name)
            for image in images:
                key = shown_name(image.relative_to(root).as_posix())
                listed.append(Listed(key, label, image, key))
                if split is not None:
                    given_split[key] = split
    check_class_names(class_names, f"data.root={str(root)!r}")
    # A symlink beside its target, or two links to one file: one example, split by the spelling kept.
    kept, duplicates = merge_same_files(
        listed, root, class_names.__getitem__, f"data.root={str(root)!r} (data.name=image_folder)",
        "Remove the links (or copies by hard link) so that each image is in one class folder, once.")
    candidates: dict[str, list[Example]] = {split: [] for split in SPLITS}
    fractions, max_pixels = split_fractions(data_cfg.split), data_cfg.max_pixels
    for item in kept:
        # A name that is not UTF-8 is named as bad below; its split does not matter.
        relative = item.path.relative_to(root).as_posix()  # the key, when it is UTF-8
        if split_dirs:
            split = given_split[item.key]
        else:
            split = split_of(relative, fractions) if utf8_name(relative) else "train"
        candidates[split].append(Example(item.key, item.label, str(item.path), item.path.stat().st_size))
    examples, bad, scanned = drop_bad(candidates, lambda e: file_problem(Path(e.reference), max_pixels),
                                      lambda e: e.key, data_cfg, f"data.root={str(root)!r}", lambda e: e.label)
    return LabelledImages("image_folder", root, class_names, examples, bad=bad, scanned=scanned,
                          duplicates=duplicates)


def _folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_folders(root: Path, folders: list[Path], data_cfg: DataConfig) -> list[tuple[str, Path]]:
    """The (split, folder) pairs of a ``split_folders`` layout, train first; [] for ``class_folders``.
    ``auto`` decides by the folder names; FinetuneError for a layout the folders do not have, or a mix."""
    names = split_names(data_cfg.split_names)
    splits = {folder.name: names[folder.name] for folder in folders if folder.name in names}
    where = f"data.root={str(root)!r}"
    if data_cfg.layout == "class_folders" or (data_cfg.layout == "auto" and not splits):
        return []
    others = [folder.name for folder in folders if folder.name not in splits]
    if data_cfg.layout == "auto" and others:
        raise FinetuneError(
            f"{where} holds folders named like splits ({', '.join(sorted(splits))}) beside others "
            f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}), so its layout is unclear: as class "
            "folders it would train a classifier of split names. Lay it out as root/<split>/<class>/... "
            f"(data.layout=split_folders; split names: {', '.join(sorted(names))}) or as root/<class>/... with no "
            "split-named folder; if those really are classes, set data.layout=class_folders.")
    if "train" not in splits.values() or others:
        raise FinetuneError(
            f"data.layout={data_cfg.layout} reads {where} as root/<split>/<class>/..., but "
            + (f"it has no training folder ({data_cfg.split_names.train}/)" if "train" not in splits.values()
               else f"{', '.join(others[:5])} {'is' if len(others) == 1 else 'are'} not a split name")
            + f". Split folders are named {', '.join(sorted(names))} (data.split_names); for root/<class>/... "
            "use data.layout=class_folders.")
    if len([name for name, split in splits.items() if split == "val"]) > 1:
        raise FinetuneError(f"{where} has two validation folders "
                            f"({', '.join(n for n, s in splits.items() if s == 'val')}): "
                            "keep one.")
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(((split, root / name) for name, split in splits.items()), key=lambda pair: order[pair[0]])


def _check_held_out_classes(base: Path, class_dirs: list[Path], class_names: list[str], split: str) -> None:
    """A held-out split's classes must be the training split's (one it lacks is reported, not refused)."""
    found = [folder.name for folder in class_dirs]
    unknown = [name for name in found if name not in class_names]
    if unknown:
        raise FinetuneError(
            f"The {split} folder {shown_name(base)} has class folder(s) the training folder lacks: "
            f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}. A model cannot predict a class it was "
            "not trained on: add its training images, or move those folders out.")
    missing = [name for name in class_names if name not in found]
    if missing:
        log.info("The %s folder %s has no images of %s; its metrics leave those classes out.", split,
                 shown_name(base), ", ".join(missing))


def _refuse_looped_classes(root: Path, class_dirs: list[Path]) -> None:
    """A class folder that is a symlink to ``root`` or to a folder inside it."""
    resolved_root = root.resolve()
    for class_dir in class_dirs:
        if not class_dir.is_symlink():
            continue
        target = class_dir.resolve()
        if target == resolved_root or resolved_root in target.parents:
            raise FinetuneError(
                f"The class folder {shown_name(class_dir)} is a symlink to {shown_name(target)}, inside data.root "
                f"itself: its images would be trained twice, under two labels. Remove the link, or make it a real "
                "folder of that class's own images.")
