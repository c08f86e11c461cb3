"""One validation pass over a composed config, before TensorFlow starts and before anything is written.

:func:`validate` checks the keys against the schema (:class:`finetune.config.Config`), keys left
``???``, and every number, name and pattern, and raises one :class:`FinetuneError` holding one
paragraph per problem, each naming the key and what it accepts. It is pure and imports no TensorFlow,
so the command line runs it before Hydra makes a run directory
(:class:`finetune.hydra_callbacks.ValidateBeforeRun`), each sweep job runs it first, and
:func:`finetune.pipeline.run` runs it for callers of the API. The valid names live in :mod:`finetune.vocab`.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import re
from typing import Any, Callable, Iterable, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from finetune.config import PHASE_OPTIMIZER_KEYS, Config, HeadConfig, exports, field_schema, schema_fields
from finetune.errors import FinetuneError
from finetune.selection import compile_patterns
from finetune.vocab import (ACTIVATIONS, AUGMENT_TYPES, AUTOTUNE, BACKBONES, BATCH_NORM_MODES, DATA_LAYOUTS,
                            DATA_SOURCES, DECAYS, DEVICES, EVALUATION_METRICS, EVERY_EPOCH, EXPORT_INPUTS,
                            FEATURE_CACHE_MODES, LAYER_TYPES, METRIC_SECTIONS, OPTIMIZER_STATES, OPTIMIZERS, PADDINGS,
                            RESTORE_POLICIES, RESUME_POLICIES, SAMPLINGS, SPLIT_METRICS, TFLITE_IO_TYPES,
                            TFLITE_QUANTIZATIONS, TTA_CROP_PREFIX, TTA_PRESETS, TTA_VIEWS, tta_views)


def _rule(key: str, value: Any, accepts: str, hint: str = "") -> str:
    """One paragraph: the key, its value, what it accepts and how to fix it."""
    override = re.sub(r"\[(\d+)\]", r".\1", key)  # head.layers[0].rate -> head.layers.0.rate, as Hydra takes it
    return (f"Config key '{key}' is {value!r}; it must be {accepts}.{(' ' + hint) if hint else ''} "
            f"Fix it in your experiment file or on the command line ({override}=...).")


def _choice(key: str, value: Any, options: Iterable[str], meaning: str = "") -> list[str]:
    if value in options:
        return []
    by_lower = {option.lower(): option for option in options}  # 'same' -> SAME
    near = [by_lower[o] for o in difflib.get_close_matches(str(value).lower(), by_lower, n=2, cutoff=0.6)]
    hint = " ".join(text for text in (f"Did you mean {' or '.join(near)}?" if near else "", meaning) if text)
    return [_rule(key, value, f"one of {', '.join(options)}", hint)]


def _positive(value: Any) -> bool:
    return value is not None and value > 0 and math.isfinite(value)


def _non_negative(value: Any) -> bool:
    return value is not None and value >= 0 and math.isfinite(value)


# section -> key -> (test, what it accepts)
NUMBER_RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "backbone": {
        "image_size": (_positive, "an integer > 0 (the square input side in pixels)"),
        "num_classes": (_non_negative, "an integer >= 0 (0 leaves the original classifier out)"),
    },
    "head": {
        "weight_decay": (_non_negative, "a number >= 0 (0 turns L2 off)"),
        "batch_norm_decay": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    },
    "data": {
        "batch_size": (_positive, "an integer > 0 (images per training step)"),
        "eval_batch_size": (_positive, "an integer > 0 (images per evaluation step)"),
        "num_parallel_calls": (lambda v: v > 0 or v == AUTOTUNE,
                               f"an integer > 0 (parallel image decoders), or {AUTOTUNE} to let tf.data choose"),
        "max_pixels": (_positive, "an integer > 0 (the largest image, width x height, read)"),
        "max_bad_fraction": (lambda v: 0 <= v <= 1, "a number in [0, 1] (the fraction of a split that may be "
                                                    "skipped as bad files)"),
        "cache_memory_mb": (_non_negative, "an integer >= 0 (MiB for in-memory caches; 0: none)"),
        "shuffle_buffer": (lambda v: v is None or v > 0, "null (the whole split) or an integer > 0"),
    },
    "optimizer": {
        "learning_rate": (_positive, "a number > 0"),
        "momentum": (_non_negative, "a number >= 0 (used by momentum and rmsprop)"),
        "warmup_steps": (_non_negative, "an integer >= 0 (steps of linear warmup at the start of each phase)"),
        "decay_rate": (lambda v: 0 < v <= 1, "a number in (0, 1] (exponential: the factor per decay_steps)"),
        "decay_steps": (lambda v: v is None or v > 0, "null (the phase's length) or an integer > 0"),
        "end_learning_rate": (_non_negative, "a number >= 0 (polynomial: the rate at a phase's end)"),
        "power": (_positive, "a number > 0 (polynomial: 1 is linear)"),
        "clip_gradient_norm": (_non_negative, "a number >= 0 (the gradients' largest global norm; 0: no clipping)"),
    },
    "train": {
        "steps": (lambda v: v is None or _positive(v),
                  "an integer > 0 (training steps), or null with train.phases or train.epochs"),
        "epochs": (lambda v: v is None or _positive(v),
                   "a number > 0 (epochs of the training split, rounded up to whole steps), or null (train.steps)"),
        "seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
        "log_every": (_positive, "an integer > 0 (steps between scalar summaries and progress lines)"),
        "histogram_every": (_positive, "an integer > 0 (steps between histogram summaries)"),
        "checkpoint_every": (_positive, "an integer > 0 (steps between checkpoints)"),
        "label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1) (0: one-hot targets)"),
        "moving_average_decay": (lambda v: v is None or 0 < v < 1,
                                 "null (off) or a number in (0, 1), e.g. 0.999"),
        "top_k": (_positive, "an integer > 0 (evaluations report top-k accuracy)"),
    },
    "export": {
        "parity_images": (_positive, "an integer > 0 (validation images each exported format is checked on)"),
        "parity_tolerance": (_non_negative, "a number >= 0 (max |session - exported| allowed)"),
        "calibration_images": (_positive, "an integer > 0 (training images that calibrate an int8 model)"),
        "max_accuracy_drop": (lambda v: 0 <= v <= 1, "a fraction in [0, 1] (of the val and test images)"),
    },
}
# section -> key -> its valid names
NAME_RULES: dict[str, dict[str, tuple[str, ...]]] = {
    "data": {"name": DATA_SOURCES, "layout": DATA_LAYOUTS, "feature_cache": FEATURE_CACHE_MODES, "sampling": SAMPLINGS},
    "optimizer": {"name": OPTIMIZERS, "decay": DECAYS},
    "train": {"device": DEVICES},
    "restore": {"on_missing": RESTORE_POLICIES, "on_shape_mismatch": RESTORE_POLICIES},
    "export": {"input": EXPORT_INPUTS, "tflite_quantization": TFLITE_QUANTIZATIONS, "tflite_io": TFLITE_IO_TYPES},
}
# What the names mean, where the name alone does not say.
NAME_MEANINGS = {
    "restore.on_missing": "'error' stops and names every offender; 'init' initialises those variables instead "
                          "(the restore report lists them).",
    "restore.on_shape_mismatch": "'error' stops and names every offender with both shapes; 'init' initialises those "
                                 "variables instead (the restore report lists them).",
    "export.input": "'float': the graphs take input:0, float32 RGB [N, H, W, 3] in [0, 255]; 'image_bytes': they take "
                    "image_bytes:0, a string batch of encoded JPEG/PNG files, decoded in the graph.",
    "export.tflite_quantization": "'none' writes no quantized model; 'dynamic' stores int8 weights, 'float16' float16 "
                                  "weights, 'int8' is full-integer, calibrated on training images.",
    "export.tflite_io": "What an int8 model takes and gives: 'float' (converted inside the model), 'int8' or 'uint8'.",
    "train.device": "'auto' trains on a GPU when TensorFlow sees one, else on the CPU; 'cpu' hides the GPUs; "
                    "'gpu' stops before training when TensorFlow sees no GPU.",
    "optimizer.decay": "Each counts from a phase's first step after warmup: 'exponential' multiplies the rate by "
                       "decay_rate every decay_steps, 'cosine' decays it to zero, 'polynomial' to end_learning_rate, "
                       "'piecewise' takes factors of it between boundaries.",
}


def check_section(section: str, node: Any) -> list[str]:
    """The numbers (:data:`NUMBER_RULES`) and names (:data:`NAME_RULES`) of one config section."""
    problems = []
    for key, (test, accepts) in NUMBER_RULES.get(section, {}).items():
        value = getattr(node, key)
        if not test(value):
            problems.append(_rule(f"{section}.{key}", value, accepts))
    for key, options in NAME_RULES.get(section, {}).items():
        problems += _choice(f"{section}.{key}", getattr(node, key), options, NAME_MEANINGS.get(f"{section}.{key}", ""))
    return problems


def _patterns(key: str, patterns: Iterable[str]) -> list[str]:
    """A paragraph for each pattern that is not a valid regex (the message of finetune.selection)."""
    problems = []
    for pattern in patterns:
        try:
            compile_patterns([pattern], key)
        except FinetuneError as error:
            problems.append(str(error))
    return problems


def check_backbone(backbone_cfg: Any) -> list[str]:
    """``backbone``: its name (against :data:`finetune.vocab.BACKBONES`, which the registry is checked
    against), its numbers (the cut is checked against the built graph), and the one free-form parameter whose
    range every family shares: a width factor ``params.depth_multiplier`` > 0 (the network builders would refuse
    it later, after TensorFlow loads, as an internal error)."""
    problems = _choice("backbone.name", backbone_cfg.name, BACKBONES, "The config group picks one with its image "
                       "size, cut and parameters: backbone=NAME (conf/backbone/).") + check_section("backbone",
                                                                                                    backbone_cfg)
    params = getattr(backbone_cfg, "params", None) or {}
    if "depth_multiplier" in params:
        value = params["depth_multiplier"]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and _positive(value)):
            problems.append(_rule("backbone.params.depth_multiplier", value,
                                  "a number > 0 (the width factor: 1.0 is the published width, e.g. 0.25, 0.5)"))
    return problems


def check_data(data_cfg: Any) -> list[str]:
    """``data``: batch sizes, decoders, and the split: non-negative fractions summing to 1, train > 0."""
    problems = check_section("data", data_cfg)
    split = data_cfg.split
    fractions = (split.train, split.val, split.test)
    if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6 or split.train == 0:
        problems.append(f"Config keys 'data.split.train/val/test' are {fractions}; they must be non-negative "
                        "fractions summing to 1 with train > 0, e.g. data.split.train=0.8 data.split.val=0.1 "
                        "data.split.test=0.1.")
    for index, entry in enumerate(data_cfg.augment):
        problems += check_augment(entry, f"data.augment[{index}]")
    names = (data_cfg.split_names.train, data_cfg.split_names.val, data_cfg.split_names.test)
    if len(set(names)) < 3 or not all(str(name).strip() for name in names):
        problems.append(f"Config keys 'data.split_names.train/val/test' are {names}; they must be three different, "
                        "non-empty names (the {split} of TFRecord shard names, a CSV's split column values), e.g. "
                        "train, validation, test.")
    if data_cfg.name != "image_folder" and data_cfg.root is None:
        problems.append(f"Config key 'data.root' is unset; data.name={data_cfg.name} needs it (tfrecord: the folder "
                        "of shards and labels.txt; csv: the CSV file). Set data.root=PATH.")
    return problems + check_folds(data_cfg)


def check_folds(data_cfg: Any) -> list[str]:
    """``data.folds``: null or k >= 2; ``data.fold``: in [0, k) (0 when folds are off)."""
    folds, fold = data_cfg.folds, data_cfg.fold
    if folds is None:
        return [] if fold == 0 else [_rule("data.fold", fold, "0 while data.folds is null",
                                           "Set data.folds=K for K-fold cross-validation.")]
    if folds < 2:
        return [_rule("data.folds", folds, "null (no cross-validation) or an integer >= 2")]
    if not 0 <= fold < folds:
        return [_rule("data.fold", fold, f"an integer in [0, {folds}) (data.folds={folds})",
                      f"A sweep over every fold: data.fold='range({folds})'.")]
    return []


def _range_pair(value: Any, low: float, high: float) -> bool:
    return value is None or (len(value) == 2 and low <= value[0] <= value[1] <= high)


# augment key -> (test, what it accepts); null always means the type's default
AUGMENT_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "probability": (lambda v: v is None or 0 <= v <= 1, "null or a number in [0, 1]"),
    "area": (lambda v: _range_pair(v, 1e-6, 1), "null or [min, max] with 0 < min <= max <= 1 (fractions of the area)"),
    "aspect_ratio": (lambda v: _range_pair(v, 1e-6, math.inf), "null or [min, max] with 0 < min <= max"),
    "max_delta": (lambda v: v is None or _non_negative(v), "null or a number >= 0"),
    "lower": (lambda v: v is None or _non_negative(v), "null or a number >= 0"),
    "upper": (lambda v: v is None or _non_negative(v), "null or a number >= 0"),
    "max_degrees": (lambda v: v is None or 0 <= v <= 180, "null or a number of degrees in [0, 180]"),
}


def check_augment(entry: Any, key: str) -> list[str]:
    """One ``data.augment`` entry: its type and the ranges of its numbers."""
    problems = _choice(f"{key}.type", entry.type, AUGMENT_TYPES)
    for name, (test, accepts) in AUGMENT_RULES.items():
        if not test(getattr(entry, name)):
            problems.append(_rule(f"{key}.{name}", getattr(entry, name), accepts))
    if entry.lower is not None and entry.upper is not None and entry.lower > entry.upper:
        problems.append(_rule(f"{key}.lower", entry.lower, f"at most {key}.upper ({entry.upper})"))
    if entry.type == "hue" and entry.max_delta is not None and entry.max_delta > 0.5:
        problems.append(_rule(f"{key}.max_delta", entry.max_delta, "at most 0.5 for hue (half the colour circle)"))
    return problems


def check_restore(restore_cfg: Any) -> list[str]:
    """``restore``: the policies and every regex (include, exclude, rename patterns)."""
    problems = check_section("restore", restore_cfg)
    problems += _patterns("restore.include", restore_cfg.include) + _patterns("restore.exclude", restore_cfg.exclude)
    for index, rule in enumerate(restore_cfg.rename):
        problems += _patterns(f"restore.rename[{index}].pattern", [rule.pattern])
    return problems


def check_optimizer(optimizer_cfg: Any) -> list[str]:
    """``optimizer``: name, schedule, numbers, multipliers, and the var_list regexes."""
    return (check_section("optimizer", optimizer_cfg) + _patterns("optimizer.var_list", optimizer_cfg.var_list)
            + check_schedule({key: ("optimizer", optimizer_cfg[key]) for key in PHASE_OPTIMIZER_KEYS}))


def check_schedule(values: Mapping[str, tuple[str, Any]]) -> list[str]:
    """The learning-rate keys that go together: piecewise boundaries and factors, the multipliers.

    ``values``: key -> (the section it was read from, its value); a phase's own or the optimizer's."""
    def where(key: str) -> str:
        return f"{values[key][0]}.{key}"

    problems = []
    boundaries, factors = values["boundaries"][1], values["factors"][1]
    if values["decay"][1] == "piecewise":
        if not boundaries or any(b <= 0 for b in boundaries) or list(boundaries) != sorted(set(boundaries)):
            problems.append(_rule(where("boundaries"), list(boundaries or []), "a non-empty list of increasing "
                                  "integers > 0 (steps into the phase, after warmup) for decay 'piecewise'"))
        elif len(factors or []) != len(boundaries) + 1 or any(not _positive(f) for f in factors):
            problems.append(_rule(where("factors"), list(factors or []), f"{len(boundaries) + 1} numbers > 0 (one "
                                  "more than boundaries: the learning_rate multiples before, between and after them)"))
    for index, rule in enumerate(values["lr_multipliers"][1] or []):
        key = f"{where('lr_multipliers')}[{index}]"
        problems += _patterns(f"{key}.pattern", [rule.pattern])
        if not _positive(rule.factor):
            problems.append(_rule(f"{key}.factor", rule.factor, "a number > 0 (the multiple of the learning rate); "
                                  "leave a scope out of the phase's var_list to freeze it"))
    return problems


def check_train(train_cfg: Any) -> list[str]:
    """``train``: steps, seed, every interval and evaluation policies (the phases: :func:`check_phases`)."""
    problems = check_section("train", train_cfg) + check_eval_every(train_cfg.eval_every)
    stopping = train_cfg.early_stopping
    for key, metric in (("train.keep_best", train_cfg.keep_best), ("train.early_stopping.metric", stopping.metric)):
        if metric is None:
            continue
        problems += _choice(key, metric, EVALUATION_METRICS, "It is read from each evaluation of the val split.")
        if metric in EVALUATION_METRICS and train_cfg.eval_every is None:
            problems.append(_rule("train.eval_every", None, f"'{EVERY_EPOCH}' or an integer > 0 when {key} is set",
                                  "It needs evaluations during training to compare, e.g. "
                                  f"train.eval_every={EVERY_EPOCH} "
                                  "(the default) or train.eval_every=100."))
    problems += check_class_weights(train_cfg.class_weights)
    if not _positive(stopping.patience):
        problems.append(_rule("train.early_stopping.patience", stopping.patience, "an integer > 0 (evaluations)"))
    if not _non_negative(stopping.min_delta):
        problems.append(_rule("train.early_stopping.min_delta", stopping.min_delta, "a number >= 0"))
    return problems


def check_eval_every(value: Any) -> list[str]:
    """``train.eval_every``: "epoch", an integer > 0, or null (typed Any: a structured config holds no union)."""
    if value is None or value == EVERY_EPOCH or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return []
    hint = "0 no longer means 'only after training': null does." if value == 0 else ""
    return [_rule("train.eval_every", value, f"'{EVERY_EPOCH}' (an evaluation each time the steps trained complete "
                  "an epoch of the training split), an integer > 0 (steps between evaluations), or null (one "
                  "evaluation, after training)", hint)]


def check_class_weights(weights: Any) -> list[str]:
    """``train.class_weights``: null, 'balanced', or a mapping of class names to numbers > 0 (the names are
    checked against the data's classes when it is scanned)."""
    if weights is None or weights == "balanced":
        return []
    accepts = "null, 'balanced', or a mapping {class name: weight > 0}, e.g. \"train.class_weights={cat: 2.0}\""
    if not isinstance(weights, (dict, DictConfig)):
        return [_rule("train.class_weights", weights, accepts)]
    bad = {str(name): value for name, value in weights.items()
           if isinstance(value, bool) or not isinstance(value, (int, float)) or not _positive(value)}
    return [_rule("train.class_weights", dict(bad), accepts)] if bad else []


def check_phases(train_cfg: Any, optimizer_cfg: Any = None) -> list[str]:
    """``train.phases``: each phase's length and overrides; unique names; lengths adding up to train.steps.

    With ``optimizer_cfg``, the keys a phase leaves null are read from it when checking those that go
    together (piecewise boundaries and factors, ``optimizer_state: keep`` and the optimizer name)."""
    found = []
    names = [phase.name for phase in train_cfg.phases]
    for index, phase in enumerate(train_cfg.phases):
        key = f"train.phases[{index}]"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(phase.name)):
            found.append(_rule(f"{key}.name", phase.name, "letters, digits, '_', '.' or '-', starting with a letter "
                               "or digit", "It names the phase's optimizer variables (VARIABLE/OPTIMIZER_NAME)."))
        elif phase.name in names[:index]:
            found.append(f"Config key '{key}.name' is {phase.name!r}, the name of train.phases["
                         f"{names.index(phase.name)}] too; give each phase its own name (it names the phase's "
                         "optimizer variables and its log lines).")
        if (phase.steps is None) == (phase.epochs is None):
            found.append(f"Config keys '{key}.steps' and '{key}.epochs' are {phase.steps} and {phase.epochs}; set "
                         f"exactly one: the phase's length in steps, or in epochs of the training split (e.g. "
                         f"train.phases.{index}.steps=null train.phases.{index}.epochs=2).")
        elif phase.steps is not None and not _positive(phase.steps):
            found.append(_rule(f"{key}.steps", phase.steps, "an integer > 0 (the phase's training steps)"))
        elif phase.epochs is not None and not _positive(phase.epochs):
            found.append(_rule(f"{key}.epochs", phase.epochs, "a number > 0 (epochs of the training split)"))
        for name, (test, accepts) in NUMBER_RULES["optimizer"].items():
            value = getattr(phase, name)
            if value is not None and not test(value):
                found.append(_rule(f"{key}.{name}", value, f"{accepts}, or null for optimizer.{name}"))
        for name, options in (("optimizer", OPTIMIZERS), ("decay", DECAYS), ("batch_norm", BATCH_NORM_MODES),
                              ("optimizer_state", OPTIMIZER_STATES)):
            if getattr(phase, name) is not None:
                found += _choice(f"{key}.{name}", getattr(phase, name), options)
        if phase.var_list is not None:
            found += _patterns(f"{key}.var_list", phase.var_list)
        if optimizer_cfg is not None:
            found += check_schedule({name: (key, phase[name]) if phase[name] is not None else
                                     ("optimizer", optimizer_cfg[name]) for name in PHASE_OPTIMIZER_KEYS})
            if phase.optimizer_state == "keep" and index:
                before = train_cfg.phases[index - 1].optimizer or optimizer_cfg.name
                if (phase.optimizer or optimizer_cfg.name) != before:
                    found.append(_rule(f"{key}.optimizer_state", "keep", "'reset' when the phase changes optimizer",
                                       f"The previous phase uses {before!r}: another optimizer's state cannot be "
                                       "kept. Use the same optimizer, or optimizer_state=reset."))
    if names and train_cfg.epochs is not None:
        found.append(f"Config key 'train.epochs' is {train_cfg.epochs:g}, but train.phases is set too, and each phase "
                     "has a length of its own. Set train.epochs=null and give the phases their lengths in epochs "
                     "(train.phases.N.epochs), or leave train.phases empty to train one phase of train.epochs.")
    if not names and train_cfg.steps is None and train_cfg.epochs is None:
        found.append(_rule("train.steps", None, "an integer > 0 (it may be null only with train.phases or "
                           "train.epochs)"))
    lengths = [phase.steps for phase in train_cfg.phases]
    if names and not found and train_cfg.steps is not None and None not in lengths and sum(lengths) != train_cfg.steps:
        found.append(f"Config key 'train.steps' is {train_cfg.steps}, but train.phases add up to {sum(lengths)} steps; "
                     f"set train.steps={sum(lengths)} or null (the run's length) or change the phases' steps.")
    return found


