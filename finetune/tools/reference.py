"""``reference``: every configuration key, its type, default and meaning, read from the schema.

The schema is :mod:`finetune.config`: one dataclass per section, a comment above or beside each field.
This command renders them as Markdown (``docs/configuration.md`` is its output, checked by a test), so
the reference can never disagree with the code. It imports no TensorFlow.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import tokenize
import typing
from pathlib import Path
from typing import Any

HELP = "print every configuration key with its type, default and meaning (Markdown), from the schema"
HEADER = """\
# Configuration reference

Every key of `python -m finetune`, section by section, with its type, default and meaning. Set a key
in an experiment file or on the command line (`train.steps=100`); a key of a list of sections takes
an index (`head.layers.0.units=64`) or a YAML list (`"train.phases=[{name: a, steps: 10}]"`).
Config groups (`backbone=`, `head=`, `data=`, `optimizer=`, `experiment=`) choose whole sections
from the shipped YAML files, which then set these keys.

*Written by `python -m finetune.tools reference --write docs/configuration.md` from `finetune/config.py`;
a test fails when the two disagree. Do not edit by hand.*
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("reference", help=HELP, description=HELP + ".")
    parser.add_argument("--write", metavar="FILE", help="write the reference to FILE instead of printing it")
    return parser


def run(args: argparse.Namespace) -> int:
    from finetune.files import write_text_atomically

    text = render()
    if args.write:
        write_text_atomically(Path(args.write), text)
        print(f"Wrote {args.write}")
    else:
        print(text, end="")
    return 0


def field_comments(schema: type) -> dict[str, str]:
    """Each field's comment in the class's source: the comment lines right above it and the one beside it."""
    source = inspect.getsource(schema)
    comments: dict[int, str] = {}  # line (1-based, in ``source``) -> its comment's text
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = node.lineno
            above = []
            while line - 1 - len(above) >= 1 and lines[line - 2 - len(above)].strip().startswith("#"):
                above.insert(0, comments[line - 1 - len(above)])
            beside = comments.get(node.end_lineno, "") if not lines[node.end_lineno - 1].strip().startswith("#") else ""
            found[node.target.id] = " ".join(part for part in [*above, beside] if part)
    return found


def type_name(hint: Any) -> str:
    """A type hint as a reader would say it: ``int``, ``float or null``, ``list of str``, ``section``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        inner = [arg for arg in args if arg is not type(None)]
        return " or ".join(type_name(arg) for arg in inner) + " or null"
    if origin in (list, typing.List):
        return f"list of {type_name(args[0])}s" if args and dataclasses.is_dataclass(args[0]) else \
            f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, typing.Dict):
        return "mapping"
    if dataclasses.is_dataclass(hint):
        return "section"
    return getattr(hint, "__name__", str(hint))


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return ""
    if dataclasses.is_dataclass(value):
        return "(see below)"
    if isinstance(value, str) and value == "???":
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value}" if not isinstance(value, str) else (value or '""')


def sections(schema: type, prefix: str = "") -> list[tuple[str, type]]:
    """``(dotted section, dataclass)`` of the schema and every section below it, depth first."""
    from finetune.config import field_schema, schema_fields

    found = [(prefix, schema)]
    for name, hint in schema_fields(schema).items():
        inner = field_schema(hint)
        if isinstance(inner, list) and dataclasses.is_dataclass(inner[0]):
            found += sections(inner[0], f"{prefix}{name}[].")
        elif dataclasses.is_dataclass(inner):
            found += sections(inner, f"{prefix}{name}.")
    return found


def render() -> str:
    """The whole reference, as Markdown."""
    from finetune.config import Config, field_schema, schema_fields

    parts = [HEADER]
    for prefix, schema in sections(Config):
        title = prefix.rstrip(".") or "top level"
        # A dataclass without a docstring of its own gets one from dataclasses: its signature.
        doc = inspect.getdoc(schema) if not (schema.__doc__ or "").startswith(schema.__name__ + "(") else ""
        parts.append(f"\n## `{title}`\n")
        if doc:
            parts.append(f"\n{' '.join(doc.split())}\n")
        parts.append("\n| key | type | default | meaning |\n|---|---|---|---|\n")
        comments, hints = field_comments(schema), schema_fields(schema)
        for field in dataclasses.fields(schema):
            if dataclasses.is_dataclass(field_schema(hints[field.name])):
                continue  # a section of its own, below
            meaning = comments.get(field.name, "").replace("|", "\\|")
            default = default_text(field).replace("|", "\\|")
            parts.append(f"| `{prefix}{field.name}` | {type_name(hints[field.name])} | `{default}` | {meaning} |\n")
    return "".join(parts)
