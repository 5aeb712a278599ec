"""Group commit of the depot directory's fsync across a receiver's associations.

Each C-STORE renames its part to its ready name and must see that rename
made durable by an fsync of the depot directory before it answers Success.
An fsync covers every rename that completed before it began, so when
several associations finish at once one fsync can answer for all of them:
the first to arrive runs it (the leader), the others wait for it or, if
their rename came too late for it, for the next one, which one of them then
runs. A single association never waits: with no fsync running it is the
leader at once. Only an fsync that *began after* a rename completed may
vouch for it; one that fails fails every rename it was to cover, even if a
later fsync succeeds (after a failed fsync Linux may report the next one as
clean without having written anything).
"""

from __future__ import annotations

import os
import threading

# Failed fsyncs remembered, newest last: a waiter older than all of them has
# long been answered (errors here mean the disk is failing anyway).
MAX_FAILURES = 64


class DirectorySync:
    """fsync of one directory, shared by the threads whose renames it covers."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._cond = threading.Condition()
        self._renamed = 0  # renames announced so far (tickets)
        self._synced = 0  # every ticket up to this one is durable
        self._running = False
        self._failures: list[tuple[int, int, OSError]] = []  # (after, through, error)
        self.fsyncs = 0  # how many fsyncs ran (for tests and diagnostics)

    def renamed(self) -> int:
        """Call right after a rename returned; the ticket to pass to `sync`."""
        with self._cond:
            self._renamed += 1
            return self._renamed

    def sync(self, ticket: int) -> None:
        """Return once the rename of `ticket` is durable; raise the OSError if not."""
        with self._cond:
            while True:
                self._raise_if_failed(ticket)
                if self._synced >= ticket:
                    return
                if not self._running:
                    break
                self._cond.wait()
            self._running = True
            after, through = self._synced, self._renamed
        try:
            os.fsync(self.fd)
        except OSError as exc:
            with self._cond:
                self._failures = [*self._failures[-MAX_FAILURES + 1 :], (after, through, exc)]
                self._running = False
                self.fsyncs += 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._synced = max(self._synced, through)
            self._running = False
            self.fsyncs += 1
            self._cond.notify_all()

    def _raise_if_failed(self, ticket: int) -> None:
        for after, through, exc in self._failures:
            if after < ticket <= through:
                raise exc
