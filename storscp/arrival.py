"""Arrival order of depot files: a token that never goes back, across processes and boots.

A ready file's name starts with its arrival token `<boot>.<tick>`:

- `boot` counts the machine's boots, durably, in `<state_dir>/boot` (keyed by
  `/proc/sys/kernel/random/boot_id`, written and fsynced once per boot);
- `tick` is CLOCK_MONOTONIC in nanoseconds (system-wide on Linux, never steps
  back with NTP or a VM resume, restarts at boot), but never less than one
  more than the last tick handed out; that last tick lives in
  `<state_dir>/arrival` and only has to outlive processes, not the boot.

Taking a token and renaming a file to its ready name happen under one lock
(`ordered()`: a thread lock plus an flock on `<state_dir>/arrival`), so token
order is the order in which ready files appear in the depot. The committer
lists the depot under the same lock: when it sees a token, every smaller one
is already visible. Wall-clock time plays no part.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storscp.errors import StorscpError

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
BOOT_FILE = "boot"
ARRIVAL_FILE = "arrival"
# Last (boot, tick) handed out, at offset 0 of the arrival file.
_LAST = struct.Struct("<QQ")
BOOT_DIGITS = 6
TICK_DIGITS = 20
TOKEN_LENGTH = BOOT_DIGITS + 1 + TICK_DIGITS


class ArrivalError(StorscpError, OSError):
    """The boot counter cannot be read or written."""


def format_token(boot: int, tick: int) -> str:
    return f"{boot:0{BOOT_DIGITS}d}.{tick:0{TICK_DIGITS}d}"


def parse_token(text: str) -> tuple[int, int] | None:
    """(boot, tick) of a token, or None if `text` does not start with one."""
    head = text[:TOKEN_LENGTH]
    if len(head) != TOKEN_LENGTH or head[BOOT_DIGITS] != ".":
        return None
    boot, tick = head[:BOOT_DIGITS], head[BOOT_DIGITS + 1 :]
    if not (boot.isdigit() and tick.isdigit()):
        return None
    return int(boot), int(tick)


def current_boot_id() -> str:
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError as exc:
        raise ArrivalError(exc.errno, f"cannot read {BOOT_ID_PATH}: {exc.strerror}") from None


class Arrival:
    """Hands out arrival tokens for one state directory (one depot).

    Safe to share between the threads of a process; processes coordinate
    through the flock.
    """

    def __init__(self, state_dir: Path, seed_boot: int = 0) -> None:
        """Open (creating) the arrival file and learn this boot's number.

        `seed_boot`: the highest boot number seen elsewhere (tokens in the
        depot), used only when the boot file is missing, so that a lost boot
        file never numbers a new boot below files already waiting.
        """
        self.state_dir = state_dir
        self._thread_lock = threading.Lock()
        self._fd = os.open(state_dir / ARRIVAL_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            with self.ordered():
                self.boot = _this_boot(state_dir, seed_boot)
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    @contextmanager
    def ordered(self) -> Iterator[None]:
        """Hold the arrival lock: no token is taken and no ready file appears meanwhile."""
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def take(self) -> str:
        """The next token; call inside `ordered()`, and rename before leaving it."""
        raw = os.pread(self._fd, _LAST.size, 0)
        last_boot, last_tick = _LAST.unpack(raw) if len(raw) == _LAST.size else (0, 0)
        floor = last_tick + 1 if last_boot == self.boot else 0
        tick = max(time.monotonic_ns(), floor)
        os.pwrite(self._fd, _LAST.pack(self.boot, tick), 0)
        return format_token(self.boot, tick)

    def now(self) -> tuple[int, int]:
        """(boot, CLOCK_MONOTONIC ns): comparable with the tokens of this boot."""
        return self.boot, time.monotonic_ns()


def _this_boot(state_dir: Path, seed_boot: int) -> int:
    """This boot's number: the stored one if the boot id matches, else one more, durably."""
    boot_id = current_boot_id()
    path = state_dir / BOOT_FILE
    stored_id, number = "", seed_boot
    try:
        fields = path.read_text().split()
        if len(fields) == 2 and fields[1].isdigit():
            stored_id, number = fields[0], max(int(fields[1]), seed_boot)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ArrivalError(exc.errno, f"cannot read {path}: {exc.strerror}") from None
    if stored_id == boot_id:
        return number
    number += 1
    if number >= 10**BOOT_DIGITS:
        raise ArrivalError(0, f"{path}: boot counter exhausted")
    tmp = path.with_name(BOOT_FILE + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, f"{boot_id} {number}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ArrivalError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
    return number
