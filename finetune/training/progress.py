"""Training progress: a tqdm bar on a terminal, one log line every ``train.log_every`` steps otherwise
(a log file on a cluster), where a bar's redraws would pile up into one enormous line."""
from __future__ import annotations

import logging
import sys
import time
from typing import Optional

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)


class LogProgress:
    """Progress as one log line every ``every`` steps, for output that is not a terminal: step/total,
    mean loss and accuracy since the last line, images per second of the training steps themselves
    (as in metrics.json) and the time left at the pace so far (evaluations and checkpoints included)."""

    def __init__(self, total: int, initial: int, every: int, batch_size: int) -> None:
        self.total, self.every, self.batch_size = total, max(1, every), batch_size
        self.started, self.first_step = time.perf_counter(), initial
        self.since_line: list[tuple[float, float, float]] = []  # loss, accuracy, seconds of each step

    def step(self, step: int, loss: float, accuracy: float, seconds: float) -> None:
        self.since_line.append((loss, accuracy, seconds))
        if step % self.every and step != self.total:
            return
        losses, accuracies, durations = zip(*self.since_line)
        elapsed = time.perf_counter() - self.started
        remaining = (self.total - step) * elapsed / max(step - self.first_step, 1)
        log.info("step %d/%d: loss %.3f, accuracy %.3f, %.0f images/s, ETA %s", step, self.total, np.mean(losses),
                 np.mean(accuracies), len(durations) * self.batch_size / max(sum(durations), 1e-9),
                 tqdm.format_interval(remaining))
        self.since_line = []

    def write(self, message: str) -> None:
        log.info(message)

    def close(self) -> None:
        pass


class BarProgress:
    """Progress as a tqdm bar, for a terminal."""

    def __init__(self, total: int, initial: int) -> None:
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def step(self, step: int, loss: float, accuracy: float, seconds: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.2f}")

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()


def make_progress(total: int, initial: int, every: int, batch_size: int,
                  terminal: Optional[bool] = None) -> LogProgress | BarProgress:
    """A bar when stderr is a terminal (or ``terminal`` says so), else log lines every ``every`` steps."""
    if terminal is None:
        terminal = sys.stderr.isatty()
    return BarProgress(total, initial) if terminal else LogProgress(total, initial, every, batch_size)
