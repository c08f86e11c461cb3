"""Structured configs: the schema behind ``conf/``. A misspelt key or a wrong type fails in Hydra,
before TensorFlow starts. Each stage of the pipeline takes one of these slices, not the whole tree.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Quote, QuotedString
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from finetune.errors import FinetuneError

# conf/ of the repository, shipped in the package as finetune.conf (see pyproject.toml).
CONFIG_MODULE = "finetune.conf"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
# The override that adds folders to Hydra's config search path (after ours, as --config-dir does).
SEARCHPATH_KEY = "hydra.searchpath"
DIRECTION_RESOLVER = "finetune.direction"  # ${finetune.direction:METRIC}: minimize or maximize


@dataclass
class BackboneConfig:
    name: str = MISSING  # a registered backbone (finetune.model.backbones.list_backbones())
    image_size: int = 224  # square input side, pixels
    # Where the head attaches: an end-point name ("Conv2d_11_pointwise") or a tensor name
    # ("MobilenetV1/MobilenetV1/Conv2d_11_pointwise/Relu6:0").
    cut: str = MISSING
    num_classes: int = 0  # the original classifier's size; 0 drops it (the head replaces it)
    params: Dict[str, Any] = field(default_factory=dict)  # family parameters, e.g. depth_multiplier
    # BatchNorm of the backbone in training mode (batch statistics, moving averages updated).
    # Keep false when the backbone is frozen: its BatchNorm then uses the restored moving statistics.
    batch_norm_training: bool = False


@dataclass
class LayerConfig:
    """One head layer. ``filters``/``units`` left null mean "one per class"."""

    # conv2d | separable_conv2d | avg_pool | max_pool | global_avg_pool | dropout | batch_norm | activation |
    # flatten | dense
    type: str = MISSING
    filters: Optional[int] = None  # conv2d: output channels; null: one per class
    units: Optional[int] = None  # dense: outputs; null: one per class
    kernel_size: int = 3  # convolutions and pools: the window's side
    stride: Optional[int] = None  # convolutions: 1; pools: the window size (as in Keras)
    padding: str = "SAME"  # convolutions and pools: SAME | VALID
    activation: Optional[str] = None  # relu | relu6 | sigmoid | tanh | elu | softmax | null
    rate: float = 0.5  # dropout: fraction of units dropped while training
    depth_multiplier: int = 1  # separable_conv2d
    batch_norm: bool = False  # conv2d / separable_conv2d / dense: BatchNorm before the activation
    name: Optional[str] = None  # variable scope inside the head; default: type_index


@dataclass
class HeadConfig:
    """The new layers on top of the cut, in order; the last one outputs the logits (the pipeline adds the
    softmax)."""

    scope: str = "head"  # the variable scope of the head's variables (optimizer.var_list names it: head/)
    layers: List[LayerConfig] = field(default_factory=list)  # the layers, in order (head.layers[] below)
    weight_decay: float = 0.0  # L2 on head weights
    # Moving-average decay of head BatchNorm layers. 0.99 settles within a few hundred steps;
    # TF-Slim's 0.999 needs thousands, and evaluation before then uses unsettled statistics.
    batch_norm_decay: float = 0.99


@dataclass
class SplitConfig:
    """image_folder, and csv without a split column: the fractions of the files in each split, decided by
    a hash of each file's path (adding files never moves the others)."""

    train: float = 0.8  # the fraction trained on
    val: float = 0.1  # the fraction evaluated during and after training (model selection)
    test: float = 0.1  # the fraction evaluated once, at the end; 0: no test split


@dataclass
class SplitNamesConfig:
    """What each split is called in the data files: TFRecord shard names ``{prefix}_{name}_NNNNN-of-NNNNN``
    (TF-Slim's converters write ``train`` and ``validation``) and the values of a CSV's ``split`` column."""

    train: str = "train"  # the training split's name in the files
    val: str = "validation"  # the validation split's name in the files
    test: str = "test"  # the test split's name in the files


