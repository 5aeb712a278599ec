"""Reading storscp1.log / storscp2.log back as one stream, and following it.

Read-only: used by `storscp logs`, never by the logger. The stream is the
older file, then the newer one: the order the logger wrote the lines in.

Following survives alternation. For each file we remember how far we have
read its current *generation* and its first bytes; a file that got shorter
or starts differently was emptied by the logger and is read from 0 again.
Each poll reads the older file first, then the newer, up to the sizes seen
when the poll began, and is done again if the logger alternated meanwhile:
lines come out in the order they were written. Only if
the logger alternates twice between two polls (a whole file written in one
poll interval) can the end of the overwritten generation be lost. Given
`max_bytes`, that is certain when the first line of the next generation
would still have fitted after what we had read (the logger writes a line
where it fits): `lost` counts those. Otherwise the logger may have written
nothing more there (we had read it to its end), or a line shorter than that
one: `maybe_lost` counts those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from storscp.logger.logfile import log_paths

HEAD_BYTES = 64


@dataclass
class _FileState:
    consumed: int = 0
    head: bytes = b""


class LogFollower:
    """Returns the lines of both files not returned before, in written order."""

    def __init__(self, log_dir: Path, max_bytes: int | None = None) -> None:
        """`max_bytes`: the logger's log_max_bytes, to tell a certain loss from a possible one."""
        self.paths = log_paths(log_dir)
        self.max_bytes = max_bytes
        self._state = [_FileState(), _FileState()]
        self._newest = 1  # so the first poll stats file 2 first: any order will do
        self.lost = 0  # generations whose end was overwritten before we read it
        self.maybe_lost = 0  # generations whose end may have been (see above)

    def poll(self) -> list[bytes]:
        """Complete new lines, newline included, oldest first."""
        for _attempt in range(3):
            previous_newest = self._newest
            before = self._stat(1 - previous_newest, previous_newest)
            if not before:
                return []
            newest = _newest_of(before)
            saved = ([replace(st) for st in self._state], self.lost, self.maybe_lost)
            lines: list[bytes] = []
            # The first line of a generation read from its start in this poll:
            # what the logger wrote right after the other file's generation ended.
            first_line: bytes | None = None
            for index in (1 - newest, newest):
                if index in before:
                    size = before[index][1]
                    fresh = self._read_new(index, size, index == previous_newest, first_line)
                    if fresh and self._state[index].consumed == sum(map(len, fresh)):
                        first_line = fresh[0]
                    lines += fresh
            # An alternation while we read would put its first lines before the
            # old file's last ones: forget this read and do it again.
            after = self._stat(1 - newest, newest)
            if not after or _newest_of(after) == newest:
                self._newest = newest
                return lines
            self._state, self.lost, self.maybe_lost = saved
        return []

    def _stat(self, *indexes: int) -> dict[int, tuple[int, int]]:
        """index -> (mtime_ns, size) of the files that exist, stat'ed in this order."""
        found: dict[int, tuple[int, int]] = {}
        for index in indexes:
            try:
                st = os.stat(self.paths[index])
            except FileNotFoundError:
                continue
            found[index] = (st.st_mtime_ns, st.st_size)
        return found

    def _read_new(
        self, index: int, size: int, was_newest: bool, next_line: bytes | None = None
    ) -> list[bytes]:
        """New lines of one file. `next_line`: the first line the logger wrote in the
        other file after this one's previous generation, if this poll read it."""
        state = self._state[index]
        try:
            fh = open(self.paths[index], "rb")  # noqa: SIM115
        except FileNotFoundError:
            return []
        with fh:
            head = fh.read(HEAD_BYTES)
            if size < state.consumed or head[: len(state.head)] != state.head:
                # A new generation: the logger emptied this file since we last read it.
                # If it was being written at our last look, its end may be unread.
                if was_newest and state.consumed > 0:
                    self._count_loss(state.consumed, next_line)
                state.consumed, state.head = 0, b""
            if size <= state.consumed:
                return []
            fh.seek(state.consumed)
            data = fh.read(size - state.consumed)
        end = data.rfind(b"\n") + 1
        if end == 0:
            return []
        state.consumed += end
        if len(state.head) < HEAD_BYTES:
            state.head = head[: min(HEAD_BYTES, state.consumed)]
        return [line + b"\n" for line in data[: end - 1].split(b"\n")]

    def _count_loss(self, consumed: int, next_line: bytes | None) -> None:
        """A generation we had read `consumed` bytes of was overwritten."""
        fitted = (
            self.max_bytes is not None
            and next_line is not None
            and consumed + len(next_line) <= self.max_bytes
        )
        if fitted:
            self.lost += 1  # that line would have gone here: more was written after our read
        else:
            self.maybe_lost += 1


def _newest_of(stats: dict[int, tuple[int, int]]) -> int:
    """As logfile.newest_index: newer mtime, then the smaller file."""
    return max(stats, key=lambda i: (stats[i][0], -stats[i][1]))


def read_lines(log_dir: Path) -> list[bytes]:
    """Every complete line of both files, oldest first."""
    return LogFollower(log_dir).poll()
