"""What a dead supervisord left behind: its pidfile and its draining components.

A supervisord killed with SIGKILL leaves its pidfile, and its components get
SIGTERM from the kernel (PR_SET_PDEATHSIG) and drain; a new start waits for
them instead of racing them for the port and the log lock.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from storscp.config import Config

COMPONENT_MODULES = {
    "storscp.supervisor": "listener",
    "storscp.logger": "logger",
    "storscp.committer": "committer",
    "storscp.commitment": "commitment",
    "storscp.receiver": "receiver",
    "storscp.metrics": "metrics",
}


def leftover_components(config: Config) -> list[tuple[str, int]]:
    """(program, pid) of live components started for this run_dir's effective.toml.

    Only meaningful when no supervisord answers: then these are orphans of one
    that died, still draining after the kernel's SIGTERM (PR_SET_PDEATHSIG).
    """
    target = str(config.effective_path)
    found: list[tuple[str, int]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _cmdline(int(entry))
        if len(argv) == 5 and argv[1] == "-m" and argv[3] == "-c" and argv[4] == target:
            program = COMPONENT_MODULES.get(argv[2])
            if program is not None and not _is_zombie(int(entry)):
                found.append((program, int(entry)))
    return sorted(found)


def wait_for_leftovers(config: Config, timeout_s: float) -> list[tuple[str, int]]:
    """Wait for orphaned components to finish draining; return those still alive."""
    deadline = time.monotonic() + timeout_s
    left = leftover_components(config)
    if left:
        names = ", ".join(f"{name} pid {pid}" for name, pid in left)
        print(
            f"storscp: waiting for components of a previous run to stop ({names})",
            file=sys.stderr,
            flush=True,
        )
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftover_components(config)
    return left


def stale_supervisord_pid(pidfile: Path) -> int | None:
    """The pid in a pidfile that supervisord left behind when it was killed.

    supervisord removes its pidfile on a clean exit, so one that remains while
    no supervisord answers tells of a kill (or a crash).
    """
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is dead; another user's is alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0")[:-1]]


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
