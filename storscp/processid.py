"""This process's id without a system call per question.

`os.getpid()` is a system call. The hot paths that ask for it per instance
(part names, prometheus_client's multiprocess values, which check for a
fork at every increment) ask `current()` instead: read once, and again in a
child after `fork`, so a forked process never reports its parent's id.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def current() -> int:
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)