ONNX_PACKAGES = ("tf2onnx", "onnxruntime")  # the onnx extra (pyproject.toml): what export.onnx needs
ONNX_INSTALL_HINT = 'pip install "finetune[onnx]"'


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found, not imported: a plugin's or a converter's import is not free)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_packages(modules: Iterable[str]) -> list[str]:
    """Those of ``modules`` that cannot be imported."""
    return [module for module in modules if not installed(module)]


def check_export(export_cfg: Any) -> list[str]:
    """``export``: the input type, the parity check's image count and tolerance, the TFLite quantization and
    its accuracy check, and the packages an ONNX export needs."""
    problems = check_section("export", export_cfg)
    if export_cfg.tflite_quantization != "none" and not export_cfg.tflite:
        problems.append(_rule("export.tflite_quantization", export_cfg.tflite_quantization, "'none' while "
                              "export.tflite is false", "The quantized model is written beside the float model.tflite "
                              "and compared with it: set export.tflite=true too."))
    if export_cfg.tflite_io != "float" and export_cfg.tflite_quantization != "int8":
        problems.append(_rule("export.tflite_io", export_cfg.tflite_io, "'float' unless export.tflite_quantization is "
                              "'int8'", "Only a full-integer model takes and gives integers."))
    missing = missing_packages(ONNX_PACKAGES) if export_cfg.onnx else []
    if missing:
        problems.append(f"Config key 'export.onnx' is true, but {' and '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not installed. Install the onnx extra: "
                        f"{ONNX_INSTALL_HINT} (or pip install tf2onnx onnxruntime), or set export.onnx=false.")
    return problems


