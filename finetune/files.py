"""Writing files so that a crash never leaves half of one: write to a temporary name beside the
target, then rename (atomic on one file system). A reader sees the old file or the new one.

A process killed mid-write still leaves its temporary behind, and TensorFlow's checkpoint writer
leaves its own; :func:`remove_orphaned_temporaries` clears both from a run directory before the next
process writes there, and :func:`complete_checkpoint` says whether a checkpoint has all its files.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

# write_text_atomically's temporary name: ".NAME.tmp-PID".
OWN_TEMPORARY = re.compile(r"^\..+\.tmp-\d+$")
# What TF 2.21 leaves in a checkpoint folder when killed mid-save (seen by tracing and killing saves):
# - the bundle writer writes "PREFIX.data-00000-of-00001.tempstateN", renames it, then the same for
#   "PREFIX.index.tempstateN" (N: a random 64-bit number; tensor_bundle.cc);
# - a sharded save writes into a folder "PREFIX_temp" (older releases: "PREFIX_temp_<uuid hex>") and
#   merges from there (saver.py);
# - the checkpoint state is written to "checkpoint.tmp<uuid hex>" and renamed (file_io.atomic_write_string_to_file).
TF_BUNDLE_TEMPORARY = re.compile(r"^.+\.tempstate\d+$")
TF_SHARDED_TEMPORARY_DIR = re.compile(r"^.+_temp(_[0-9a-f]{32})?$")
TF_STATE_TEMPORARY = re.compile(r"^checkpoint\.tmp[0-9a-f]{32}$")
# A data shard of a V2 checkpoint: "PREFIX.data-NNNNN-of-MMMMM".
DATA_SHARD = re.compile(r"^(?P<prefix>.+)\.data-(?P<shard>\d{5})-of-(?P<shards>\d{5})$")


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """``data`` to a temporary name beside ``path`` (``.NAME.tmp-PID``), then renamed over it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def create_file_once(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data`` with permissions ``mode`` unless it exists; True when this call made it.

    The file is written whole under a temporary name opened with O_CREAT|O_EXCL (never another's file,
    ``mode`` from the start: no moment with wider permissions), then hard-linked to ``path``, which fails
    when ``path`` exists: of two processes creating it at once one wins, and the other (False) reads a
    complete file, never a half-written one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.unlink(missing_ok=True)  # left by a killed process that had our pid
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: a rename, which a racing creator may overwrite
            if os.path.lexists(path):
                return False
            os.replace(temporary, path)
        return True
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    """``text`` (UTF-8) to a temporary name beside ``path``, then renamed over it."""
    write_bytes_atomically(path, text.encode("utf-8"))


def write_json_atomically(path: Path, data: Any) -> None:
    """``data`` as indented JSON (NaN and infinities refused: they are not JSON), written atomically."""
    write_text_atomically(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def complete_checkpoint(prefix: str) -> bool:
    """Whether the V2 checkpoint ``prefix`` has all its files: a non-empty ``PREFIX.index`` and, for
    some shard count M, every ``PREFIX.data-NNNNN-of-MMMMM`` with NNNNN from 0 to M-1."""
    prefix_path = Path(prefix)
    index = Path(f"{prefix}.index")
    if not index.is_file() or index.stat().st_size == 0:
        return False
    shards: dict[int, set[int]] = {}  # shard count -> the shard numbers present
    for path in prefix_path.parent.iterdir():
        match = DATA_SHARD.match(path.name)
        if match and match["prefix"] == prefix_path.name and path.is_file():
            shards.setdefault(int(match["shards"]), set()).add(int(match["shard"]))
    return any(present == set(range(count)) for count, present in shards.items())


def _checkpoint_orphans(checkpoint_dir: Path) -> list[Path]:
    """TensorFlow's leftovers of a killed save in ``checkpoint_dir`` (see the patterns above), and data
    shards without their ``.index``: a save killed between its two renames, or an old checkpoint's
    deletion killed between its two unlinks (TF deletes the .index first). Neither can be restored."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in sorted(checkpoint_dir.iterdir()):
        name = path.name
        if path.is_dir() and not path.is_symlink():
            if TF_SHARDED_TEMPORARY_DIR.match(name):
                found.append(path)
        elif TF_BUNDLE_TEMPORARY.match(name) or TF_STATE_TEMPORARY.match(name):
            found.append(path)
        else:
            match = DATA_SHARD.match(name)
            if match and not (checkpoint_dir / f"{match['prefix']}.index").exists():
                found.append(path)
    return found


def _own_orphans(run_dir: Path) -> list[Path]:
    """Our own ``.NAME.tmp-PID`` temporaries anywhere under ``run_dir``: files, and folders built whole
    before a rename (the exporter's ``.export.tmp-PID``), not looked into (symbolic links not followed)."""
    found = []
    for folder, dirs, files in os.walk(run_dir):
        folders = [name for name in dirs if OWN_TEMPORARY.match(name)]
        dirs[:] = [name for name in dirs if name not in folders]
        found += [Path(folder) / name for name in files + folders if OWN_TEMPORARY.match(name)]
    return sorted(found)


def remove_orphaned_temporaries(run_dir: Path, checkpoint_dir: str = "checkpoints") -> list[Path]:
    """Remove what a killed earlier process left half-written in ``run_dir``; return the paths removed.

    Call it holding the run directory's lock, before writing anything: every temporary there is then
    an orphan (no other process writes there). ``checkpoint_dir`` is the checkpoint folder's name
    inside ``run_dir`` (run_state.CHECKPOINT_DIR)."""
    run_dir = Path(run_dir)
    tensorflows = _checkpoint_orphans(run_dir / checkpoint_dir)  # a sharded save's folder may hold ours too
    removed = tensorflows + [path for path in _own_orphans(run_dir) if not any(t in path.parents for t in tensorflows)]
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if removed:
        log.info("Removed %d file(s) left half-written by an interrupted earlier process in %s: %s", len(removed),
                 run_dir, ", ".join(str(path.relative_to(run_dir)) for path in removed))
    return removed


def makeable(path: str | os.PathLike) -> str:
    """'' when ``path`` is a writable folder or can be made one (its nearest existing ancestor is a
    writable folder); else what is in the way, in words."""
    existing = os.path.abspath(os.path.expanduser(os.fspath(path)))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK):
        return ""
    return f"{existing} {'is not writable' if os.path.isdir(existing) else 'is a file, not a folder'}"


def write_between_markers(path: Path, begin: str, end: str, text: str) -> None:
    """Put ``text`` between the lines ``begin`` and ``end`` of a text file (the two added at its end when
    missing), atomically: how scripts keep their tables in the README current."""
    content = Path(path).read_text()
    if begin in content and end in content.split(begin, 1)[1]:
        head, rest = content.split(begin, 1)
        content = f"{head}{begin}\n{text}{end}{rest.split(end, 1)[1]}"
    else:
        content = content.rstrip("\n") + f"\n\n{begin}\n{text}{end}\n"
    write_text_atomically(Path(path), content)


def file_identity(path: str | Path) -> Optional[tuple]:
    """What tells a file from an edited or replaced one without reading it: its path, device, inode, size and
    modification time in nanoseconds (None: it cannot be read). What a process learnt from a file's bytes
    stays true while its identity does."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return str(path), status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


class IdentityMemo:
    """What a process computed from files' bytes, by :func:`file_identity`: a sweep's jobs scan and hash the same
    files. At most ``limit`` files are kept (then it starts again)."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit, self._known = limit, {}

    def get(self, identity: Optional[tuple], default: Any = None) -> Any:
        return default if identity is None else self._known.get(identity, default)

    def put(self, identity: Optional[tuple], value: Any) -> None:
        if identity is None:
            return
        if len(self._known) >= self.limit:
            self._known.clear()
        self._known[identity] = value
