"""``evaluate``: score any exported model, or a run's, on labelled images, writing what training's evaluation
writes.

The data is any source training reads, composed from ``data=...`` overrides as ``python -m finetune`` composes
it; for a run directory without a data override, the run's own data config (so ``--split test`` scores its test
split again). The model's class names (its labels file) and the data's are matched by name: the data may lack
some of the model's classes, but a class the model does not know stops the evaluation, named. Files that cannot
be read are skipped and listed (bad_files.json), never fatal.

The evaluation folder receives ``metrics.json`` (per split: loss, accuracy, top-k accuracy, balanced accuracy,
macro F1, per-class precision, recall, F1 and support; the model and the data), ``confusion_matrix.json`` and a
PNG of each matrix, ``misclassified.json``, ``predictions.jsonl`` and ``bad_files.json``: the writers of
:mod:`finetune.training.evaluate`, so each file reads as a run's.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from finetune.errors import FinetuneError
from finetune.pure_ops import ALLOW_UNSAFE_OPS_HELP
from finetune.tools import positive_int

if TYPE_CHECKING:
    from finetune.data.examples import Example, LabelledImages
    from finetune.export.runner import Model
    from finetune.training.evaluate import SplitResult

log = logging.getLogger(__name__)

HELP = "score an exported model or a run on labelled images (data=... overrides): metrics, confusion, mistakes"
SPLITS = ("train", "val", "test")
ALL = "all"  # every example of the source, in one section
SHOWN = 10  # names in a message


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=HELP + ".\n\nMODEL_OR_RUN: a .pb, SavedModel folder, .tflite, .onnx, or a run directory. The data "
        "takes the same overrides as `python -m finetune` (data=csv data.root=FILE, data.root=DIR, ...); a run "
        "directory without them is scored on its own data. Writes metrics.json, confusion_matrix.json (+ PNG), "
        "misclassified.json, predictions.jsonl and bad_files.json into --output.")
    parser.add_argument("model", metavar="MODEL_OR_RUN", help="an exported model or a run directory")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data config overrides (data=..., "
                        "data.root=..., train.top_k=...)")
    parser.add_argument("--split", default=ALL, metavar="SPLITS",
                        help="the splits to score, comma-separated among train, val, test; 'all' (default): every "
                             "image of the source, as one")
    parser.add_argument("--output", metavar="FOLDER", help="the evaluation folder (default evaluations/DATE_TIME)")
    parser.add_argument("--labels", metavar="FILE", help="the model's class names, one per line in output order "
                                                         "(default: the labels file its model.json names)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per run of the model")
    parser.add_argument("--allow-unsafe-ops", action="store_true", help=ALLOW_UNSAFE_OPS_HELP)
    return parser


def run(args: argparse.Namespace) -> int:
    from finetune.export.runner import Options, model_path, open_model

    splits = parse_splits(args.split)
    output = Path(args.output or Path("evaluations", time.strftime("%Y-%m-%d_%H-%M-%S")))
    _check_output(output)
    path = model_path(args.model)
    _check_exported(path)
    data, sections, top_k = load_data(args.model, args.overrides, splits)
    with open_model(args.model, Options(labels=args.labels, allow_unsafe_ops=args.allow_unsafe_ops)) as model:
        labels = model_labels(model)
        to_model = class_map(model, labels, data, sections)
        results, skipped = {}, []
        for split, examples in sections.items():
            if not examples:
                log.warning("The %s split of %s holds no image; it is left out.", split, data.root)
                continue
            results[split], lost = evaluate_split(model, data, examples, to_model, len(labels), top_k, args.batch_size)
            skipped += [(split, key, reason) for key, reason in lost]
    if not results:
        raise FinetuneError(f"No image of data.root={str(data.root)!r} ({data.name}) falls in the split(s) "
                            f"{', '.join(splits)}: choose others with --split, or check data.split.")
    write_evaluation(output, results, labels, data, skipped, path, model.format)
    print_summary(results, output, len(data.bad) + len(skipped))
    return 0


def parse_splits(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == [ALL]:
        return names
    wrong = [name for name in names if name not in SPLITS]
    if not names or wrong:
        raise FinetuneError(f"--split {text!r}: give 'all', or splits among {', '.join(SPLITS)} separated by commas "
                            "(e.g. --split val,test).")
    return list(dict.fromkeys(names))


def _check_output(output: Path) -> None:
    """Refused before anything runs: an evaluation folder that holds files already (nothing there is lost)."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FinetuneError(f"--output {output} exists and is not an empty folder; nothing was written. Name a new "
                            "folder (or remove that one).")