TTA_ACCEPTS = f"a preset ({', '.join(TTA_PRESETS)}) or a list of views and presets"
TTA_NAMES = (f"Views: {', '.join(TTA_VIEWS)}, {TTA_CROP_PREFIX}P (the central P% of each side, P a whole number "
             f"from 1 to 99: {TTA_CROP_PREFIX}87); presets: "
             + "; ".join(f"{name} ({', '.join(views)})" for name, views in TTA_PRESETS.items()) + ".")


def check_eval(eval_cfg: Any) -> list[str]:
    """``eval.tta``: a preset, or a list of views and presets that names no view twice."""
    spec = eval_cfg.tta
    shown = OmegaConf.to_container(spec) if isinstance(spec, ListConfig) else spec
    if spec is not None and not isinstance(spec, (str, list, ListConfig)):
        return [_rule("eval.tta", shown, TTA_ACCEPTS, TTA_NAMES)]
    try:
        views = tta_views(spec)
    except ValueError as error:
        entry = error.args[0]
        near = difflib.get_close_matches(str(entry), [*TTA_VIEWS, *TTA_PRESETS, f"{TTA_CROP_PREFIX}87"],
                                         n=2, cutoff=0.6)
        hint = f"{entry!r} is neither a view nor a preset." + (f" Did you mean {' or '.join(near)}?" if near else "")
        return [_rule("eval.tta", shown, TTA_ACCEPTS, f"{hint} {TTA_NAMES}")]
    twice = sorted({view for view in views if views.count(view) > 1})
    if twice:
        return [_rule("eval.tta", shown, "a list that names each view once (a preset names its views)",
                      f"It names {', '.join(twice)} more than once, which would weigh it more in the average.")]
    return []


