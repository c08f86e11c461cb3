"""``endpoints``: where a backbone can be cut: end-point names and tensor names, with shapes.

Without ``--all`` a registered backbone lists its end points. With ``--all`` it lists every tensor on
the path from the image to the end points: the tensors a cut can usefully name. Weights, variable
bookkeeping, initialisers, regularisers, unused BatchNorm side outputs and integer shape arithmetic
are left out. An imported graph (``meta_graph``, ``frozen_graph``) has no end points: it lists the
floating-point tensors that depend on its input, and with ``--all`` every tensor of the file. The
configured ``backbone.cut`` is marked with ``*`` in either mode, listed even where the mode would
leave it out. An imported graph passes the op gate first (``--allow-unsafe-ops`` or the override
``allow_unsafe_ops=true`` let other ops through, as for ``python -m finetune``).
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from finetune.pure_ops import ALLOW_UNSAFE_OPS_HELP

HELP = "list a backbone's cut points (end points and tensor names with shapes)"

# Training-only parts of an imported .meta graph: they depend on the input too, but nobody cuts there.
_GRADIENT_SCOPE = re.compile(r"^gradients(_\d+)?/")


def _is_gradient(op: Any) -> bool:
    return bool(_GRADIENT_SCOPE.match(op.name))


@dataclass(frozen=True)
class Row:
    """One listed tensor: its end-point names (comma-separated, or empty), tensor name and printed shape."""

    end_points: str
    tensor: str
    shape: str


@dataclass(frozen=True)
class Listing:
    """What the command prints: a title, the rows, the configured cut as a tensor name (None: unset/invalid)."""

    title: str
    rows: list[Row]
    cut_tensor: str | None
    footer: str
    cut_error: str | None = None  # set when backbone.cut names nothing: the command then fails after the list


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "endpoints", help=HELP,
        description=HELP + ". Takes the same overrides as `python -m finetune`, e.g. "
                           "`endpoints backbone=mobilenet_v2 backbone.params.depth_multiplier=1.4`.")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (backbone=NAME, ...)")
    parser.add_argument("--all", action="store_true",
                        help="every tensor a cut can name: for a registered backbone, every tensor on the path "
                             "from the image to the end points; for an imported graph, every tensor of the file")
    parser.add_argument("--allow-unsafe-ops", action="store_true", help=ALLOW_UNSAFE_OPS_HELP)
    return parser


def format_shape(shape: Any) -> str:
    """``[None, 7, 7, 1024]`` (None: a dimension unknown until run time), or ``<unknown>`` for an unknown rank."""
    if shape.rank is None:
        return "<unknown>"
    return str(shape.as_list())


def _downstream_ops(sources: Iterable[Any], skip: Callable[[Any], bool] = lambda op: False) -> set:
    """Every op that reads, directly or not, an output of a ``sources`` op (the sources included)."""
    seen, pending = set(), list(sources)
    while pending:
        op = pending.pop()
        if op in seen or skip(op):
            continue
        seen.add(op)
        pending.extend(consumer for out in op.outputs for consumer in out.consumers())
    return seen


def _upstream_tensors(sinks: Iterable[Any]) -> set:
    """The ``sinks`` and every tensor they are computed from (data inputs only, not control dependencies)."""
    tensors, seen_ops, pending = set(sinks), set(), [t.op for t in sinks]
    while pending:
        op = pending.pop()
        if op in seen_ops:
            continue
        seen_ops.add(op)
        tensors.update(op.inputs)
        pending.extend(t.op for t in op.inputs)
    return tensors


def _with_cut(entries: list[tuple[str, Any]], cut: Any, graph: Any) -> list[Row]:
    """Rows for ``(end-point names, tensor)`` entries, plus the cut if the mode left it out, in graph order."""
    if cut is not None and all(tensor.name != cut.name for _, tensor in entries):
        position = {op: index for index, op in enumerate(graph.get_operations())}
        # A stable sort: the entries are already in network order, the cut goes where it is computed.
        entries = sorted(entries + [("", cut)], key=lambda entry: (position[entry[1].op], entry[1].value_index))
    return [Row(names, tensor.name, format_shape(tensor.shape)) for names, tensor in entries]


def _finish(title: str, rows: list[Row], cut: str | None, cut_tensor: Any, what_not: str, names: list[str]) -> Listing:
    """The listing with its footer: what ``*`` marks, or why nothing is marked."""
    from finetune.errors import closest

    if cut is None:
        return Listing(title, rows, None, "backbone.cut is not set: pick a tensor above, e.g. backbone.cut=NAME:0.")
    if cut_tensor is None:
        error = (f"Config key 'backbone.cut' is {cut!r}, which is {what_not}, so "
                 f"`python -m finetune` would stop there. Closest names: {', '.join(closest(cut, names))}. "
                 "Pick one of the names listed above.")
        return Listing(title, rows, None, "", error)
    how = "backbone.cut=END_POINT or backbone.cut=TENSOR:0" if any(row.end_points for row in rows) else \
        "backbone.cut=TENSOR:0"
    return Listing(title, rows, cut_tensor.name, f"* = backbone.cut ({cut}). Cut with {how}.")


def _build_registered(backbone_cfg: Any) -> tuple[Any, Any, list, dict]:
    """(graph, image placeholder, network outputs, end points) of a registered backbone, built at the root."""
    from finetune.compat import tf, tf1  # first: it makes tf_slim work on this TensorFlow
    from finetune.model.backbones import PREPROCESSORS, get_backbone, get_network_fn

    info = get_backbone(backbone_cfg.name)
    size = backbone_cfg.image_size
    with tf.Graph().as_default() as graph:
        pixels = tf1.placeholder(tf.float32, [None, size, size, 3], name="input")
        network_fn = get_network_fn(info.name, backbone_cfg.num_classes, False, **backbone_cfg.params)
        net, end_points = network_fn(PREPROCESSORS[info.preprocessing](pixels))
    return graph, pixels, [net, *end_points.values()], end_points


def _registered_listing(backbone_cfg: Any, show_all: bool) -> Listing:
    """End points (or, with ``show_all``, every tensor on the image -> end points path) of a registered backbone."""
    from finetune.model.backbones import get_backbone
    from finetune.errors import FinetuneError
    from finetune.model.towers import resolve_cut

    graph, pixels, outputs, end_points = _build_registered(backbone_cfg)
    try:
        cut_tensor = resolve_cut(backbone_cfg.cut, end_points, graph)
    except FinetuneError:
        cut_tensor = None
    title = f"{backbone_cfg.name}, image size {backbone_cfg.image_size}, params {dict(backbone_cfg.params)}"
    if show_all:
        names: dict[Any, list[str]] = {}
        for name, tensor in end_points.items():
            names.setdefault(tensor, []).append(name)
        scope = get_backbone(backbone_cfg.name).scope + "/"
        on_path, reads_image = _upstream_tensors(outputs), _downstream_ops([pixels.op])
        entries = [(", ".join(names.get(t, [])), t) for op in graph.get_operations()
                   if op in reads_image and op.name.startswith(scope)
                   for t in op.outputs if t in on_path and t.dtype.is_floating]
        title += (f": {len(entries)} tensors from the image to the end points (weights, initialisers and shape "
                  "arithmetic left out)")
    else:
        entries = list(end_points.items())
    every_name = [*end_points, *(t.name for op in graph.get_operations() for t in op.outputs)]
    return _finish(title, _with_cut(entries, cut_tensor, graph), backbone_cfg.cut, cut_tensor,
                   f"neither an end point nor a tensor of backbone {backbone_cfg.name!r}", every_name)


def _input_tensor(graph: Any, name: str, source: str) -> Any:
    """The image tensor ``backbone.params.input`` names; a wrong name lists the graph's placeholders."""
    from finetune.errors import FinetuneError, closest
    from finetune.graphs import tensor_name

    by_name = {t.name: t for op in graph.get_operations() for t in op.outputs}
    if tensor_name(name) in by_name:
        return by_name[tensor_name(name)]
    placeholders = [op.outputs[0].name for op in graph.get_operations() if op.type.startswith("Placeholder")]
    raise FinetuneError(
        f"Config key 'backbone.params.input' is {name!r}, but {source} has no such tensor. Its placeholders: "
        f"{', '.join(placeholders) or 'none'}; closest names: {', '.join(closest(tensor_name(name), by_name))}. "
        f"List its nodes with `python -m finetune.tools inspect {source} --ops`.")