@dataclass
class AugmentConfig:
    """One ``data.augment`` entry, applied in order to training images only (never val/test), each draw
    seeded by train.seed and the image's place in the training sequence. A key left null takes the
    type's default (finetune.data.augment.DEFAULTS)."""

    # random_crop | flip_left_right | flip_up_down | brightness | contrast | saturation | hue | random_rotation
    type: str = MISSING
    probability: Optional[float] = None  # flips: the chance of flipping (default 0.5)
    # random_crop: a box covering a random fraction of the image's area within [min, max] (default
    # [0.08, 1.0]), resized back to the input size
    area: Optional[List[float]] = None
    # random_crop: the box's width/height within [min, max] (default [0.75, 1.333])
    aspect_ratio: Optional[List[float]] = None
    # brightness: the largest shift, in pixel values of [0, 255] (default 32);
    # hue: the largest shift, as a fraction of the colour circle in [0, 0.5] (default 0.05)
    max_delta: Optional[float] = None
    lower: Optional[float] = None  # contrast and saturation: the random factor's lower end (default 0.8)
    upper: Optional[float] = None  # contrast and saturation: the random factor's upper end (default 1.25)
    max_degrees: Optional[float] = None  # random_rotation: the largest angle either way (default 15)


@dataclass
class DataConfig:
    # Where the images come from: image_folder | tfrecord | csv
    name: str = "image_folder"
    # image_folder: root/<class_name>/*.jpg|*.png; null: the built-in demo dataset (generated once, cached).
    # tfrecord: the folder holding the shards and labels.txt. csv: the CSV file.
    root: Optional[str] = None
    # image_folder's layout: class_folders (root/<class>/..., split by data.split) | split_folders
    # (root/<split>/<class>/..., the splits as the folders say, named as data.split_names or val) | auto
    # (split_folders when root's folders are split names, else class_folders; never split names as classes).
    layout: str = "auto"
    split: SplitConfig = field(default_factory=SplitConfig)
    # k-fold cross-validation over the training and validation examples: null (off) or k >= 2. Fold data.fold
    # validates, the other k - 1 train; the test split is the same in every fold (finetune/data/folds.py).
    folds: Optional[int] = None
    fold: int = 0  # which fold validates, in [0, data.folds): sweep data.fold='range(5)' for all of them
    split_names: SplitNamesConfig = field(default_factory=SplitNamesConfig)  # tfrecord shards, csv split column
    record_prefix: Optional[str] = None  # tfrecord: the {prefix} of the shard names; null: any
    extensions: List[str] = field(default_factory=lambda: [".jpg", ".jpeg", ".png"])  # image_folder: image files
    batch_size: int = 32  # images per training step
    eval_batch_size: int = 64  # images per evaluation step (no effect on the numbers)
    augment: List[AugmentConfig] = field(default_factory=list)  # training-image augmentations, in order (below)
    # How training draws its examples: natural (the split shuffled, epoch after epoch) | balanced (every class
    # equally often, whatever its size; seeded by train.seed like the rest).
    sampling: str = "natural"
    num_parallel_calls: int = -1  # parallel image decoders; -1: tf.data's AUTOTUNE
    # Decoded, resized images of a split are kept in memory after the first pass when they fit in this
    # many MiB (so are the training split's bottleneck features); 0: never.
    cache_memory_mb: int = 1024
    # Examples the training shuffle draws from; null: the whole split (files: their names; tfrecord: records).
    shuffle_buffer: Optional[int] = None
    # Images with more pixels (width x height, read from the file's header) are skipped as bad files.
    max_pixels: int = 50_000_000
    # Unreadable, truncated or non-image files are skipped and listed in the run directory (bad_files.json);
    # the run stops when more than this fraction of a split is bad.
    max_bad_fraction: float = 0.01
    # The bottleneck cache: features at backbone.cut computed once per image (under paths.cache_dir/features)
    # for phases that train nothing below the cut: auto (when possible, else say why) | off | require.
    feature_cache: str = "auto"


@dataclass
class RenameRule:
    """One ``restore.rename`` entry: a checkpoint name matching ``pattern`` at its start has that part
    replaced by ``replacement`` (``\\1`` refers to groups). The rule is documented in finetune.weights.restore."""

    pattern: str = MISSING  # a regex matched at the start of checkpoint names
    replacement: str = ""  # what replaces the matched part


