"""How did a process end? Read back from supervisord's own log.

Supervisor's PROCESS_STATE events carry no exit status, and its XML-RPC
`exitstatus` is cleared as soon as the process is spawned again (at once,
with autorestart) or when it exits within startsecs. What survives is the
line supervisord writes, synchronously, before it emits the state event:
`exited: receiver (exit status 69; not expected)`. So the listener and
`storscp status` read the tail of `<run_dir>/supervisord.log`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TAIL_BYTES = 256 * 1024

_SPAWNED_RE = re.compile(r" spawned: '(?P<name>.+)' with pid (?P<pid>\d+)$")
_ENDED_RE = re.compile(
    r" (?P<verb>exited|stopped): (?P<name>.+?) \((?P<how>.+?)"
    r"(?:; (?P<expected>not expected|expected))?\)$"
)
_STATUS_RE = re.compile(r"^exit status (?P<status>-?\d+)$")
_SIGNAL_RE = re.compile(r"^terminated by (?P<signal>\w+)")
_PREFIX_RE = re.compile(r"^storscp [a-z]+: ")


@dataclass(frozen=True, slots=True)
class LastExit:
    """The most recent end of one process, as supervisord logged it."""

    pid: int | None
    exit_status: int | None  # None when a signal ended it
    signal: str | None  # e.g. "SIGKILL"
    expected: bool | None  # None for a requested stop
    text: str  # supervisord's own words: "exit status 69"


def last_exit(log_path: Path, process_name: str) -> LastExit | None:
    """The last exit of `process_name` (Supervisor's process name, not group:name)."""
    pid: int | None = None
    found: LastExit | None = None
    for line in tail_lines(log_path, TAIL_BYTES):
        spawned = _SPAWNED_RE.search(line)
        if spawned is not None:
            if spawned["name"] == process_name:
                pid = int(spawned["pid"])
            continue
        ended = _ENDED_RE.search(line)
        if ended is None or ended["name"] != process_name:
            continue
        how = ended["how"]
        status = _STATUS_RE.match(how)
        signal = _SIGNAL_RE.match(how)
        found = LastExit(
            pid=pid,
            exit_status=int(status["status"]) if status else None,
            signal=signal["signal"] if signal else None,
            expected=None if ended["expected"] is None else ended["expected"] == "expected",
            text=how,
        )
    return found


def startup_reason(child_log: Path) -> str | None:
    """Why a component would not start: its last words, without `storscp <proc>: `."""
    line = last_line(child_log)
    return None if line is None else _PREFIX_RE.sub("", line, count=1)


def last_line(path: Path, max_chars: int = 300) -> str | None:
    """The last non-empty line of a (child) log, shortened; None if there is none."""
    for line in reversed(tail_lines(path, 16 * 1024)):
        text = line.strip()
        if text:
            return text if len(text) <= max_chars else text[: max_chars - 3] + "..."
    return None


def tail_lines(path: Path, max_bytes: int) -> list[str]:
    """Complete lines among the last `max_bytes` of a file; [] if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first one is probably cut
    return lines
