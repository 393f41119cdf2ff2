"""Durable file writes and content hashes, the one place for both (stdlib only).

A write goes to a hidden temporary beside its target, is fsynced, and is renamed onto it: a
reader (or a later run) sees the old file or the whole new one, never a part.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_file(path: Path) -> None:
    with Path(path).open("rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_beside(path: Path) -> Path:
    """A hidden temporary name next to `path`, unique to this process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder: Path, ours) -> None:
    """Remove the temporaries (`.<name>.tmp-<pid>`) that processes killed mid-write (a
    `kill -9` skips their clean-up) left in `folder`, for the names `ours(name)` accepts; a
    live process's are left alone. One listing per folder, however many files it holds."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        base, sep, pid = name[1:].rpartition(".tmp-")
        if not (name.startswith(".") and sep and pid.isdigit() and ours(base)):
            continue
        if int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                (Path(folder) / name).unlink()


def _new_temp(path: Path):
    """This process's temporary beside `path`, created afresh (never through a link someone
    left at its name), open for writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    return tmp, os.fdopen(os.open(tmp, flags, 0o644), "wb")


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write `path` so that it is either the old file or the whole new one (a link at `path`
    is replaced, not written through)."""
    path = Path(path)
    tmp, f = _new_temp(path)
    try:
        with f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy `src` onto `dst` so that `dst` is either the old file or the whole new one."""
    dst = Path(dst)
    tmp, f = _new_temp(dst)
    try:
        with f, Path(src).open("rb") as source:
            shutil.copyfileobj(source, f, 1 << 20)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    finally:
        tmp.unlink(missing_ok=True)
