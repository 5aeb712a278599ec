"""What a crash left: renames without their feed rows, and part files of dead receivers.

Run at start (before anything new is committed) and, for part files,
periodically. A rename recorded in the history's `pending` table whose ready
file is gone from the depot happened: it gets its feed row now, with the seq
it would have had, since nothing after it was published. One whose ready
file is still there did not happen: the file stays ready and is committed
like any other. A `*.part` file is removed only if no live receiver holds its
flock and it is older than a grace period, which covers the instant between
a receiver creating the file and locking it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from storscp import bus, depotfiles
from storscp.committer.commit import Committer, fsync_destinations

log = logging.getLogger(__name__)

PART_GRACE_S = 10.0


def recover_pending(committer: Committer) -> list[bus.InstanceCommitted]:
    """Record the renames of the batch a crash interrupted; returns their messages."""
    pending = committer.history.pending()
    if not pending:
        return []
    moved = [p for p in pending if not (committer.depot_dir / p.ready_name).exists()]
    # The renames may not be durable yet (no fsync after them): make them so first.
    fsync_destinations(moved, committer.storage_dir, committer.storage_fd)
    messages = committer.record(moved, durable=True)  # also clears `pending`
    log.info(
        "recovered an interrupted batch: %d renamed, %d still ready",
        len(moved),
        len(pending) - len(moved),
    )
    return messages


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
