"""Logging helpers shared by the modules that call chatty libraries."""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def quieted(logger: logging.Logger, level: int) -> Iterator[None]:
    """``logger`` passes only records at ``level`` or above for the block, then its own level again (a library's
    progress lines, or errors we report in our own words, stay out of the run's log)."""
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
