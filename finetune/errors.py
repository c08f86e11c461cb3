"""The one error type users see: a short paragraph naming the key or file and the fix."""
from __future__ import annotations

import difflib
from typing import Iterable


class FinetuneError(Exception):
    """Bad input. The entry points print the message (no traceback) and exit with status 1."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (TensorFlow's run to many), or its type when empty."""
    text = (getattr(error, "message", None) or str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates that look most like ``name`` (for 'did you mean' lists)."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    return found or sorted(candidates)[:n]
