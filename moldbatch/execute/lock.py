"""One render per work folder at a time: an advisory lock the kernel drops when we die."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from moldbatch.errors import WorkdirLocked


def render_running(workdir: Path) -> bool:
    """Whether a moldbatch process holds the work folder's lock right now."""
    try:
        fd = os.open(workdir / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class WorkdirLock:
    def __init__(self, workdir: Path):
        self.path = workdir / "lock"
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink():  # a link (from a checkout) would be truncated through
            self.path.unlink()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise WorkdirLocked(
                f"work folder {self.path.parent} is in use by another moldbatch process "
                f"(pid {holder}); wait for it to finish, or pass another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