def check_export_tta(cfg: DictConfig) -> list[str]:
    """``export.tta`` needs views to average (``eval.tta``)."""
    try:
        views = tta_views(cfg.eval.tta)
    except (ValueError, TypeError):
        return []  # eval.tta's own message says what is wrong
    if cfg.export.tta and not views:
        return [_rule("export.tta", True, "false while eval.tta is empty", "The TTA graph averages the views of "
                      "eval.tta: set them too (e.g. eval.tta=flips), or leave export.tta false.")]
    return []


def check_head(head_cfg: HeadConfig) -> list[str]:
    """``head``: decays, and ``head.layers`` not empty, each layer of a known type with usable sizes,
    padding, activation and dropout rate."""
    problems = check_section("head", head_cfg)
    if not head_cfg.layers:
        problems.append("Config key 'head.layers' is empty: the head needs at least one layer, e.g. head=pool_dense.")
    for index, layer in enumerate(head_cfg.layers):
        where = f"head.layers[{index}]"
        problems += _choice(f"{where}.type", layer.type, LAYER_TYPES)
        for key in ("filters", "units", "stride"):
            value = getattr(layer, key)
            if value is not None and value <= 0:
                problems.append(_rule(f"{where}.{key}", value, "null or an integer > 0",
                                      "null means one per class" if key != "stride" else ""))
        for key in ("kernel_size", "depth_multiplier"):
            if getattr(layer, key) <= 0:
                problems.append(_rule(f"{where}.{key}", getattr(layer, key), "an integer > 0"))
        problems += _choice(f"{where}.padding", layer.padding, PADDINGS)
        if layer.activation is not None:
            problems += [p + " The last layer must output logits (activation null): the pipeline adds the softmax."
                         for p in _choice(f"{where}.activation", layer.activation, ACTIVATIONS)]
        elif layer.type == "activation":
            problems.append(_rule(f"{where}.activation", None, f"one of {', '.join(ACTIVATIONS)} for a layer of "
                                                               "type 'activation'"))
        if not 0.0 <= layer.rate < 1.0:
            problems.append(_rule(f"{where}.rate", layer.rate, "a fraction in [0, 1) (of units dropped)"))
    return problems


