"""Bad files: found before training starts, skipped, listed, and tolerated up to ``data.max_bad_fraction``.

Every source checks every example before a graph exists, from its header and its last bytes (never its
pixels): not an image, empty, cut short (its format's end marker missing), more pixels than
``data.max_pixels``, a name that is not UTF-8. One text file named ``.jpg`` or a truncated download
would otherwise stop training hours in with a TensorFlow error that does not name the file. Bad ones
are dropped from their split and listed in the run directory's ``bad_files.json``; a split with more
than ``data.max_bad_fraction`` of its examples bad stops the run with one message listing them.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Callable, Optional, TypeVar

from PIL import Image

from finetune.config import DataConfig
from finetune.data.examples import SPLITS, BadExample
from finetune.errors import FinetuneError
from finetune.files import IdentityMemo, file_identity

# What TensorFlow's decode_image reads, by PIL's name for it.
DECODABLE = {"JPEG": "JPEG", "PNG": "PNG", "GIF": "GIF", "BMP": "BMP", "MPO": "JPEG"}  # MPO: a camera's multi-JPEG
TRAILER_BYTES = 1024  # how much of a file's end the truncation check reads
SHOWN = 10  # bad files named in a message

Candidate = TypeVar("Candidate")


def drop_bad(candidates: dict[str, list[Candidate]], problem: Callable[[Candidate], Optional[str]],
             key: Callable[[Candidate], str], data_cfg: DataConfig, where: str,
             label: Callable[[Candidate], Optional[int]] = lambda candidate: None,
             ) -> tuple[dict[str, list[Candidate]], list[BadExample], dict[str, int]]:
    """Each split's candidates without the bad ones, the bad ones (split, key, reason, class), and how many
    each split had. FinetuneError when a split's bad fraction exceeds ``data.max_bad_fraction``."""
    kept: dict[str, list[Candidate]] = {split: [] for split in SPLITS}
    bad: list[BadExample] = []
    for split in SPLITS:
        for candidate in candidates.get(split, []):
            reason = problem(candidate)
            if reason is None:
                kept[split].append(candidate)
            else:
                bad.append(BadExample(key(candidate), split, reason, label(candidate)))
    scanned = {split: len(candidates.get(split, [])) for split in SPLITS}
    over = [split for split in SPLITS
            if scanned[split] and sum(b.split == split for b in bad) / scanned[split] > data_cfg.max_bad_fraction]
    if over:
        listed = [b for b in bad if b.split in over]
        more = f"\n  ... and {len(listed) - SHOWN} more" if len(listed) > SHOWN else ""
        counts = ", ".join(f"{sum(b.split == s for b in bad)} of {scanned[s]} in {s}" for s in over)
        raise FinetuneError(
            f"{where} has too many files that cannot be trained on ({counts}; data.max_bad_fraction="
            f"{data_cfg.max_bad_fraction} allows at most that fraction of a split to be skipped), found from their "
            "headers before training:\n" + "\n".join(f"  {b.key}: {b.reason}" for b in listed[:SHOWN]) + more +
            "\nRemove or replace them (or re-save them as JPEG/PNG), raise data.max_pixels for large images, or "
            "raise data.max_bad_fraction to skip them.")
    return kept, bad, scanned