def _check_exported(path: Path) -> None:
    """A graph file must come with the model.json the export writes: it names the tensors to feed and read."""
    from finetune.export.runner import MODEL_JSON

    if path.is_file() and path.suffix.lower() not in (".tflite", ".onnx") and not path.with_name(MODEL_JSON).is_file():
        raise FinetuneError(
            f"{path} has no {MODEL_JSON} beside it naming its input and output tensors and class names: tools evaluate "
            "scores the models the export writes (export/*.pb, export/saved_model, export/*.tflite) or a run "
            "directory. Keep the model in its export folder, or classify with `tools predict MODEL IMAGE... --input "
            "NAME --output NAME --labels FILE`.")


def _overrides_data(overrides: Sequence[str]) -> bool:
    """Whether an override sets the data config (data=..., data.KEY=..., or an experiment, which may)."""
    keys = [text.split("=", 1)[0].lstrip("+~") for text in overrides]
    return any(key == "data" or key.startswith("data.") or key == "experiment" for key in keys)


def load_data(model: str, overrides: Sequence[str],
              splits: list[str]) -> tuple["LabelledImages", dict[str, list["Example"]], int]:
    """The labelled images the overrides name (a run directory's own data without a data override), scanned as
    training scans them but keeping every bad file out without a limit; the examples of each split asked for
    (with data.folds, of the fold's splits; ``all``: every example in the scan's order); and train.top_k."""
    from omegaconf import OmegaConf

    from finetune.config import compose_config
    from finetune.data.folds import apply_fold
    from finetune.data.sources import SOURCES
    from finetune.resolve import data_root
    from finetune.run_files import CONFIG_FILE
    from finetune.validate import validate

    cfg = compose_config(list(overrides))
    run_config = Path(model, CONFIG_FILE)
    if Path(model).is_dir() and run_config.is_file() and not _overrides_data(overrides):
        saved = OmegaConf.load(run_config)
        cfg.data = OmegaConf.merge(cfg.data, saved.data)
        if not any(text.split("=", 1)[0].lstrip("+~") == "train.top_k" for text in overrides):
            cfg.train.top_k = saved.train.top_k
        log.info("Data: the run's own (%s); data=... or data.root=... overrides choose other data.", run_config)
    validate(cfg)
    cfg.data.max_bad_fraction = 1.0  # every bad file skipped and listed, however many
    data = SOURCES[cfg.data.name](data_root(cfg.data, cfg.paths), cfg.data)
    log.info("Data: %s", data.summary())
    if data.bad:
        log.warning("Skipped %d file(s) that cannot be read as images (e.g. %s: %s); bad_files.json lists them all.",
                    len(data.bad), data.bad[0].key, data.bad[0].reason)
    folded = apply_fold(data, cfg.data)
    sections = {split: [e for name in SPLITS for e in data.examples[name]] if split == ALL else folded.examples[split]
                for split in splits}
    return data, sections, cfg.train.top_k


def model_labels(model: "Model") -> list[str]:
    if not model.labels:
        raise FinetuneError(f"{model.path} comes with no class names (no model.json beside it naming a labels "
                            "file): pass --labels FILE, one class name per line in the model's output order.")
    return model.labels


def class_map(model: "Model", labels: list[str], data: "LabelledImages",
              sections: dict[str, list["Example"]]) -> np.ndarray:
    """Data label -> model output, by class name. A class of the scored images that the model lacks is an error."""
    index = {name: position for position, name in enumerate(labels)}
    counts: dict[int, int] = {}
    for examples in sections.values():
        for example in examples:
            counts[example.label] = counts.get(example.label, 0) + 1
    unknown = [label for label in sorted(counts) if data.class_names[label] not in index]
    if unknown:
        named = ", ".join(f"{data.class_names[label]!r} ({counts[label]} image(s))" for label in unknown[:SHOWN])
        more = f" and {len(unknown) - SHOWN} more" if len(unknown) > SHOWN else ""
        raise FinetuneError(
            f"The data (data.root={str(data.root)!r}, {data.name}) has {len(unknown)} class(es) the model {model.path} "
            f"does not know: {named}{more}. The model's {len(labels)} classes: {', '.join(labels[:SHOWN * 3])}"
            f"{' ...' if len(labels) > SHOWN * 3 else ''}. A model cannot be scored on a class it has no output for: "
            "leave those images out (their folder or rows), name the classes as the model does, or check --labels.")
    missing = [name for name in labels if name not in {data.class_names[label] for label in counts}]
    if missing:
        log.info("%d of the model's classes have no image in the data: %s.", len(missing), ", ".join(missing[:SHOWN]))
    return np.array([index.get(name, -1) for name in data.class_names], np.int64)


