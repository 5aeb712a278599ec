"""At most `max_associations` associations across all receiver processes, and per remote AE.

One byte of `<run_dir>/bus/association-slots` per slot; an association holds a
POSIX record lock on its byte. The kernel drops a dead receiver's locks, so
a crash never leaks a slot. POSIX locks belong to the process, not the
thread, so each process also remembers which slots its threads hold.

A `[[remote_ae]]` table with `max_associations` gets a file of its own,
`remote-ae-<n>-slots` (n: its position in the configuration), used alike.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SLOTS_NAME = "association-slots"


class AssociationSlots:
    def __init__(self, directory: Path, count: int, name: str = SLOTS_NAME) -> None:
        self.count = count
        # Never closed while the process lives: closing any descriptor of the
        # file would release every lock this process holds on it.
        self._fd = os.open(directory / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self._fd).st_size < count:
            os.ftruncate(self._fd, count)
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def acquire(self) -> int | None:
        """A free slot number (now held), or None if all are taken."""
        with self._lock:
            for slot in range(self.count):
                if slot in self._held:
                    continue
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
                except OSError:
                    continue  # held by another receiver process
                self._held.add(slot)
                return slot
        return None

    def release(self, slot: int) -> None:
        with self._lock:
            if slot in self._held:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, slot)
                self._held.discard(slot)

    def in_use_here(self) -> int:
        with self._lock:
            return len(self._held)


@dataclass(frozen=True, slots=True)
class Held:
    """The slots one association holds: the node's, and its remote AE table's if capped."""

    slot: int
    remote: tuple[int, int] | None = None  # (table index, slot)


class RemoteAESlots:
    """The `max_associations` of each `[[remote_ae]]` table that has one."""

    def __init__(self, directory: Path, limits: Sequence[int | None]) -> None:
        self._slots = {
            index: AssociationSlots(directory, limit, f"remote-ae-{index}-slots")
            for index, limit in enumerate(limits)
            if limit is not None
        }

    def limited(self, index: int | None) -> bool:
        return index is not None and index in self._slots

    def acquire(self, index: int) -> int | None:
        """A slot of table `index` (now held), or None if its limit is reached."""
        return self._slots[index].acquire()

    def release(self, index: int, slot: int) -> None:
        self._slots[index].release(slot)
