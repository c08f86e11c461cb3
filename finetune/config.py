"""Structured configs: the schema behind ``conf/``. A misspelt key or a wrong type fails in Hydra,
before TensorFlow starts. Each stage of the pipeline takes one of these slices, not the whole tree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class BackboneConfig:
    name: str = MISSING  # a registered backbone (finetune.backbones.list_backbones())
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

    type: str = MISSING  # conv2d | separable_conv2d | avg_pool | max_pool | global_avg_pool | dropout
    #                      | batch_norm | activation | flatten | dense
    filters: Optional[int] = None
    units: Optional[int] = None
    kernel_size: int = 3
    stride: Optional[int] = None  # convolutions: 1; pools: the window size (as in Keras)
    padding: str = "SAME"
    activation: Optional[str] = None  # relu | relu6 | sigmoid | tanh | elu | softmax | null
    rate: float = 0.5  # dropout: fraction of units dropped while training
    depth_multiplier: int = 1  # separable_conv2d
    batch_norm: bool = False  # conv2d / separable_conv2d / dense: BatchNorm before the activation
    name: Optional[str] = None  # variable scope inside the head; default: type_index


@dataclass
class HeadConfig:
    scope: str = "head"
    layers: List[LayerConfig] = field(default_factory=list)
    weight_decay: float = 0.0  # L2 on head weights
    # Moving-average decay of head BatchNorm layers. 0.99 settles within a few hundred steps;
    # TF-Slim's 0.999 needs thousands, and evaluation before then uses unsettled statistics.
    batch_norm_decay: float = 0.99


@dataclass
class SplitConfig:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1


@dataclass
class DataConfig:
    name: str = "image_folder"
    # root/<class_name>/*.jpg|*.png. null: the built-in demo dataset (generated once, cached).
    root: Optional[str] = None
    split: SplitConfig = field(default_factory=SplitConfig)
    extensions: List[str] = field(default_factory=lambda: [".jpg", ".jpeg", ".png"])
    batch_size: int = 32
    eval_batch_size: int = 64
    random_flip: bool = False
    num_parallel_calls: int = 2


@dataclass
class RestoreConfig:
    # A checkpoint prefix, a directory holding checkpoints, or "demo" (the built-in demo backbone).
    # null: nothing is restored, every variable starts from its initializer.
    checkpoint: Optional[str] = None
    # Regexes matched at the start of variable names (re.match). Empty include: exactly the backbone
    # variables the cut tensor depends on, BatchNorm moving statistics included.
    include: List[str] = field(default_factory=list)
    exclude: List[str] = field(default_factory=list)


@dataclass
class OptimizerConfig:
    name: str = "momentum"  # sgd | momentum | adam | rmsprop
    learning_rate: float = 0.01
    momentum: float = 0.9  # momentum and rmsprop
    decay: str = "constant"  # constant | cosine (to zero over train.steps)
    # Regexes (re.match) over trainable variable names; the head scope by default.
    var_list: List[str] = field(default_factory=lambda: ["head/"])


@dataclass
class TrainConfig:
    steps: int = 500
    seed: int = 0
    log_every: int = 25  # scalar summaries and progress-bar refresh
    histogram_every: int = 100
    checkpoint_every: int = 250
    eval_every: int = 0  # 0: evaluate once, after training


@dataclass
class ExportConfig:
    enabled: bool = True
    parity_tolerance: float = 1e-4  # max |session - frozen| allowed on a validation batch


@dataclass
class PathsConfig:
    cache_dir: str = "${oc.env:FINETUNE_CACHE,${oc.env:HOME}/.cache/finetune}"


@dataclass
class Config:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore; ``conf/config.yaml`` names it in its defaults."""
    store = ConfigStore.instance()
    ConfigStore.instance().store(name="config_schema", node=Config)