def utf8_name(path: str) -> bool:
    """Whether a path (as os.listdir gives it: undecodable bytes as surrogates) is valid UTF-8, which
    TensorFlow's string tensors and the JSON reports need."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(path: Path | str) -> str:
    """``path`` printable whatever its bytes (undecodable ones as \\xNN escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


_CHECKED = IdentityMemo()  # (file identity, max_pixels) -> its problem: a sweep's jobs scan the same folder
_UNKNOWN = object()


def file_problem(path: Path, max_pixels: int) -> Optional[str]:
    """Why one image file cannot be trained on, or None (see the module docstring). A file checked once in this
    process is not opened again while its identity (:func:`finetune.files.file_identity`) holds."""
    if not utf8_name(str(path)):
        return "its name is not valid UTF-8; rename it"
    identity = file_identity(path)
    checked = None if identity is None else (*identity, max_pixels)
    known = _CHECKED.get(checked, _UNKNOWN)
    if known is not _UNKNOWN:
        return known
    problem = _file_problem(path, max_pixels, None if identity is None else identity[3])
    _CHECKED.put(checked, problem)
    return problem


def _file_problem(path: Path, max_pixels: int, size: Optional[int]) -> Optional[str]:
    try:
        size = path.stat().st_size if size is None else size
        with open(path, "rb") as handle:
            return stream_problem(handle, size, max_pixels)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"


def encoded_problem(data: bytes, max_pixels: int) -> Optional[str]:
    """Why encoded image bytes (a TFRecord's image/encoded) cannot be trained on, or None."""
    return stream_problem(io.BytesIO(data), len(data), max_pixels)


def stream_problem(handle: BinaryIO, size: int, max_pixels: int) -> Optional[str]:
    """Why the image in ``handle`` (``size`` bytes long) cannot be trained on, or None."""
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle) as image:  # reads the header only
                kind, (width, height) = image.format, image.size
        handle.seek(max(0, size - TRAILER_BYTES))
        tail = handle.read()
        handle.seek(0)
        head = handle.read(34)  # a BMP's file header and the start of its info header
    except Image.DecompressionBombError:
        return f"more pixels than PIL reads, over data.max_pixels={max_pixels}"
    except Image.UnidentifiedImageError:  # no image format PIL knows
        return "not an image (no JPEG, PNG, GIF or BMP header)"
    except OSError as error:
        if "truncated" in str(error).lower():  # cut short inside its header
            return "truncated image (its end is missing)"
        return f"cannot be read ({error.strerror or error})"
    except (SyntaxError, ValueError, EOFError) as error:  # what PIL raises for a header it cannot parse
        return f"not a readable image ({error})"
    if kind not in DECODABLE:
        return f"a {kind} image, which TensorFlow cannot decode (JPEG, PNG, GIF, BMP only)"
    if width * height > max_pixels:
        return f"{width}x{height} = {width * height:,} pixels, over data.max_pixels={max_pixels:,}"
    if not complete_image(DECODABLE[kind], head, tail, size):
        return f"truncated {DECODABLE[kind]} (its end is missing)"
    if kind == "BMP":
        return bmp_problem(head)
    return None


def bmp_problem(head: bytes) -> Optional[str]:
    """Why TensorFlow's BMP decoder cannot read a BMP that PIL can (from its first 34 bytes), or None:
    it reads only uncompressed 8, 24 and 32-bit BMPs with a Windows (40+ byte) info header."""
    header_size = int.from_bytes(head[14:18], "little")
    bits = int.from_bytes(head[28:30], "little")
    compression = int.from_bytes(head[30:34], "little")
    if len(head) < 34 or header_size < 40:
        return "an OS/2 BMP, which TensorFlow cannot decode; re-save it as PNG"
    if bits not in (8, 24, 32):
        return f"a {bits}-bit BMP, which TensorFlow cannot decode (8, 24 or 32 bits only); re-save it as PNG"
    if compression not in (0, 3):  # BI_RGB, BI_BITFIELDS
        return "a compressed (RLE) BMP, which TensorFlow cannot decode; re-save it as PNG"
    return None


def complete_image(kind: str, head: bytes, tail: bytes, size: int) -> bool:
    """Whether the image ends as its format says it must: a cut-short download fails this."""
    if kind == "JPEG":
        return b"\xff\xd9" in tail  # the End Of Image marker (some writers pad after it)
    if kind == "PNG":
        return b"IEND" in tail
    if kind == "GIF":
        return b"\x3b" in tail.rstrip(b"\x00")[-1:]  # the trailer byte
    return len(head) >= 6 and size >= int.from_bytes(head[2:6], "little")  # BMP: the size its header declares
