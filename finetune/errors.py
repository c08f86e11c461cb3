"""The one error type users see: a short paragraph naming the key or file and the fix; the exit statuses.

Exit statuses of ``python -m finetune`` and ``python -m finetune.tools``: 0 done; 2 (:data:`USER_ERROR`)
bad input, a :class:`FinetuneError` (config, files, data, a full disk); 1 (:data:`INTERNAL_ERROR`) any
other exception, a bug or an environment problem, told in one paragraph (:func:`internal_error`);
75 (:class:`RunStopped`) stopped on a signal, resumable.
"""
from __future__ import annotations

import contextlib
import difflib
import errno
import os
from typing import Callable, Iterable, Iterator, Optional

USER_ERROR = 2  # as argparse and most Unix tools exit on a bad command line
INTERNAL_ERROR = 1
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class FinetuneError(Exception):
    """Bad input. The entry points print the message (no traceback) and exit with ``exit_status``."""

    exit_status = USER_ERROR
    # True for a run that ended early keeping its checkpoints (a signal, a NaN, a full disk): the command line
    # adds the exact command that resumes it, run directory included (finetune/__main__.py).
    resumable = False


class ResumableError(FinetuneError):
    """A run ended early (a NaN, a full disk) keeping its last good checkpoint, from which it can be resumed."""

    resumable = True


class RunStopped(FinetuneError):
    """Training stopped early on a signal after writing a checkpoint; the same command in the same run directory
    resumes it (the command line adds that command, ``hydra.run.dir`` included).
    Its exit status (75, EX_TEMPFAIL: "try again") lets a cluster launcher tell it from a failure."""

    exit_status = 75
    resumable = True

    def __init__(self, signal_name: str, step: int, checkpoint: str) -> None:
        self.step, self.checkpoint = step, checkpoint
        # Passes the signal on to the handler it had before training (a cluster launcher's, which requeues
        # the job); None when there was none. Set by RunState.stop_on_signals.
        self.hand_over: Optional[Callable[[], None]] = None
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


def internal_error(error: BaseException, debug_hint: str) -> str:
    """The one paragraph printed for an unexpected exception (exit status 1); ``debug_hint`` says how
    to see the traceback (``hydra.verbose=true``, ``--debug``)."""
    return (f"internal error: {type(error).__name__}: {first_line(error)}; this is a bug or an environment "
            f"problem; rerun with {debug_hint} to see the traceback.")


# What the C library says for the two errnos: TensorFlow's file system layer puts it somewhere in its message
# (not always on the first line), and a write error re-raised by a library may keep only the text.
DISK_FULL_TEXTS = tuple(os.strerror(number).lower() for number in DISK_FULL_ERRNOS)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or while handling, each once."""
    seen: set[int] = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_op_error(error: BaseException) -> bool:
    # tf.errors.OpError by name: this module loads before TensorFlow, and must not load it
    return any(cls.__name__ == "OpError" and cls.__module__.startswith("tensorflow") for cls in type(error).__mro__)


def _disk_full_line(error: BaseException) -> Optional[str]:
    """The line of one error's message that says the disk or quota is full, or None."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return error.strerror or os.strerror(error.errno)
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if any(words in line.lower() for words in DISK_FULL_TEXTS):
            return line
    # TensorFlow's file writers report a failed write as ResourceExhaustedError (as they do memory: "OOM")
    if type(error).__name__ == "ResourceExhaustedError":
        return next((line for line in lines if "no space" in line.lower() or "quota" in line.lower()), None)
    return None


def disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error in its chain (``raise ... from``, or raised while handling another), says
    the disk (or the quota) is full: an OSError with errno ENOSPC or EDQUOT, or an OSError or TensorFlow error
    (any tf.errors type) whose message says so on any line. Memory exhaustion ("OOM") is not a full disk."""
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS:
            return True
        if (isinstance(link, OSError) or _is_op_error(link)) and _disk_full_line(link) is not None:
            return True
    return False


def disk_full_error(error: BaseException, where: str, kept: Optional[str]) -> ResumableError:
    """The error for a full disk while writing under ``where``; ``kept`` names the last complete checkpoint, from
    which a run in the same run directory resumes (the command line adds the command that does it)."""
    file = next((link.filename for link in _chain(error) if getattr(link, "filename", None)), None)
    said = next((line for line in map(_disk_full_line, _chain(error)) if line), None) or first_line(error)
    resume = (f"The last complete checkpoint, {kept}, is kept: free some space and run it again in the same run "
              "directory to resume from it." if kept else
              "No checkpoint was complete yet: free some space and run it again.")
    return ResumableError(f"The disk is full: writing {file or where} failed ({said}). {resume}")


def write_failed(error: BaseException, path: str, fix: str) -> FinetuneError:
    """FinetuneError for a file that could not be written at ``path`` (a full disk, a read-only or foreign
    folder): what happened and ``fix`` (how to write it elsewhere, e.g. "pass --output ELSEWHERE")."""
    if disk_full(error):
        said = next((line for line in map(_disk_full_line, _chain(error)) if line), None) or first_line(error)
        return FinetuneError(f"The disk is full: writing {path} failed ({said}); nothing was written there. Free "
                             f"some space, or {fix}.")
    reason = getattr(error, "strerror", None) or first_line(error)
    return FinetuneError(f"Cannot write {path}: {reason}; nothing was written there. Make the folder writable, or "
                         f"{fix}.")


@contextlib.contextmanager
def cache_errors(cache_dir: str) -> Iterator[None]:
    """An OSError while the cache is filled (a file where a folder should be, no permission, a full
    disk) as a FinetuneError naming ``paths.cache_dir``."""
    try:
        yield
    except OSError as error:
        raise FinetuneError(
            f"The cache folder paths.cache_dir={cache_dir!r} cannot be written ({error.filename or cache_dir}: "
            f"{error.strerror or first_line(error)}). Point FINETUNE_CACHE or paths.cache_dir=... at a folder you "
            "can write, with room for the demo assets and downloaded weights.") from None