def evaluate_split(model: "Model", data: "LabelledImages", examples: list["Example"], to_model: np.ndarray,
                   num_classes: int, top_k: int, batch_size: int) -> tuple["SplitResult", list[tuple[str, str]]]:
    """Training's :func:`~finetune.training.evaluate.evaluate` over the model's logits for ``examples``; and the
    (key, reason) of each image it could not decode."""
    from finetune.export.runner import classify, image_progress
    from finetune.training.evaluate import evaluate

    skipped: list[tuple[str, str]] = []

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, list[bytes]]]:
        label_of = {example.key: int(to_model[example.label]) for example in examples}
        images = zip((e.key for e in examples), data.reader.read_bytes(examples))
        rows, labels, keys = [], [], []
        for outcome in image_progress(classify(model, images, batch_size), len(examples), leave=False):
            if outcome.problem is not None:
                skipped.append((outcome.name, outcome.problem))
                continue
            if len(outcome.logits) != num_classes:
                raise FinetuneError(f"{model.path} has {len(outcome.logits)} outputs but {num_classes} class names: "
                                    "pass the labels file made with it (--labels FILE).")
            rows.append(outcome.logits)
            labels.append(label_of[outcome.name])
            keys.append(outcome.name.encode("utf-8"))
            if len(rows) == batch_size:
                yield np.stack(rows), np.array(labels, np.int64), keys
                rows, labels, keys = [], [], []
        if rows:
            yield np.stack(rows), np.array(labels, np.int64), keys

    batched = list(batches())
    if not batched:
        raise FinetuneError(f"None of the {len(examples)} image(s) could be decoded: "
                            + "; ".join(f"{key}: {reason}" for key, reason in skipped[:3]))
    return evaluate(batched, num_classes, top_k), skipped


def write_evaluation(output: Path, results: dict[str, "SplitResult"], labels: list[str], data: "LabelledImages",
                     skipped: list[tuple[str, str, str]], model: Path, model_format: str) -> None:
    """Every file of the evaluation, written into a temporary folder and renamed to ``output`` when complete."""
    import shutil

    from finetune.export.exporter import publish_folder, temporary_folder
    from finetune.files import write_bytes_atomically, write_json_atomically, write_text_atomically
    from finetune.run_files import (BAD_FILES_FILE, CONFUSION_FILE, METRICS_FILE, MISCLASSIFIED_FILE,
                                    PREDICTIONS_FILE)
    from finetune.training.evaluate import (confusion_image, confusion_report, misclassified_report,
                                            prediction_lines, split_metrics)

    staging = temporary_folder(output)
    try:
        staging.mkdir(parents=True)
        metrics = {split: split_metrics(result, labels) for split, result in results.items()}
        metrics["model"] = {"path": str(model), "format": model_format, "classes": labels}
        metrics["data"] = {"name": data.name, "root": str(data.root), "classes": data.class_names}
        write_json_atomically(staging / METRICS_FILE, metrics)
        write_json_atomically(staging / CONFUSION_FILE, confusion_report(results, labels))
        for split, result in results.items():
            write_bytes_atomically(staging / f"confusion_matrix_{split}.png", confusion_image(result.confusion, labels))
        write_json_atomically(staging / MISCLASSIFIED_FILE, misclassified_report(results, labels))
        write_text_atomically(staging / PREDICTIONS_FILE, prediction_lines(results, labels))
        report = data.bad_files_report()
        report["files"] += [{"file": key, "split": split, "reason": reason} for split, key, reason in skipped]
        write_json_atomically(staging / BAD_FILES_FILE, report)
        output.parent.mkdir(parents=True, exist_ok=True)
        publish_folder(staging, output)
    except OSError as error:
        raise FinetuneError(f"Cannot write the evaluation folder {output}: {error.strerror or error}. Nothing was "
                            "written there; choose another --output.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def print_summary(results: dict[str, "SplitResult"], output: Path, skipped: int) -> None:
    print(f"{'split':<8}{'images':>8}{'accuracy':>10}{'top-k':>8}{'loss':>8}")
    for split, result in results.items():
        print(f"{split:<8}{result.images:>8}{result.accuracy:>10.3f}{result.top_k_accuracy:>8.3f}{result.loss:>8.3f}"
              f"   (top-{result.top_k})")
    if skipped:
        print(f"{skipped} image(s) skipped: {output / 'bad_files.json'} lists them.")
    print(f"evaluation folder: {output}")
