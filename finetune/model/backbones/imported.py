"""Backbones without Python code: a ``.meta`` graph with its checkpoint, or a frozen ``.pb``.

Both become one frozen GraphDef, cut at ``backbone.cut``: the file first passes the op gate
(:func:`finetune.op_gate.check_ops`; ``allow_unsafe_ops`` lets other ops through with a warning);
then what the cut needs of the ``.meta`` graph is imported, its checkpoint restored through a Saver
we build (never the file's own), and its variables frozen to constants (the same freezing the
export step uses). Each tower then imports that GraphDef with ``input_map`` onto its own,
preprocessed pixels, which gives a dynamic batch size whatever the file was saved with. The
backbone is constant: only the head trains, as in TF's image-retraining tool.

``backbone.params``: ``meta`` (meta_graph) or ``graph`` (frozen_graph) path; ``checkpoint``
(meta_graph; default: the ``.meta`` path without its suffix); ``input``, the image tensor of the
file (default ``input:0``); ``preprocessing``: inception | vgg | none.
"""
from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

from finetune import freezing, graphs
from finetune.weights.readers import resolve_checkpoint
from finetune.model.backbones.preprocessing import PREPROCESSORS
from finetune.compat import tf, tf1
from finetune.config import BackboneConfig
from finetune.errors import FinetuneError, closest
from finetune.model.backbones.registry import BackboneInfo, get_backbone, register
from finetune.vocab import IMPORTED_BACKBONE_FILES

log = logging.getLogger(__name__)

IMPORTED_BACKBONES = tuple(IMPORTED_BACKBONE_FILES)  # meta_graph, frozen_graph
IMPORT_SCOPE = "backbone"  # name scope of the imported nodes, inside each tower
# Parameters besides the files (finetune.vocab.IMPORTED_BACKBONE_FILES, no default): the image tensor of the
# file, and the normalisation applied before it (a key of finetune.model.backbones.preprocessing.PREPROCESSORS).
_COMMON_PARAMS = {"input": "input:0", "preprocessing": "inception"}


def _check_params(name: str, params: dict[str, Any]) -> None:
    valid = get_backbone(name).default_params
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise FinetuneError(f"Backbone {name!r} has no parameter(s) {unknown} (config key 'backbone.params'); "
                            f"valid: {sorted(valid)}.")
    if params.get("preprocessing", "inception") not in PREPROCESSORS:
        raise FinetuneError(f"Config key 'backbone.params.preprocessing' is {params['preprocessing']!r}; "
                            f"valid: {sorted(PREPROCESSORS)}.")


def _require_tensors(graph_def: tf1.GraphDef, wanted: dict[str, str], source: str) -> None:
    """Each ``{config key: tensor name}`` must be a tensor of ``graph_def``; else name the key and the closest."""
    graph = graphs.import_graph(graph_def)
    names = [out.name for op in graph.get_operations() for out in op.outputs]
    for key, name in wanted.items():
        if name not in names:
            raise FinetuneError(f"Config key '{key}' is {name!r}, but {source} has no such tensor. "
                                f"Closest tensors: {closest(name, names)}. "
                                f"List them all with `python -m finetune.tools inspect {source} --ops`.")


def _existing_file(params: dict[str, Any], key: str, what: str) -> str:
    path = params.get(key)
    if not path or not Path(path).is_file():
        raise FinetuneError(f"Config key 'backbone.params.{key}' is {path!r}: give the path of an existing {what}.")
    return str(path)


def load_source(name: str, params: dict[str, Any], allow_unsafe: bool = False) -> tuple[tf1.GraphDef, str]:
    """(the file's whole graph, its path): the .meta graph (variables still variables) or the .pb, through
    the op gate (``allow_unsafe``: config key ``allow_unsafe_ops``)."""
    _check_params(name, params)
    if name == "meta_graph":
        source = _existing_file(params, "meta", ".meta file")
        return graphs.load_meta_graph_def(source, "Config key 'backbone.params.meta'", allow_unsafe), source
    source = _existing_file(params, "graph", "frozen .pb")
    return graphs.load_graph_def(source, allow_unsafe), source


@functools.lru_cache(maxsize=4)
def _load_cut_graph(name: str, params_json: str, cut: str, allow_unsafe: bool) -> tuple[tf1.GraphDef, str, str]:
    """(frozen GraphDef from the input to the cut, input tensor, cut tensor); cached per config."""
    params = json.loads(params_json)
    input_name = graphs.tensor_name(params.get("input", "input:0"))
    cut_name = graphs.tensor_name(cut)
    source_def, source = load_source(name, params, allow_unsafe)
    _require_tensors(source_def, {"backbone.cut": cut_name, "backbone.params.input": input_name}, source)
    if name == "meta_graph":
        checkpoint = resolve_checkpoint(params.get("checkpoint") or source[: -len(".meta")],
                                        key="backbone.params.checkpoint")
        graph_def = freezing.freeze_meta_graph(source_def, checkpoint, [graphs.node_name(cut_name)], source,
                                             allow_unsafe)
    else:
        graph_def = tf1.graph_util.extract_sub_graph(source_def, [graphs.node_name(cut_name)])
    log.info("Imported backbone from %s: %d nodes up to %s", source, len(graph_def.node), cut_name)
    return graph_def, input_name, cut_name


def build_imported_to_cut(pixels: tf.Tensor, backbone_cfg: BackboneConfig, allow_unsafe: bool = False) -> tf.Tensor:
    """Preprocess ``pixels`` and run the imported backbone on them; returns the cut tensor.

    ``allow_unsafe`` (config key ``allow_unsafe_ops``) lets ops outside the gate's list through."""
    params = dict(backbone_cfg.params)
    graph_def, input_name, cut_name = _load_cut_graph(backbone_cfg.name, json.dumps(params, sort_keys=True),
                                                      backbone_cfg.cut, allow_unsafe)
    images = PREPROCESSORS[params.get("preprocessing", "inception")](pixels)
    (cut,) = tf1.import_graph_def(graph_def, input_map={input_name: images}, return_elements=[cut_name],
                                  name=IMPORT_SCOPE)
    return cut


for _name, _files in IMPORTED_BACKBONE_FILES.items():
    register(BackboneInfo(
        name=_name, build=None, scope=IMPORT_SCOPE, default_image_size=224, preprocessing="inception", end_points=(),
        classifier_scope="", default_cut="", default_params={**dict.fromkeys(_files), **_COMMON_PARAMS},
        build_to_cut=build_imported_to_cut, file_params=_files,
    ))
