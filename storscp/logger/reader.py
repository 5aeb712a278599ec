"""Reading storscp1.log / storscp2.log back as one stream, and following it.

Read-only: used by `storscp logs`, never by the logger. The stream is the
older file, then the newer one: the order the logger wrote the lines in.

Following survives alternation. For each file we remember how far we have
read its current *generation* and its first bytes; a file that got shorter
or starts differently was emptied by the logger and is read from 0 again.
Each poll reads the older file first, then the newer, up to the sizes seen
when the poll began, and stats them older first: whatever alternation
happens meanwhile, lines come out in the order they were written. Only if
the logger alternates twice between two polls (a whole file written in one
poll interval) is the end of the overwritten generation lost; `lost` says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from storscp.logger.logfile import log_paths, newest_index

HEAD_BYTES = 64


@dataclass
class _FileState:
    consumed: int = 0
    head: bytes = b""


class LogFollower:
    """Returns the lines of both files not returned before, in written order."""

    def __init__(self, log_dir: Path) -> None:
        self.paths = log_paths(log_dir)
        self._state = [_FileState(), _FileState()]
        self._newest = 1  # so the first poll stats file 2 first: any order will do
        self.lost = 0  # generations whose end was overwritten before we read it

    def poll(self) -> list[bytes]:
        """Complete new lines, newline included, oldest first."""
        previous_newest = self._newest
        sizes: dict[int, int] = {}
        for index in (1 - previous_newest, previous_newest):
            try:
                sizes[index] = os.stat(self.paths[index]).st_size
            except FileNotFoundError:
                continue
        if not sizes:
            return []
        self._newest = newest_index(self.paths) if len(sizes) == 2 else next(iter(sizes))
        lines: list[bytes] = []
        for index in (1 - self._newest, self._newest):
            if index in sizes:
                lines += self._read_new(index, sizes[index], index == previous_newest)
        return lines

    def _read_new(self, index: int, size: int, was_newest: bool) -> list[bytes]:
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
                    self.lost += 1
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


def read_lines(log_dir: Path) -> list[bytes]:
    """Every complete line of both files, oldest first."""
    return LogFollower(log_dir).poll()