def _imported_cut_candidates(graph: Any, image: Any) -> list:
    """Floating-point tensors computed from ``image`` alone, less side outputs nobody reads (graph order)."""
    reads_image = _downstream_ops([image.op], _is_gradient)
    # A tensor that also needs another placeholder (labels, a learning rate) cannot be computed from images.
    other_inputs = [op for op in graph.get_operations() if op.type == "Placeholder" and op is not image.op]
    needs_more = _downstream_ops(other_inputs, _is_gradient)
    return [t for op in graph.get_operations() if op in reads_image and op not in needs_more
            for t in op.outputs if t.dtype.is_floating
            and (t.value_index == 0 or any(not _is_gradient(c) for c in t.consumers()))]


def _imported_listing(backbone_cfg: Any, cut: str | None, show_all: bool, allow_unsafe: bool) -> Listing:
    """Tensors of an imported graph: those that depend on its input (floating point), or with ``show_all`` all."""
    from finetune.model.backbones.imported import load_source
    from finetune.graphs import import_graph, tensor_name

    params = dict(backbone_cfg.params)
    graph_def, source = load_source(backbone_cfg.name, params, allow_unsafe)
    graph = import_graph(graph_def)
    image = _input_tensor(graph, params.get("input") or "input:0", source)
    if show_all:
        tensors = [t for op in graph.get_operations() if op.type != "Const" for t in op.outputs]
    else:
        tensors = _imported_cut_candidates(graph, image)
    by_name = {t.name: t for op in graph.get_operations() for t in op.outputs}
    cut_tensor = by_name.get(tensor_name(cut)) if cut else None
    what = "every tensor" if show_all else f"{len(tensors)} floating-point tensors that depend on the input"
    title = (f"{backbone_cfg.name} {source}, input {image.name} {format_shape(image.shape)}, "
             f"image size {backbone_cfg.image_size}: {what}")
    rows = _with_cut([("", t) for t in tensors], cut_tensor, graph)
    return _finish(title, rows, cut, cut_tensor, f"not a tensor of {source}", list(by_name))


