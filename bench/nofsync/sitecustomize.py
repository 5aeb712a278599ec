"""Diagnostic only: makes os.fsync a no-op in every process that imports it.

The benchmark's `storscp-nofsync` server puts this directory on PYTHONPATH
so that storscp runs exactly as shipped except that nothing reaches the disk
before Success. Comparing it with `storscp` shows what the durability promise
costs per instance; it is not a mode of the service and never will be.
"""

import os
from typing import Any


def _no_fsync(fd: Any) -> None:
    del fd


os.fsync = _no_fsync
