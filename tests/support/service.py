"""Run a real storscp service (`storscp run`) for a test, and read its logs.

The service runs in its own session on a free loopback port (port 0; the
port is read from the receiver's START event). Teardown stops it with
SIGTERM, waits, and fails the test if any process it started is still alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from storscp.logger.lines import ParsedLine, parse_line
from storscp.logger.reader import read_lines

T = TypeVar("T")

STORSCP = str(Path(sys.executable).with_name("storscp"))
SUPERVISORCTL = str(Path(sys.executable).with_name("supervisorctl"))


def poll_for(
    predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Return the first truthy value of predicate(), or fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def short_tempdir(prefix: str = "st") -> Path:
    """A short directory under /tmp: ipc socket paths must stay under ~100 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Service:
    """One storscp service under test."""

    def __init__(self, root: Path, **keys: object) -> None:
        self.root = root
        self.storage_dir = root / "storage"
        self.log_dir = root / "log"
        self.run_dir = root / "run"
        self.keys: dict[str, object] = {
            "host": "127.0.0.1",
            "port": 0,
            "storage_dir": str(self.storage_dir),
            "log_dir": str(self.log_dir),
            "run_dir": str(self.run_dir),
            "depot_scan_interval_s": 0.5,
            "drain_timeout_s": 5,
        }
        self.keys.update(keys)
        self.config_path = root / "storscp.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.pids: set[int] = set()
        self.extension = str(self.keys.get("extension", ".dcm"))

    @property
    def depot_dir(self) -> Path:
        return self.storage_dir / "depot"

    def write_config(self) -> None:
        lines = [f"{k} = {toml_value(v)}" for k, v in self.keys.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 30.0) -> Service:
        """Start (or start again) and wait for a new START of every component."""
        self._record_pids()
        known = set(self.pids)
        self.launch()
        return self.wait_started(known, timeout_s)

    def wait_started(self, known: set[int], timeout_s: float = 30.0) -> Service:
        """Wait for a START of every component with a pid not in `known`."""
        poll_for(
            lambda: self._all_started(known) or self._died(),
            timeout_s,
            "all four components to START",
        )
        receiver = self.last_start("receiver")
        assert receiver is not None
        self.port = int(receiver["port"])
        return self

    def launch(self) -> None:
        """`storscp run` in its own session, without waiting for anything."""
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        out = open(self.root / "storscp-run.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [STORSCP, "run", "-c", str(self.config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"storscp run exited with {self.proc.returncode}: {self.output()}")
        return False

    def _record_pids(self) -> None:
        for e in self.events("START"):
            if "pid" in e.fields:
                self.pids.add(int(e["pid"]))

    def _all_started(self, known: set[int] | frozenset[int] = frozenset()) -> bool:
        """Every component has a START whose pid is not in `known`."""
        starts = self.events("START")
        self._record_pids()
        procs = {e["proc"] for e in starts if int(e.get("pid") or 0) not in known}
        return {"receiver", "committer", "logger", "listener"} <= procs

    def pid_of(self, proc: str) -> int:
        """The pid in the last START of `proc`."""
        start = self.last_start(proc)
        assert start is not None, f"no START of {proc}"
        return int(start["pid"])

    def output(self) -> str:
        try:
            return (self.root / "storscp-run.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- logs ---------------------------------------------------------------

    def log_lines(self) -> list[ParsedLine]:
        """Both log files as one stream, older file first."""
        out: list[ParsedLine] = []
        for raw in read_lines(self.log_dir):
            parsed = parse_line(raw.decode("utf-8", errors="replace"))
            if parsed is not None:
                out.append(parsed)
        return out

    def events(self, type_: str | None = None, **match: str) -> list[ParsedLine]:
        return [
            e
            for e in self.log_lines()
            if (type_ is None or e.type == type_) and all(e.get(k) == v for k, v in match.items())
        ]

    def last_start(self, proc: str) -> ParsedLine | None:
        starts = self.events("START", proc=proc)
        return starts[-1] if starts else None

    def wait_event(
        self, type_: str, timeout_s: float = 15.0, count: int = 1, **match: str
    ) -> list[ParsedLine]:
        return poll_for(
            lambda: found if len(found := self.events(type_, **match)) >= count else None,
            timeout_s,
            f"{count} {type_} event(s) matching {match}",
        )

    # -- files --------------------------------------------------------------

    def stored_path(self, uid: str) -> Path:
        return self.storage_dir / f"{uid}{self.extension}"

    def wait_stored(self, uids: Iterable[str], timeout_s: float = 30.0) -> None:
        missing = set(uids)

        def all_there() -> bool:
            for uid in list(missing):
                if self.stored_path(uid).exists():
                    missing.discard(uid)
            return not missing

        poll_for(all_there, timeout_s, f"{len(missing)} stored files")

    def depot_entries(self) -> list[str]:
        return sorted(os.listdir(self.depot_dir)) if self.depot_dir.exists() else []

    # -- supervision --------------------------------------------------------

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SUPERVISORCTL, "-c", str(self.run_dir / "supervisord.conf"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM supervisord; then make sure nothing we started survives."""
        proc = self.proc
        if proc is None:
            return
        self._record_pids()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        leftover = self.live_components()
        deadline = time.monotonic() + 10
        while leftover and time.monotonic() < deadline:
            time.sleep(0.1)
            leftover = self.live_components()
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        self.proc = None
        assert not leftover, f"components still alive after stop: {leftover}"

    def live_components(self) -> list[int]:
        """Component pids of this service (by their config path) still running."""
        return [p for p in self.pids if _alive(p) and _cmdline_has(p, str(self.run_dir))]


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return text.encode() in fh.read()
    except FileNotFoundError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