def build_listing(backbone_cfg: Any, show_all: bool, allow_unsafe: bool = False) -> Listing:
    """The listing for ``backbone_cfg`` (the composed config's ``backbone`` node); ``allow_unsafe`` lets an
    imported graph's ops outside the gate's list through."""
    import finetune.compat  # noqa: F401  (first: it makes tf_slim work on this TensorFlow)
    from omegaconf import OmegaConf

    from finetune.model.backbones import get_backbone
    from finetune.errors import FinetuneError

    missing = sorted(key for key in OmegaConf.missing_keys(backbone_cfg) if key != "backbone.cut")
    if missing:
        raise FinetuneError(f"Config key(s) {missing} must be set (they are '???') to list the backbone's tensors, "
                            f"e.g. python -m finetune.tools endpoints backbone={backbone_cfg.name} {missing[0]}=VALUE")
    cut = None if OmegaConf.is_missing(backbone_cfg, "cut") else backbone_cfg.cut
    if get_backbone(backbone_cfg.name).imported:
        return _imported_listing(backbone_cfg, cut, show_all, allow_unsafe)
    return _registered_listing(backbone_cfg, show_all)


def render(listing: Listing) -> list[str]:
    """The printed lines: title, header, one row per tensor (``*`` marks the cut), footer."""
    with_names = any(row.end_points for row in listing.rows)
    name_width = max([len(row.end_points) for row in listing.rows] + [len("end point")])
    tensor_width = max([len(row.tensor) for row in listing.rows] + [len("tensor")])
    name_header = f"{'end point':<{name_width}}  " if with_names else ""
    lines = [listing.title, f"  {name_header}{'tensor':<{tensor_width}}  shape"]
    for row in listing.rows:
        marker = "*" if row.tensor == listing.cut_tensor else " "
        name = f"{row.end_points:<{name_width}}  " if with_names else ""
        lines.append(f"{marker} {name}{row.tensor:<{tensor_width}}  {row.shape}")
    if listing.footer:
        lines.append(listing.footer)
    return lines


def run(args: argparse.Namespace) -> int:
    from finetune.config import compose_config
    from finetune.errors import FinetuneError

    cfg = compose_config(args.overrides)
    listing = build_listing(cfg.backbone, args.all, args.allow_unsafe_ops or cfg.allow_unsafe_ops)
    print("\n".join(render(listing)), flush=True)
    if listing.cut_error:
        raise FinetuneError(listing.cut_error)  # after the list, which holds the names to pick from
    return 0