@dataclass
class RestoreConfig:
    # A checkpoint prefix, a directory holding checkpoints (its latest), a frozen graph (.pb), an .npz
    # of named arrays, "demo" (the built-in demo backbone) or zoo:NAME (a published TF-Slim checkpoint,
    # downloaded once; docs/backbones.md lists the names).
    # null: nothing is restored, every variable starts from its initializer.
    checkpoint: Optional[str] = None
    # Regexes matched at the start of variable names (re.match). Empty include: exactly the backbone
    # variables the cut tensor depends on, BatchNorm moving statistics included.
    include: List[str] = field(default_factory=list)
    exclude: List[str] = field(default_factory=list)  # regexes: variables never restored (they are initialised)
    # Checkpoint names -> graph names, applied in order, e.g. [{pattern: "Old/", replacement: "MobilenetV1/"}].
    rename: List[RenameRule] = field(default_factory=list)
    # A variable to restore that the checkpoint lacks: "error" (stop, naming every offender) or "init"
    # (initialise it instead; listed in the report).
    on_missing: str = "error"
    on_shape_mismatch: str = "error"  # one the checkpoint holds with another shape: "error" or "init", likewise


@dataclass
class LearningRateMultiplier:
    """One ``lr_multipliers`` entry: trained variables whose names match ``pattern`` (re.match) learn at
    ``factor`` times the phase's learning rate. The first matching entry wins; unmatched variables: 1x."""

    pattern: str = MISSING  # a regex matched at the start of trained variable names
    factor: float = MISSING  # the multiple of the learning rate they learn at


@dataclass
class OptimizerConfig:
    """The optimizer of a run without phases, and every phase's default."""

    name: str = "momentum"  # sgd | momentum | adam | rmsprop
    learning_rate: float = 0.01  # the rate at the start of each phase (after warmup)
    momentum: float = 0.9  # momentum and rmsprop
    # The learning-rate schedule, counted from each phase's first step (after its warmup):
    # constant | exponential | cosine (to zero) | polynomial | piecewise
    decay: str = "constant"
    warmup_steps: int = 0  # linear warmup from 0 to learning_rate over a phase's first steps
    decay_rate: float = 0.1  # exponential: the rate is multiplied by this every decay_steps
    decay_steps: Optional[int] = None  # exponential: null = the phase's steps after warmup
    staircase: bool = False  # exponential: decay in whole steps of decay_steps
    end_learning_rate: float = 0.0  # polynomial: the rate at the phase's last step
    power: float = 1.0  # polynomial: 1 is linear
    boundaries: List[int] = field(default_factory=list)  # piecewise: steps into the phase (after warmup)
    factors: List[float] = field(default_factory=list)  # piecewise: learning_rate multiples, one more than boundaries
    clip_gradient_norm: float = 0.0  # clip the gradients' global norm to this; 0: no clipping
    # Per-scope learning rates, e.g. [{pattern: "MobilenetV1/", factor: 0.1}]: the backbone at 0.1x.
    lr_multipliers: List[LearningRateMultiplier] = field(default_factory=list)
    # Regexes (re.match) over trainable variable names; the head scope by default.
    var_list: List[str] = field(default_factory=lambda: ["head/"])


# The optimizer keys a phase may override (null in the phase: the run's optimizer.KEY).
PHASE_OPTIMIZER_KEYS = ("learning_rate", "momentum", "decay", "warmup_steps", "decay_rate", "decay_steps",
                        "staircase", "end_learning_rate", "power", "boundaries", "factors", "clip_gradient_norm",
                        "lr_multipliers", "var_list")


