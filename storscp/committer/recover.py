"""The depot sweep: what the bus missed, and what dead receivers left.

Run at start and periodically. Ready files are returned in arrival order
(their names sort by time). A `*.part` file is removed only if no live
receiver holds its flock and it is older than a grace period, which covers
the instant between a receiver creating the file and locking it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from storscp import depotfiles

log = logging.getLogger(__name__)

PART_GRACE_S = 10.0


def ready_names(depot_dir: Path) -> list[str]:
    """Ready files in the depot, oldest first."""
    with os.scandir(depot_dir) as entries:
        names = [e.name for e in entries if e.name.endswith(depotfiles.READY_SUFFIX)]
    names.sort()
    return names


def remove_orphaned_parts(depot_dir: Path, grace_s: float = PART_GRACE_S) -> list[tuple[str, int]]:
    """Delete part files that no receiver holds; return their (name, size).

    Size 0 means a receiver's spare that never held data.
    """
    removed: list[tuple[str, int]] = []
    cutoff = time.time() - grace_s
    with os.scandir(depot_dir) as entries:
        parts = [e for e in entries if depotfiles.is_part(e.name)]
    for entry in parts:
        path = Path(entry.path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            st = os.fstat(fd)
            if st.st_mtime > cutoff:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live receiver is still writing it
            os.unlink(path)
            removed.append((entry.name, st.st_size))
        except FileNotFoundError:
            continue
        finally:
            os.close(fd)
    return removed