def check_optimized_metric(cfg: DictConfig) -> list[str]:
    """``optimized_metric`` names a number that every run writes to metrics.json."""
    path = cfg.optimized_metric
    section, _, rest = str(path).partition(".")
    allowed = METRIC_SECTIONS.get(section, ())
    if section in ("val", "test") and rest.startswith("tta.") and rest[len("tta."):] in SPLIT_METRICS:
        try:
            has_tta = bool(tta_views(cfg.eval.tta))
        except (ValueError, TypeError):
            has_tta = True  # eval.tta's own message says what is wrong
        if not has_tta:
            return [_rule("optimized_metric", path, "a metric this run writes", "eval.tta is empty, so metrics.json "
                          "has no tta numbers: set eval.tta (e.g. eval.tta=flips), or use "
                          f"{section}.{rest[len('tta.'):]}.")]
        rest = rest[len("tta."):]
    if section in METRIC_SECTIONS and (allowed is None or (rest in allowed if allowed else not rest)):
        if section == "export" and not exports(cfg):
            return [_rule("optimized_metric", path, "a metric this run writes", "the run does not export "
                          "(export.enabled is false, or null in a cross-validation fold), so metrics.json has no "
                          "export section.")]
        if section == "test" and cfg.data.split.test == 0:
            return [_rule("optimized_metric", path, "a metric this run writes", "data.split.test is 0, so there "
                                                                              "is no test split; use val.*.")]
        return []
    examples = [f"{s}.{k}" for s, keys in METRIC_SECTIONS.items() if keys for k in keys]
    examples += [s for s, keys in METRIC_SECTIONS.items() if keys == ()] + ["export.parity.frozen_logits",
                                                                            "val.tta.accuracy (with eval.tta)"]
    return [_rule("optimized_metric", path, "a dotted path to a number in metrics.json, one of "
                                            f"{', '.join(examples)}", "The sweep returns it as its objective.")]


