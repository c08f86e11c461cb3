"""One registry for every backbone, in the style of TF-Slim's ``nets_factory`` and timm.

A backbone family module defines its network and calls :func:`register` with a
:class:`BackboneInfo` per public name. Everything else asks the registry.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from finetune.errors import FinetuneError, closest

# network_fn(images) -> (logits, end_points), images already preprocessed.
NetworkFn = Callable[[Any], "tuple[Any, dict[str, Any]]"]


@dataclass(frozen=True)
class BackboneInfo:
    """What the pipeline needs to know about a backbone, besides how to build it."""

    name: str
    # build(images, num_classes, is_training, **params) -> (logits, end_points); None for a backbone read
    # from a graph file, which has no network function of its own
    build: Optional[Callable[..., tuple[Any, dict[str, Any]]]]
    scope: str  # top variable scope, e.g. "MobilenetV1"
    default_image_size: int
    preprocessing: str  # key of finetune.model.backbones.preprocessing.PREPROCESSORS
    end_points: tuple[str, ...]  # in network order
    classifier_scope: str  # variables of the original classifier live below this
    default_cut: str
    default_params: dict[str, Any] = field(default_factory=dict)
    # A backbone read from a graph file: build_to_cut(pixels, backbone_cfg, allow_unsafe_ops) -> the cut
    # tensor (it preprocesses the pixels itself), and its parameters that name files.
    build_to_cut: Optional[Callable[..., Any]] = None
    file_params: tuple[str, ...] = ()

    @property
    def imported(self) -> bool:
        """Read from a graph file (``.meta``, ``.pb``) rather than built by Python code."""
        return self.build_to_cut is not None


_REGISTRY: dict[str, BackboneInfo] = {}


def register(info: BackboneInfo) -> BackboneInfo:
    if info.name in _REGISTRY:
        raise ValueError(f"backbone {info.name!r} is registered twice")
    _REGISTRY[info.name] = info
    return info


def registered() -> dict[str, BackboneInfo]:
    """Every registered backbone by name (a copy)."""
    return dict(_REGISTRY)


def list_backbones(imported: bool = True) -> list[str]:
    """Every registered name; ``imported=False`` leaves out the backbones read from graph files."""
    return sorted(name for name, info in _REGISTRY.items() if imported or not info.imported)


def get_backbone(name: str) -> BackboneInfo:
    """The registered backbone ``name``; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FinetuneError(
            f"Unknown backbone {name!r} (config key 'backbone.name'). Did you mean one of "
            f"{closest(name, _REGISTRY)}? Registered backbones: {', '.join(list_backbones())}."
        ) from None


def get_network_fn(name: str, num_classes: int, is_training: bool = False, **params: Any) -> NetworkFn:
    """``network_fn(images) -> (logits, end_points)`` for the backbone ``name``.

    ``num_classes=0`` drops the original classifier: ``logits`` is then the pooled feature map.
    Unknown ``params`` fail here, naming the parameters the backbone accepts.
    """
    info = get_backbone(name)
    if info.build is None:
        raise FinetuneError(f"Backbone {name!r} is read from a graph file and has no network function; build it "
                            "with finetune.model.towers.build_backbone_to_cut.")
    unknown = sorted(set(params) - set(info.default_params))
    if unknown:
        raise FinetuneError(
            f"Backbone {name!r} has no parameter(s) {unknown} (config key 'backbone.params'). "
            f"Valid parameters and their defaults: {info.default_params}."
        )
    merged = {**info.default_params, **params}

    @functools.wraps(info.build)
    def network_fn(images: Any) -> tuple[Any, dict[str, Any]]:
        return info.build(images, num_classes=num_classes, is_training=is_training, **merged)

    network_fn.default_image_size = info.default_image_size  # type: ignore[attr-defined]
    return network_fn
