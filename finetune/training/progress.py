"""Training progress: a tqdm bar on a terminal, one log line every ``train.log_every`` steps otherwise
(a log file on a cluster), where a bar's redraws would pile up into one enormous line.

Both show the mean loss and accuracy of the last ``train.log_every`` steps (:class:`RecentSteps`): the
window metrics.json's ``train`` and the end-of-run table's train row average, so the last progress shown
and the table agree. While a bar is drawn, log records printed to the console go through ``tqdm.write``
(tqdm's logging redirection), so a log line never lands on the bar's line; log files are untouched.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import deque
from typing import Optional

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)
# The loggers whose console handlers print while training: ours (through the root) and TensorFlow's own.
CONSOLE_LOGGERS = ("", "tensorflow")


class RecentSteps:
    """The last ``size`` training steps' loss, accuracy and seconds."""

    def __init__(self, size: int) -> None:
        self.steps: deque[tuple[float, float, float]] = deque(maxlen=max(1, size))

    def add(self, loss: float, accuracy: float, seconds: float) -> None:
        self.steps.append((loss, accuracy, seconds))

    def means(self) -> tuple[float, float]:
        """The mean loss and accuracy over the window."""
        losses, accuracies, _ = zip(*self.steps)
        return float(np.mean(losses)), float(np.mean(accuracies))

    def images_per_second(self, batch_size: int) -> float:
        """Of the window's train op runs themselves (as in metrics.json's timings)."""
        return len(self.steps) * batch_size / max(sum(seconds for _, _, seconds in self.steps), 1e-9)

    def label(self) -> str:
        count = len(self.steps)
        return f"last {count} step{'s' if count != 1 else ''}"


class LogProgress:
    """Progress as one log line every ``every`` steps and at the last, for output that is not a terminal:
    step/total, the mean loss and accuracy of the last ``every`` steps (this process's), images per second
    of those steps' training (as in metrics.json) and the time left at the pace so far (evaluations and
    checkpoints included)."""

    def __init__(self, total: int, initial: int, every: int, batch_size: int) -> None:
        self.total, self.every, self.batch_size = total, max(1, every), batch_size
        self.started, self.first_step = time.perf_counter(), initial
        self.recent = RecentSteps(self.every)

    def step(self, step: int, loss: float, accuracy: float, seconds: float) -> None:
        self.recent.add(loss, accuracy, seconds)
        if step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.started
        remaining = (self.total - step) * elapsed / max(step - self.first_step, 1)
        mean_loss, mean_accuracy = self.recent.means()
        log.info("step %d/%d: loss %.3f, accuracy %.3f (%s), %.0f images/s, ETA %s", step, self.total, mean_loss,
                 mean_accuracy, self.recent.label(), self.recent.images_per_second(self.batch_size),
                 tqdm.format_interval(remaining))

    def write(self, message: str) -> None:
        log.info(message)

    def close(self) -> None:
        pass


class BarProgress:
    """Progress as a tqdm bar, for a terminal: its postfix is the mean loss and accuracy of the last ``every``
    steps. While it is open, console log records are written through ``tqdm.write``."""

    def __init__(self, total: int, initial: int, every: int) -> None:
        self._redirect = contextlib.ExitStack()
        loggers = [logging.getLogger(name) for name in CONSOLE_LOGGERS]
        consoles = [logger for logger in loggers if any(map(_prints_to_console, logger.handlers))]
        if consoles:  # (a logger without a console handler would get one from the redirection)
            self._redirect.enter_context(logging_redirect_tqdm(consoles))
        self.recent = RecentSteps(every)
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def step(self, step: int, loss: float, accuracy: float, seconds: float) -> None:
        self.recent.add(loss, accuracy, seconds)
        mean_loss, mean_accuracy = self.recent.means()
        # Drawn by update() at tqdm's own pace (mininterval), not redrawn at every step.
        self.bar.set_postfix_str(f"loss {mean_loss:.3f}, acc {mean_accuracy:.2f} ({self.recent.label()})",
                                 refresh=False)
        self.bar.update(1)

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()
        self._redirect.close()


def _prints_to_console(handler: logging.Handler) -> bool:
    """A handler writing to stdout or stderr: what tqdm's redirection replaces."""
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stdout, sys.stderr)


def make_progress(total: int, initial: int, every: int, batch_size: int,
                  terminal: Optional[bool] = None) -> LogProgress | BarProgress:
    """A bar when stderr is a terminal (or ``terminal`` says so), else log lines every ``every`` steps."""
    if terminal is None:
        terminal = sys.stderr.isatty()
    return BarProgress(total, initial, every) if terminal else LogProgress(total, initial, every, batch_size)
