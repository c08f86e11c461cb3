"""The one variable-selection rule, shared by ``restore.include/exclude`` and ``optimizer.var_list``.

A variable is selected when its name (without ``:0``) matches at least one ``include`` pattern
and no ``exclude`` pattern. Patterns are Python regular expressions matched at the *start* of the
name (``re.match``). End a scope with ``/`` so that ``MobilenetV1/Conv2d_1/`` does not also
select ``MobilenetV1/Conv2d_10/``; add ``$`` to pin a whole name.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from finetune.errors import FinetuneError


def variable_name(name: str) -> str:
    """``"a/b:0"`` -> ``"a/b"``; op names pass through."""
    return name[:-2] if name.endswith(":0") else name


def compile_patterns(patterns: Sequence[str], key: str) -> list[re.Pattern]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise FinetuneError(
                f"Config key '{key}' holds an invalid regular expression {pattern!r}: {error}. "
                "Patterns are Python regexes matched at the start of variable names, e.g. 'head/'."
            ) from None
    return compiled


def select(names: Iterable[str], include: Sequence[str], exclude: Sequence[str] = (),
           key: str = "include") -> list[str]:
    """The names (in their given order) that match an ``include`` pattern and no ``exclude`` pattern."""
    wanted = compile_patterns(include, key)
    unwanted = compile_patterns(exclude, key)
    chosen = []
    for name in names:
        bare = variable_name(name)
        if any(p.match(bare) for p in wanted) and not any(p.match(bare) for p in unwanted):
            chosen.append(name)
    return chosen
