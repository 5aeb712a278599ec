"""Buffered reading from a peer's socket, with deadlines.

One `recv_into` fills a reused buffer with whatever the kernel has; PDU
headers, PDV headers and command sets are then sliced out of it, so a small
C-STORE costs a couple of system calls instead of one per field. Dataset
bytes are handed to a sink as memoryviews of that buffer: no copy here,
and never more than the buffer in memory, whatever length the peer claims.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from storscp.errors import StorscpError

BUFFER_BYTES = 256 * 1024


class PeerClosed(StorscpError):
    """The peer closed the TCP connection."""


class SocketReader:
    """Reads exact byte counts from a blocking socket, buffered."""

    def __init__(self, sock: socket.socket, size: int = BUFFER_BYTES) -> None:
        self.sock = sock
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._timeout: float | None = None
        self.deadline = float("inf")

    @property
    def buffered(self) -> int:
        return self._end - self._start

    def set_wait(self, timeout_s: float, deadline_s: float | None = None) -> None:
        """Each wait for data lasts at most `timeout_s`; all of them end at `deadline_s`.

        The deadline is a monotonic time; with none, only the per-wait timeout holds.
        """
        if timeout_s != self._timeout:
            self.sock.settimeout(timeout_s)
            self._timeout = timeout_s
        self.deadline = float("inf") if deadline_s is None else deadline_s

    def _fill(self) -> None:
        """Receive more bytes after what is buffered (compacting first if needed)."""
        if time.monotonic() > self.deadline:
            raise TimeoutError("deadline passed while receiving a PDU")
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            self._compact()
        got = self.sock.recv_into(self._view[self._end :])
        if got == 0:
            raise PeerClosed()
        self._end += got

    def read(self, n: int) -> bytes:
        """Exactly `n` bytes (n may exceed the buffer: then it is read in parts)."""
        if n <= len(self._buf):
            while self._end - self._start < n:
                if len(self._buf) - self._start < n:
                    self._compact()
                self._fill()
            data = bytes(self._view[self._start : self._start + n])
            self._start += n
            return data
        parts: list[bytes] = []
        self.stream(n, lambda chunk: parts.append(bytes(chunk)))
        return b"".join(parts)

    def _compact(self) -> None:
        kept = self._end - self._start
        self._buf[:kept] = self._view[self._start : self._end]
        self._start, self._end = 0, kept

    def stream(self, n: int, sink: Callable[[memoryview], None]) -> None:
        """Pass exactly `n` bytes to `sink` in buffer-sized memoryviews."""
        while n > 0:
            if self._start == self._end:
                self._fill()
            take = min(n, self._end - self._start)
            sink(self._view[self._start : self._start + take])
            self._start += take
            n -= take
