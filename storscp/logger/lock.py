"""The single-writer lock of a log directory.

An exclusive flock on `<log_dir>/.storscp-logger.lock`, held for the life of
the logger. The kernel drops it when the process dies, however it dies, so
a restarted logger never waits on a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = ".storscp-logger.lock"


class LogDirLocked(Exception):
    """Another logger holds the log directory."""


def lock_log_dir(log_dir: Path) -> int:
    """Take the lock and return its descriptor (keep it open)."""
    path = log_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise LogDirLocked(
            f"another storscp logger (pid {holder or 'unknown'}) is writing to {log_dir}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
