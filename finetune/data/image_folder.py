"""The ``image_folder`` source: ``root/<class_name>/*.jpg|*.png``, split deterministically by file name.

Each file's split depends on a hash of its path relative to ``root`` and nothing else, so adding
images never moves existing ones between train, val and test. Hidden entries (``.name``, macOS's
``._name.jpg``) are not images and are passed over. A class folder that is a symlink into ``root``
itself is refused: every image under it would be trained twice, under two labels. A file reached twice
(a symlink beside its target, two links to one file) is one example (:mod:`.same_files`).
With ``data.root`` unset, the built-in demo dataset is used (:mod:`finetune.resolve` finds it).
"""
from __future__ import annotations

from pathlib import Path

from finetune.config import DataConfig
from finetune.data.bad_files import drop_bad, file_problem, shown_name, utf8_name
from finetune.data.examples import SPLITS, Example, LabelledImages, check_class_names, split_of
from finetune.data.same_files import Listed, merge_same_files
from finetune.errors import FinetuneError


def scan_image_folder(root: Path, data_cfg: DataConfig) -> LabelledImages:
    """List images and classes under ``root``, assign each image to its split, and drop bad files."""
    if not root.is_dir():
        raise FinetuneError(
            f"Config key 'data.root' points to {str(root)!r}, which is not a directory. Give a folder laid "
            "out as root/<class_name>/<image>.jpg, or leave data.root unset to use the built-in demo data."
        )
    extensions = {ext.lower() for ext in data_cfg.extensions}
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    _refuse_looped_classes(root, class_dirs)
    listed: list[Listed] = []
    class_names: list[str] = []
    for class_dir in class_dirs:
        images = sorted(p for p in class_dir.rglob("*")
                        if p.suffix.lower() in extensions and not p.name.startswith(".") and p.is_file())
        if not images:
            continue
        label = len(class_names)
        class_names.append(class_dir.name)
        for image in images:
            key = shown_name(image.relative_to(root).as_posix())
            listed.append(Listed(key, label, image, key))
    check_class_names(class_names, f"data.root={str(root)!r}")
    # A symlink beside its target, or two links to one file: one example, split by the spelling kept.
    kept, duplicates = merge_same_files(
        listed, root, class_names.__getitem__, f"data.root={str(root)!r} (data.name=image_folder)",
        "Remove the links (or copies by hard link) so that each image is in one class folder, once.")
    candidates: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for item in kept:
        # A name that is not UTF-8 is named as bad below; its split does not matter.
        relative = item.path.relative_to(root).as_posix()  # the key, when it is UTF-8
        split = split_of(relative, data_cfg.split) if utf8_name(relative) else "train"
        candidates[split].append(Example(item.key, item.label, str(item.path), item.path.stat().st_size))
    examples, bad, scanned = drop_bad(candidates, lambda e: file_problem(Path(e.reference), data_cfg.max_pixels),
                                      lambda e: e.key, data_cfg, f"data.root={str(root)!r}", lambda e: e.label)
    return LabelledImages("image_folder", root, class_names, examples, bad=bad, scanned=scanned,
                          duplicates=duplicates)


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
