"""Process plumbing shared by the components: stop signals, parent death.

Signal handlers only set an Event (no logging, no I/O in a handler); a
second signal means "now". Components ask the kernel to SIGTERM them when
supervisord dies, so a killed supervisord never leaves an orphaned receiver
on the port or a second logger.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from types import FrameType

PR_SET_PDEATHSIG = 1


class StopFlag:
    """Set by SIGTERM/SIGINT; `urgent` once a second signal arrives."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.urgent = threading.Event()

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            self.urgent.set()
        self.requested.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self.requested.wait(timeout_s)


def die_with_parent() -> None:
    """Have the kernel send SIGTERM when our parent (supervisord) exits.

    Linux-only; elsewhere a no-op. If the parent already died between fork and
    here, we are an orphan and stop at once.
    """
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
