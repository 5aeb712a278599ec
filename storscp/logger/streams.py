"""Which events of which sender the log holds: order, duplicates, acknowledgements.

Each sender incarnation (its origin) numbers its events 1, 2, 3, keeps them
until acknowledged and sends them again after a logger restart, so the same
event can arrive twice, and after a restart the rest of a killed logger's
queue can arrive before the part of it that died. For each origin we keep
the last seq accepted (written, or waiting in the writer's backlog) and the
last one written, and accept only the next one: an event that skips ahead
is dropped unacknowledged, and its sender sends the gap and it again. Only
its `floor` (the oldest event the sender still holds) lets it skip: what is
below was written or given up by the sender. So every (origin, seq) is
written once, and in order.

A restarted logger learns the last seq of each origin from the `ev=` field
of the newest TAIL_BYTES of its files: one event per origin is enough, since
a sender's events are in the log in order. What a sender can resend after a
restart is what was not acknowledged, and the logger acknowledges each batch
right after writing it, so those lines are among the last ones written.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from storscp.logger.logfile import log_paths, newest_index

# Origins remembered (least recently heard from forgotten first): far more
# than the processes of a service, including every restart for a long time.
MAX_ORIGINS = 4096
# How much of the newest lines a starting logger reads back: at least ten
# batches of typical lines; the two files together are smaller by default.
TAIL_BYTES = 4 * 1024 * 1024
# `<time> <TYPE> proc=<value> ev=<origin>:<seq>`, anchored at the start of the
# line: a peer-supplied value further on can never pass for it.
_EVENT_ID_RE = re.compile(
    rb'^[^ \n]+ [A-Z]+ proc=(?:"(?:[^"\\\n]|\\.)*"|[^ \n"]*)'
    rb" ev=([0-9]{1,10}-[0-9a-f]{8}):([0-9]{1,20})[ \n]",
    re.MULTILINE,
)


class Verdict(Enum):
    WRITE = "write"  # the next event of its origin: write it
    DUPLICATE = "duplicate"  # already accepted: drop it, acknowledge again
    EARLY = "early"  # one before it is missing: drop it, its sender will resend both


@dataclass
class _Stream:
    accepted: int
    written: int


class Streams:
    """Per origin: the last event accepted and the last written; who is owed an ack."""

    def __init__(self, known: dict[str, int] | None = None) -> None:
        """`known`: origin -> last seq in the log (from `read_known`)."""
        self._streams: OrderedDict[str, _Stream] = OrderedDict(
            (origin, _Stream(seq, seq)) for origin, seq in (known or {}).items()
        )
        self._owed: set[str] = set()

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def owed(self) -> bool:
        """Some sender is owed an acknowledgement."""
        return bool(self._owed)

    def admit(self, origin: str, seq: int, floor: int) -> Verdict:
        stream = self._streams.get(origin)
        if stream is None:
            if seq != floor:  # an origin we do not know: only the oldest event it holds
                return Verdict.EARLY
            stream = self._streams[origin] = _Stream(floor - 1, floor - 1)
            if len(self._streams) > MAX_ORIGINS:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(origin)
            if seq <= stream.accepted:
                self._owed.add(origin)
                return Verdict.DUPLICATE
            if seq != stream.accepted + 1 and seq != floor:
                return Verdict.EARLY
        stream.accepted = seq
        return Verdict.WRITE

    def reject(self, origin: str, seq: int) -> None:
        """Undo the admission of (origin, seq), the last one admitted: it was not kept."""
        stream = self._streams.get(origin)
        if stream is not None and stream.accepted == seq:
            stream.accepted = seq - 1

    def written(self, origin: str, seq: int) -> None:
        """The line of (origin, seq) is in the file: acknowledge it with the next batch."""
        stream = self._streams.get(origin)
        if stream is not None and seq > stream.written:
            stream.written = seq
            self._owed.add(origin)

    def take_acks(self) -> list[tuple[str, int]]:
        """(origin, last seq written) for each origin owed an acknowledgement."""
        acks = []
        for origin in self._owed:
            stream = self._streams.get(origin)
            if stream is not None:
                acks.append((origin, stream.written))
        self._owed.clear()
        return acks


def read_known(log_dir: Path, tail_bytes: int = TAIL_BYTES) -> dict[str, int]:
    """origin -> last seq, from the newest `tail_bytes` of the two log files."""
    paths = log_paths(log_dir)
    newest = newest_index(paths)
    chunks: list[bytes] = []  # newest first
    budget = tail_bytes
    for path in (paths[newest], paths[1 - newest]):
        if budget <= 0:
            break
        chunk = _tail(path, budget)
        budget -= len(chunk)
        chunks.append(chunk)
    known: dict[str, int] = {}
    for chunk in reversed(chunks):  # oldest first: later lines win
        for match in _EVENT_ID_RE.finditer(chunk):
            known[match.group(1).decode("ascii")] = int(match.group(2))
    return known


def _tail(path: Path, max_bytes: int) -> bytes:
    """The last whole lines of `path` within `max_bytes`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - max_bytes)
        data = os.pread(fd, size - start, start)
    finally:
        os.close(fd)
    if start > 0:  # the window begins inside a line: skip to the next whole one
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    return data
