"""Backbone registry: ``get_network_fn(name, num_classes, is_training, **params)``.

Importing this package registers every backbone family module listed below.
"""
from finetune.model.backbones import imported, mobilenet_v1, mobilenet_v2, slim_nets  # noqa: F401  (each registers itself)
from finetune.model.backbones.preprocessing import PREPROCESSORS
from finetune.model.backbones.registry import (BackboneInfo, get_backbone, get_network_fn, list_backbones, register,
                                                registered)
from finetune.vocab import BACKBONES, implementations

# backbone.name is checked against vocab.BACKBONES before TensorFlow loads: a family registered here but not
# listed there would be refused, one listed but not registered would pass validation and fail mid-run.
implementations(BACKBONES, registered(), "backbone.name")

__all__ = ["BackboneInfo", "PREPROCESSORS", "get_backbone", "get_network_fn", "list_backbones", "register"]