@dataclass
class PhaseConfig:
    """One entry of ``train.phases``. A key left null takes the run's own value: ``optimizer.KEY`` for the
    keys in :data:`PHASE_OPTIMIZER_KEYS`, ``optimizer.name``, ``backbone.batch_norm_training``."""

    name: str = MISSING  # names the phase in logs and in its optimizer's slot variables
    steps: Optional[int] = None  # the phase's length in steps; set this or epochs
    epochs: Optional[float] = None  # the phase's length in epochs of the training split, rounded up to whole steps
    var_list: Optional[List[str]] = None  # regexes (re.match) over trainable variable names
    optimizer: Optional[str] = None  # sgd | momentum | adam | rmsprop
    # reset: the phase's optimizer starts with fresh state (slots, Adam's moments); keep: it continues the
    # previous phase's optimizer state (same optimizer name required).
    optimizer_state: str = "reset"
    learning_rate: Optional[float] = None  # as optimizer.learning_rate, for this phase
    momentum: Optional[float] = None  # as optimizer.momentum, for this phase
    decay: Optional[str] = None  # as optimizer.decay: constant | exponential | cosine | polynomial | piecewise
    warmup_steps: Optional[int] = None  # as optimizer.warmup_steps, for this phase
    decay_rate: Optional[float] = None  # as optimizer.decay_rate, for this phase
    decay_steps: Optional[int] = None  # as optimizer.decay_steps, for this phase
    staircase: Optional[bool] = None  # as optimizer.staircase, for this phase
    end_learning_rate: Optional[float] = None  # as optimizer.end_learning_rate, for this phase
    power: Optional[float] = None  # as optimizer.power, for this phase
    boundaries: Optional[List[int]] = None  # as optimizer.boundaries, for this phase
    factors: Optional[List[float]] = None  # as optimizer.factors, for this phase
    clip_gradient_norm: Optional[float] = None  # as optimizer.clip_gradient_norm, for this phase
    lr_multipliers: Optional[List[LearningRateMultiplier]] = None  # as optimizer.lr_multipliers, for this phase
    batch_norm: Optional[str] = None  # the backbone's BatchNorm: frozen (inference mode) | train


@dataclass
class EarlyStoppingConfig:
    # A metric of each evaluation (val.accuracy, val.balanced_accuracy, val.macro_f1, val.loss,
    # val.top_k_accuracy); null: no early stopping.
    metric: Optional[str] = None
    patience: int = 5  # evaluations without an improvement of more than min_delta before the run stops
    min_delta: float = 0.0  # the smallest change that counts as an improvement


@dataclass
class TrainConfig:
    # The run's length in steps. With train.phases: null (the phases' sum) or equal to it. Not used when
    # train.epochs is set.
    steps: Optional[int] = 500
    # The run's length in epochs of the training split, rounded up to whole steps (as a phase's epochs); set,
    # it wins over train.steps (the log says so). null: train.steps. Not with train.phases (each has its own).
    epochs: Optional[float] = None
    seed: int = 0  # everything random derives from it: initialisation, data order, augmentation, dropout
    log_every: int = 25  # scalar summaries and progress-bar refresh
    histogram_every: int = 100  # steps between histogram summaries of the trained (and a few frozen) weights
    checkpoint_every: int = 250  # steps between checkpoints (and at the end of each phase)
    # Evaluations of the validation split during training: "epoch" (each time the steps trained complete
    # another epoch of the training split), an integer N (every N steps), or null (none: once, after training).
    # With "epoch" or N the last step is evaluated too.
    eval_every: Optional[Any] = "epoch"
    # Phases run in order, each with its own var_list, optimizer, learning rate and BatchNorm mode.
    # Empty: one phase made of optimizer.*, train.epochs or train.steps and backbone.batch_norm_training.
    phases: List[PhaseConfig] = field(default_factory=list)
    label_smoothing: float = 0.0  # of the one-hot training targets (0: none)
    # Weights of the training loss per class: null (all 1), balanced (images / (classes x the class's images),
    # from the training split), or a mapping {class name: weight} (classes left out: 1). Evaluation is unweighted.
    class_weights: Optional[Any] = None
    # Exponential moving average of the trained weights, used for evaluation and export (as TF-Slim's
    # --moving_average_decay); null: off.
    moving_average_decay: Optional[float] = None
    top_k: int = 5  # evaluations report top-k accuracy (k capped at the class count)
    # Keep the best checkpoint by this metric of each evaluation (val.accuracy, val.balanced_accuracy,
    # val.macro_f1, val.loss, val.top_k_accuracy; needs eval_every) beside the latest ones; export then uses
    # it. null: off.
    keep_best: Optional[str] = None
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # On a GPU: float16 convolutions and matrix products in training (TF's automatic mixed precision graph
    # rewrite), float32 variables, softmax and loss, dynamic loss scaling; final evaluation and export in float32.
    # On a CPU it changes nothing but the loss scaling.
    mixed_precision: bool = False
    # Where the run trains: auto (a GPU when TensorFlow sees one, else the CPU; the log says which) | cpu |
    # gpu (stop before training, saying what is missing, when TensorFlow sees no GPU).
    device: str = "auto"
    # TensorFlow's deterministic kernels (same config, same numbers, on one machine); XLA stays off. On a GPU a
    # frozen BatchNorm that gradients flow through gets a gradient built from plain ops (the fused kernel's has
    # no deterministic GPU implementation). false: TensorFlow's fastest kernels, results vary run to run.
    deterministic: bool = True