def unknown_keys(node: Any, schema: Any, path: str = "") -> list[tuple[str, list[str]]]:
    """``(dotted key, valid keys there)`` for every key of ``node`` that ``schema`` does not define."""
    found: list[tuple[str, list[str]]] = []
    if isinstance(schema, list) and isinstance(node, ListConfig):
        for index in range(len(node)):
            found += unknown_keys(node._get_node(index), schema[0], f"{path}[{index}]")
    elif dataclasses.is_dataclass(schema) and isinstance(node, DictConfig):
        fields = schema_fields(schema)
        for key in node.keys():
            child = f"{path}.{key}" if path else str(key)
            if key not in fields:
                found.append((child, list(fields)))
            else:
                found += unknown_keys(node._get_node(key), field_schema(fields[key]), child)
    return found


def _leaves(node: Any, path: str) -> list[str]:
    """The dotted keys of every leaf under ``node`` (``path`` itself for a leaf)."""
    if isinstance(node, DictConfig) and len(node):
        return [leaf for key in node.keys() for leaf in _leaves(node._get_node(key), f"{path}.{key}")]
    return [path]


def check_schema(cfg: DictConfig) -> list[str]:
    """Keys the schema does not know (``+foo=1``, a misspelt ``+`` override), except in free-form slots."""
    problems = []
    for key, valid in unknown_keys(cfg, Config):
        parent, _, name = key.rpartition(".")
        near = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
        suggestion = f"Did you mean {' or '.join(near)}?" if near else f"Valid keys there: {', '.join(valid)}."
        typed = OmegaConf.select(cfg, key, throw_on_missing=False)
        problems.append(
            f"Config key '{', '.join(_leaves(typed, key))}' is not in the schema (finetune/config.py): "
            f"{parent or 'the top level'} has no key {name!r}. {suggestion} Fix the spelling, or drop the "
            "override (a leading '+' adds a key the schema lacks; only backbone.params takes free-form keys)."
        )
    return problems


