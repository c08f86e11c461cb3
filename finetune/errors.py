"""The one error type users see: a short paragraph naming the key or file and the fix."""
from __future__ import annotations

import difflib
from typing import Iterable


class FinetuneError(Exception):
    """Bad input. The entry points print the message (no traceback) and exit with status 1."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates that look most like ``name`` (for 'did you mean' lists)."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    return found or sorted(candidates)[:n]