@dataclass
class EvalConfig:
    """The final evaluation beyond its plain pass (which train.top_k sets; train.keep_best and
    train.early_stopping read the plain numbers of the evaluations during training)."""

    # Test-time augmentation: the final evaluation also averages each image's probabilities over these views
    # (metrics.json: SPLIT.tta beside the plain numbers). A preset (flips: identity, flip_left_right;
    # all_flips: those, flip_up_down, rotate_180) or a list of views and presets, views being identity |
    # flip_left_right | flip_up_down | rotate_180 | center_crop_P (the central P% of each side, P in 1-99,
    # resized back to the input size). Empty: off.
    tta: Any = field(default_factory=list)


@dataclass
class ExportConfig:
    # Freeze and export the trained model into the run directory's export/. null: yes, except in a fold of a
    # cross-validation (data.folds set), whose model is one of K estimates, not one to deploy.
    enabled: Optional[bool] = None
    # What the exported graphs take: "float" (input:0, float32 [N, H, W, 3] RGB in [0, 255]) or
    # "image_bytes" (image_bytes:0, string [N] of JPEG/PNG files, decoded and resized in the graph).
    input: str = "float"
    saved_model: bool = True  # also export/saved_model/ (tag serve, signature serving_default)
    tflite: bool = False  # also export/model.tflite (float32; always takes float pixels)
    # A quantized TFLite model beside model.tflite (needs export.tflite), export/model_<mode>.tflite: none, dynamic
    # (int8 weights, float activations), float16 (float16 weights) or int8 (full-integer, calibrated on training
    # images). Checked by its accuracy on val and test (export.max_accuracy_drop), not by parity.
    tflite_quantization: str = "none"
    tflite_io: str = "float"  # int8: what the model takes and gives, float (converted inside) | int8 | uint8
    # int8: a scale per output channel of each weight (TFLite's default); false: one per tensor, a smaller file
    # that may lose more accuracy (the accuracy check still applies).
    tflite_per_channel: bool = True
    calibration_images: int = 256  # int8: training images (drawn with train.seed) that measure the activation ranges
    # The largest accuracy a quantized model may lose against the float model, on val and test together; more
    # fails the run (the float export is kept). A model predicting one class for every image fails too.
    max_accuracy_drop: float = 0.02
    onnx: bool = False  # also export/model.onnx (tf2onnx; takes float pixels; needs pip install "finetune[onnx]")
    parity_images: int = 16  # validation images every exported format is checked on
    parity_tolerance: float = 1e-4  # max |session - exported| allowed, for every format and output
    # Also export/tta_graph.pb: the model over eval.tta's views (the same input; probabilities:0 the mean of the
    # views' probabilities, logits:0 the log of that mean), parity-checked like the others. Needs eval.tta.
    tta: bool = False


@dataclass
class PathsConfig:
    # Where the demo assets, downloaded zoo checkpoints and the feature cache are kept.
    cache_dir: str = "${oc.env:FINETUNE_CACHE,${oc.env:HOME}/.cache/finetune}"


