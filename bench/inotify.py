"""A minimal inotify reader (ctypes, Linux only) that timestamps new names.

Used by the latency scenario: it records the wall-clock time (time.time(),
the clock storescu's log timestamps use) the moment a name appears in a
directory (IN_MOVED_TO for an atomic rename, IN_CREATE for a
server that writes in place). Polling with stat() would add its own interval
to every measurement; inotify wakes the reader as the rename happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import threading
import time
from pathlib import Path

IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class DirectoryWatcher:
    """Record the first time each name appears in `directory`, from a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.first_seen: dict[str, float] = {}
        self.overflowed = False
        self._stop = threading.Event()
        self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(directory), IN_MOVED_TO | IN_CREATE)
        if wd < 0:
            errno = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(errno, f"inotify_add_watch {directory} failed")
        self._thread = threading.Thread(target=self._run, name="inotify", daemon=True)

    def __enter__(self) -> DirectoryWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            now = time.time()
            try:
                buf = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                continue
            offset = 0
            while offset < len(buf):
                _wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
                offset += _EVENT.size
                name = buf[offset : offset + length].rstrip(b"\0").decode(errors="replace")
                offset += length
                if mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                elif name:
                    self.first_seen.setdefault(name, now)
