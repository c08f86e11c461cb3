"""The one error type users see: a short paragraph naming the key or file and the fix."""
from __future__ import annotations

import difflib
from typing import Iterable


class FinetuneError(Exception):
    """Bad input. The entry points print the message (no traceback) and exit with ``exit_status``."""

    exit_status = 1


class RunStopped(FinetuneError):
    """Training stopped early on a signal after writing a checkpoint; the same command resumes it.
    Its exit status (75, EX_TEMPFAIL: "try again") lets a cluster launcher tell it from a failure."""

    exit_status = 75

    def __init__(self, signal_name: str, step: int, checkpoint: str) -> None:
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"Stopped by {signal_name} after step {step}; checkpoint {checkpoint} written. Run the "
                         "same command in the same run directory to resume from it.")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (TensorFlow's run to many), or its type when empty."""
    text = (getattr(error, "message", None) or str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates that look most like ``name`` (for 'did you mean' lists)."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    return found or sorted(candidates)[:n]
