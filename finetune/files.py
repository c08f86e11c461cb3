"""Writing files so that a crash never leaves half of one: write to a temporary name beside the
target, then rename (atomic on one file system). A reader sees the old file or the new one."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomically(path: Path, text: str) -> None:
    """``text`` to a temporary name beside ``path``, then renamed over it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json_atomically(path: Path, data: Any) -> None:
    """``data`` as indented JSON (NaN and infinities refused: they are not JSON), written atomically."""
    write_text_atomically(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