@dataclass
class Config:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    # What a run does with its run directory's own checkpoints: auto (resume them when they were written
    # under the same config and the data gives the same classes and examples), never (refuse to start over
    # them), must (fail when there are none), accept_data_change (as auto, but resume on examples added,
    # removed or moved on purpose; run.json records the change; other classes are always refused).
    resume: str = "auto"
    # The number a sweep optimises: a dotted path into metrics.json (val.accuracy, val.loss, test.accuracy, ...).
    optimized_metric: str = "val.accuracy"
    # Graph files from outside (backbone=frozen_graph/meta_graph, a .pb weight source) may hold only pure
    # computation ops; true lets ops that touch files, processes, the network or Python run. Trusted files only.
    allow_unsafe_ops: bool = False


FREE_FORM = "free-form"  # a Dict[str, Any] field of the schema: any key goes (backbone.params)


def schema_fields(schema: type) -> dict[str, Any]:
    """A schema dataclass's fields: name -> type hint."""
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def field_schema(hint: Any) -> Any:
    """What a field of that type hint holds: its dataclass (Optional unwrapped), ``[dataclass]`` for a
    list of them, :data:`FREE_FORM` for a dict, None for a plain value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        return field_schema(next(a for a in args if a is not type(None)))
    if origin in (list, typing.List) and args:
        return [field_schema(args[0])]
    if origin in (dict, typing.Dict):
        return FREE_FORM
    return hint if dataclasses.is_dataclass(hint) else None


def optimization_direction(metric: str) -> str:
    """The search direction of ``optimized_metric``: ``minimize`` for a loss (``val.loss``), else ``maximize``."""
    return "minimize" if str(metric).rsplit(".", 1)[-1].endswith("loss") else "maximize"


def exports(cfg: DictConfig) -> bool:
    """Whether the run exports its model (``export.enabled``; null: unless it is a cross-validation fold)."""
    return cfg.data.folds is None if cfg.export.enabled is None else bool(cfg.export.enabled)


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore (``conf/config.yaml`` names it in its defaults) and register
    the resolver ``${finetune.direction:METRIC}`` (:func:`optimization_direction`) that
    ``conf/hparams_search/optuna.yaml`` reads. Safe to call twice."""
    ConfigStore.instance().store(name="config_schema", node=Config)
    if not OmegaConf.has_resolver(DIRECTION_RESOLVER):
        OmegaConf.register_new_resolver(DIRECTION_RESOLVER, optimization_direction)


def with_config_dir(overrides: Sequence[str], config_dir: str | os.PathLike | None) -> list[str]:
    """``overrides`` with ``config_dir`` added to Hydra's search path, the way ``--config-dir`` adds it.

    The folder goes first in a ``hydra.searchpath=[...]`` override (merged into one the user gave), so
    its groups join ours: ``experiment/my_exp.yaml`` in it answers ``experiment=my_exp``.
    """
    overrides = list(overrides)
    if config_dir is None:
        return overrides
    folder = os.path.abspath(os.fspath(config_dir))
    if not os.path.isdir(folder):
        raise FinetuneError(f"--config-dir {config_dir}: no such folder ({folder}). Name a folder that holds "
                            "your config groups (experiment/, head/, ...); `python -m finetune.tools init DIR` "
                            "writes a starter one.")
    entries = [f"file://{folder}"]
    parser = OverridesParser.create()
    for index, text in enumerate(overrides):
        try:
            override = parser.parse_override(text)
        except HydraException as error:
            raise FinetuneError(f"Bad configuration override {text!r}: {error}") from None
        if override.get_key_element() == SEARCHPATH_KEY and isinstance(override.value(), list):
            entries += override.value()
            del overrides[index]
            break
    quoted = ",".join(QuotedString(text=str(entry), quote=Quote.single).with_quotes() for entry in entries)
    return [f"{SEARCHPATH_KEY}=[{quoted}]", *overrides]


def compose_config(overrides: Sequence[str], config_dir: str | os.PathLike | None = None) -> DictConfig:
    """The config ``python -m finetune [--config-dir DIR] OVERRIDES`` gets, for tools, scripts and tests
    (no run directory). ``hydra.searchpath=[file://DIR]`` among the overrides works too."""
    register_configs()
    try:
        overrides = with_config_dir(overrides, config_dir)
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise FinetuneError(f"Bad configuration {list(overrides)}: {error}") from None
