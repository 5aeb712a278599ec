"""A node's claim on its depot, so that another node may recover it only once it is dead.

`<storage_dir>/depot/<node>/.node.lock`. While they run, the node's receivers
and its committer each hold a shared flock on it; `storscp recover --node
NAME` takes it exclusively, so recovery refuses while any of them lives, and
a node cannot start while its depot is being recovered. The kernel drops a
dead process's lock at once; on NFSv4 the server drops a dead *client's*
locks when its lease expires (90 s by default), so a node whose machine
died can be recovered after that. Only with `node` set: a lone gateway has
no one to hand its depot to.

Opened read-write: the Linux NFS client emulates flock with byte-range
locks, and an exclusive one needs a descriptor open for writing.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from storscp.errors import StorscpError

LOCK_NAME = ".node.lock"
WAIT_S = 2.0


class NodeLockHeld(StorscpError):
    """Someone holds the lock in a way that excludes us; the message says who."""


def lock_path(depot_dir: Path) -> Path:
    return depot_dir / LOCK_NAME


def _open(depot_dir: Path, mode: int) -> int:
    return os.open(lock_path(depot_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)


def hold_shared(depot_dir: Path, mode: int = 0o640, wait_s: float = WAIT_S) -> int:
    """Hold the node's lock for this process's life; returns the descriptor to keep open.

    Waits up to `wait_s` for a recovery to finish, then raises NodeLockHeld.
    """
    fd = _open(depot_dir, mode)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise NodeLockHeld(
                    f"depot {depot_dir} is being recovered (storscp recover holds"
                    f" {LOCK_NAME}); start again when it is done"
                ) from None
            time.sleep(0.05)


def take_exclusive(depot_dir: Path) -> int:
    """The lock of a node that must be dead; NodeLockHeld if any of its processes lives."""
    fd = _open(depot_dir, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise NodeLockHeld(
            f"the node still holds {lock_path(depot_dir)}: one of its receivers or its"
            " committer is running (on NFS: or its lease has not expired yet)"
        ) from None
    return fd
