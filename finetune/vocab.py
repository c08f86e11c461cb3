"""The project's closed vocabularies: every name a config key accepts, in one TF-free module.

:mod:`finetune.validate` checks configs against these names before TensorFlow starts; the modules
that implement them (optimizers, schedules, head layers, data sources, ...) take them through
:func:`implementations`, which fails at import time when the two disagree. Also the spellings of
the special values of path-like keys (``restore.checkpoint=demo``, ``zoo:NAME``) and the
parameters of the imported backbones that name files: the resolver, the sweep check and the
backbone registry read them here, so none of them re-declares another's.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, TypeVar

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
DECAYS = ("constant", "exponential", "cosine", "polynomial", "piecewise")
OPTIMIZER_STATES = ("reset", "keep")  # train.phases[i].optimizer_state
LAYER_TYPES = ("conv2d", "separable_conv2d", "avg_pool", "max_pool", "global_avg_pool", "dropout", "batch_norm",
               "activation", "flatten", "dense")
WINDOWED_LAYERS = ("conv2d", "separable_conv2d", "avg_pool", "max_pool")  # those with kernel_size and stride
ACTIVATIONS = ("relu", "relu6", "elu", "sigmoid", "tanh")
PADDINGS = ("SAME", "VALID")
EXPORT_INPUTS = ("float", "image_bytes")
TFLITE_QUANTIZATIONS = ("none", "dynamic", "float16", "int8")  # export.tflite_quantization
TFLITE_IO_TYPES = ("float", "int8", "uint8")  # export.tflite_io
BATCH_NORM_MODES = ("frozen", "train")  # train.phases[i].batch_norm: the backbone's BatchNorm
RESUME_POLICIES = ("auto", "never", "must", "accept_data_change")
RESTORE_POLICIES = ("error", "init")  # restore.on_missing / restore.on_shape_mismatch
# train.keep_best and train.early_stopping.metric: what each evaluation measures, and which way is better.
EVALUATION_METRICS = {"val.accuracy": "max", "val.balanced_accuracy": "max", "val.macro_f1": "max",
                      "val.top_k_accuracy": "max", "val.loss": "min"}
EVERY_EPOCH = "epoch"  # train.eval_every: evaluate each time the steps trained complete another epoch
AUTOTUNE = -1  # data.num_parallel_calls: tf.data picks the parallelism
DATA_SOURCES = ("image_folder", "tfrecord", "csv")  # data.name
DATA_LAYOUTS = ("auto", "class_folders", "split_folders")  # data.layout (image_folder)
AUGMENT_TYPES = ("random_crop", "flip_left_right", "flip_up_down", "brightness", "contrast", "saturation", "hue",
                 "random_rotation")
FEATURE_CACHE_MODES = ("auto", "off", "require")  # data.feature_cache
# eval.tta: the views of test-time augmentation (finetune.model.tta builds them), a central crop named
# center_crop_P (the central P percent of each side, P a whole number from 1 to 99), and the presets, each
# a list of views.
TTA_VIEWS = ("identity", "flip_left_right", "flip_up_down", "rotate_180")
TTA_CROP_PREFIX = "center_crop_"
TTA_PRESETS = {"flips": ("identity", "flip_left_right"),
               "all_flips": ("identity", "flip_left_right", "flip_up_down", "rotate_180")}
DEVICES = ("auto", "cpu", "gpu")  # train.device
SAMPLINGS = ("natural", "balanced")  # data.sampling
# optimized_metric: a dotted path into metrics.json; these sections always hold numbers after a run.
SPLIT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "loss", "top_k_accuracy")
METRIC_SECTIONS = {"train": ("accuracy", "loss"), "val": SPLIT_METRICS, "test": SPLIT_METRICS,
                   "steps": (), "timings": ("images_per_second",), "export": None}  # None: any sub-path (parity, ...)

# restore.checkpoint: the built-in demo backbone, and the prefix of a model-zoo name (zoo:mobilenet_v1_1.0_224).
DEMO_CHECKPOINT = "demo"
ZOO_PREFIX = "zoo:"
# backbone.name: every backbone the registry (finetune.model.backbones) registers, named here without
# importing it (its modules import TensorFlow) so a wrong name is refused before TensorFlow loads. The
# registry checks it against this list when it is imported (tests/test_backbones.py too).
BACKBONES = ("inception_v1", "inception_v2", "inception_v3", "mobilenet_v1", "mobilenet_v2", "resnet_v1_50",
             "resnet_v1_101", "resnet_v1_152", "resnet_v2_50", "resnet_v2_101", "resnet_v2_152", "vgg_16", "vgg_19",
             "meta_graph", "frozen_graph",
             "test_mobilenet_v1")  # the first three blocks of MobileNet v1: the tests' tiny profile
# The backbones read from a graph file (finetune.model.backbones.imported) -> their parameters that name files.
IMPORTED_BACKBONE_FILES = {"meta_graph": ("meta", "checkpoint"), "frozen_graph": ("graph",)}



def crop_percent(view: str) -> Optional[int]:
    """P of a view ``center_crop_P`` (P a whole number from 1 to 99), else None."""
    digits = view[len(TTA_CROP_PREFIX):] if view.startswith(TTA_CROP_PREFIX) else ""
    if not (digits.isdigit() and digits == digits.lstrip("0") and 1 <= int(digits) <= 99):
        return None
    return int(digits)


def tta_views(spec: Any) -> tuple[str, ...]:
    """The views ``eval.tta`` names, in order: a preset's name, or a list of views and presets (each preset
    replaced by its views). Empty for null or an empty list. ValueError naming the first entry that is
    neither (the validation says more)."""
    if spec is None:
        return ()
    entries = [spec] if isinstance(spec, str) else list(spec)
    views: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(entry)
        if entry in TTA_PRESETS:
            views += TTA_PRESETS[entry]
        elif entry in TTA_VIEWS or crop_percent(entry) is not None:
            views.append(entry)
        else:
            raise ValueError(entry)
    return tuple(views)


Implementation = TypeVar("Implementation")


def implementations(names: Iterable[str], implemented: Mapping[str, Implementation],
                    what: str) -> dict[str, Implementation]:
    """``implemented`` checked against the valid ``names`` of ``what``, for the module that implements them.

    Raises RuntimeError at import time when the two disagree: a name valid here but with no
    implementation would pass validation and then fail mid-run."""
    names = tuple(names)
    if set(names) != set(implemented):
        raise RuntimeError(f"{what}: finetune.vocab lists {sorted(names)} but {sorted(implemented)} are "
                           "implemented; keep the two in step.")
    return {name: implemented[name] for name in names}