def check_missing(cfg: DictConfig) -> list[str]:
    """Keys still ``???``: the experiment needs them from the command line."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if not missing:
        return []
    # train.phases[0].name -> train.phases.0.name, as Hydra takes it
    override = re.sub(r"\[(\d+)\]", r".\1", missing[0])
    return [f"Config key(s) {', '.join(missing)} must be set (they are '???'), e.g. on the command line: "
            f"python -m finetune ... {override}=VALUE"]


# Each section's own checker, in the order of the schema.
SECTION_CHECKS: dict[str, Callable[[Any], list[str]]] = {
    "backbone": check_backbone, "head": check_head, "data": check_data, "restore": check_restore,
    "optimizer": check_optimizer, "train": check_train, "eval": check_eval, "export": check_export,
}


def problems(cfg: DictConfig) -> list[str]:
    """Every problem of ``cfg``, one paragraph each; empty when the config is usable.

    Keys left ``???`` are reported alone: the other checks would read them."""
    found = check_missing(cfg)
    if found:
        return check_schema(cfg) + found
    found = check_schema(cfg)
    try:
        for section, check in SECTION_CHECKS.items():
            found += check(cfg[section])
        found += check_phases(cfg.train, cfg.optimizer)
        found += check_export_tta(cfg)
        found += check_optimized_metric(cfg)
        found += _choice("resume", cfg.resume, RESUME_POLICIES, "'auto' resumes the run directory's own checkpoints "
                         "when they were written under the same config; 'never' refuses to start over them; 'must' "
                         "fails when there are none; 'accept_data_change' resumes like 'auto' even when the examples "
                         "changed (recorded in run.json).")
    except OmegaConfBaseException as error:  # an interpolation that does not resolve, say
        found.append(f"Config key '{getattr(error, 'full_key', '?')}' cannot be read: {error}")
    return found


def validate(cfg: DictConfig) -> None:
    """Raise one FinetuneError listing every problem of ``cfg`` (see :func:`problems`); return if none."""
    found = problems(cfg)
    if found:
        header = f"The configuration has {len(found)} problems:\n\n" if len(found) > 1 else ""
        raise FinetuneError(header + "\n\n".join(found))


def raise_problems(found: list[str]) -> None:
    """FinetuneError holding ``found``, one paragraph each (for a single section's checker)."""
    if found:
        raise FinetuneError("\n\n".join(found))
