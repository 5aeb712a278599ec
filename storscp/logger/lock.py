"""The single-writer lock of a log directory.

An exclusive flock on `<log_dir>/.storscp-logger.lock`, held for the life of
the logger. The kernel drops it when the process dies, however it dies, so
a restarted logger never waits on a stale lock. The CLI probes the same lock
before starting a service, so a second service pointed at a log directory
in use refuses at once instead of running without a logger.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from storscp.errors import StorscpError

LOCK_NAME = ".storscp-logger.lock"


class LogDirLocked(StorscpError):
    """Another logger holds the log directory."""


def _try_lock(log_dir: Path) -> int:
    """The locked descriptor, or LogDirLocked naming the holder's pid."""
    fd = os.open(log_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise LogDirLocked(
            f"log_dir {log_dir} is in use: another storscp logger"
            f" (pid {holder or 'unknown'}) is writing to it"
        ) from None
    return fd


def lock_log_dir(log_dir: Path) -> int:
    """Take the lock and return its descriptor (keep it open)."""
    fd = _try_lock(log_dir)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def check_log_dir_free(log_dir: Path) -> None:
    """LogDirLocked if a logger holds `log_dir` now; takes nothing.

    Creates nothing either: the lock file belongs to the logger, which may
    run as another account (`user`) and must be able to open it.
    """
    try:
        fd = os.open(log_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # no logger ever ran here
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        raise LogDirLocked(
            f"log_dir {log_dir} is in use: another storscp logger"
            f" (pid {holder or 'unknown'}) is writing to it"
        ) from None
    finally:
        os.close(fd)
