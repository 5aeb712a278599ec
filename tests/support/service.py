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
        self.tls_port = 0
        self.pids: set[int] = set()
        self.extension = str(self.keys.get("extension", ".dcm"))

    @property
    def depot_dir(self) -> Path:
        return self.storage_dir / "depot"

    def write_config(self) -> None:
        """Scalars first, then tables (dict values) and arrays of tables (lists of dicts)."""
        lines = [
            f"{k} = {toml_value(v)}" for k, v in self.keys.items() if not isinstance(v, dict | list)
        ]
        for key, value in self.keys.items():
            if isinstance(value, dict):
                lines.append(f"[{key}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in value.items()]
            elif isinstance(value, list):
                for table in value:
                    lines.append(f"[[{key}]]")
                    lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 30.0) -> Service:
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
        poll_for(
            lambda: self._all_started() or self._died(), timeout_s, "all four components to START"
        )
        receiver = self.last_start("receiver")
        assert receiver is not None
        self.port = int(receiver["port"])
        tls_port = receiver.get("tls_port")
        self.tls_port = int(tls_port) if tls_port else 0
        return self

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"storscp run exited with {self.proc.returncode}: {self.output()}")
        return False

    def _all_started(self) -> bool:
        procs = {e["proc"] for e in self.events("START")}
        for e in self.events("START"):
            if "pid" in e.fields:
                self.pids.add(int(e["pid"]))
        return {"receiver", "committer", "logger", "listener"} <= procs

    def output(self) -> str:
        try:
            return (self.root / "storscp-run.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- logs ---------------------------------------------------------------

    def log_lines(self) -> list[ParsedLine]:
        """Both log files as one stream, older file first."""
        files = [
            p for p in (self.log_dir / "storscp1.log", self.log_dir / "storscp2.log") if p.exists()
        ]
        files.sort(key=lambda p: (p.stat().st_mtime_ns, -p.stat().st_size))
        out: list[ParsedLine] = []
        for path in files:
            for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
                parsed = parse_line(raw)
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
        """Depot files holding instance data: ready files and non-empty parts.

        Receivers keep a few empty `*.part` files created in advance (they
        are removed at stop); those hold nothing and are not listed.
        """
        if not self.depot_dir.exists():
            return []
        held = []
        for entry in os.scandir(self.depot_dir):
            try:
                if entry.name.endswith(".part") and entry.stat().st_size == 0:
                    continue
            except FileNotFoundError:
                continue
            held.append(entry.name)
        return sorted(held)

    # -- supervision --------------------------------------------------------

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SUPERVISORCTL, "-c", str(self.run_dir / "supervisord.conf"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self, timeout_s: float = 60.0, clean_depot: bool = True) -> None:
        """SIGTERM supervisord; then make sure nothing we started survives.

        After a stop no instance data may be left in the depot: everything
        acknowledged was committed.
        """
        proc = self.proc
        if proc is None:
            return
        self._all_started()
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
        if clean_depot:
            remaining = self.depot_entries()
            assert not remaining, f"instance data left in the depot after stop: {remaining}"

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
