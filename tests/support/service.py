"""Run a real storscp service for a test, and read its logs and its state.

`start()` runs `storscp run` (supervisord in the foreground, in its own
session); `start_daemon()` runs `storscp start`. Either way the service is on
a free loopback port (port 0; the port is read from the receiver's START
event). Teardown stops it (SIGTERM or `storscp stop`), waits, and fails the
test if any process it started is still alive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from storscp.logger.lines import ParsedLine, parse_line
from storscp.logger.reader import read_lines
from storscp.receiver.depot import SPARE_PARTS

T = TypeVar("T")

STORSCP = str(Path(sys.executable).with_name("storscp"))
SUPERVISORCTL = str(Path(sys.executable).with_name("supervisorctl"))
COMPONENTS = ("listener", "logger", "committer", "feed", "commitment", "receiver", "metrics")
COMPONENT_MODULES = {
    "listener": "storscp.supervisor",
    "logger": "storscp.logger",
    "committer": "storscp.committer",
    "feed": "storscp.feed",
    "commitment": "storscp.commitment",
    "receiver": "storscp.receiver",
    "metrics": "storscp.metrics",
}


def as_from_a_terminal() -> None:
    """preexec_fn: Ctrl-C works as in a terminal (SIGINT default, so Python maps it
    to KeyboardInterrupt), even when this test run was started in the
    background, where SIGINT arrives ignored and would stay ignored across exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def poll_for(
    predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05
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


@dataclass(frozen=True)
class ProcessStatus:
    """One line of `supervisorctl status`: `receiver` or `receiver:receiver_0`."""

    name: str
    state: str
    pid: int | None

    @property
    def program(self) -> str:
        """The program (Supervisor group) a process belongs to."""
        return self.name.split(":", 1)[0]


def parse_supervisorctl_status(text: str) -> list[ProcessStatus]:
    """Parse `supervisorctl status` output; copes with `group:process` names."""
    out: list[ProcessStatus] = []
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[1].isupper():
            continue
        pid = None
        rest = parts[2] if len(parts) > 2 else ""
        if rest.startswith("pid "):
            pid = int(rest[4:].split(",", 1)[0])
        out.append(ProcessStatus(parts[0], parts[1], pid))
    return out


def toml_value(value: object) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Service:
    """One storscp service under test."""

    def __init__(
        self,
        root: Path,
        *,
        cli: Sequence[str] = (STORSCP,),
        env: Mapping[str, str] | None = None,
        storage_dir: Path | None = None,
        **keys: object,
    ) -> None:
        """`cli` and `env` say how to run the storscp command (default: the venv's).

        `storage_dir`: another service's, for nodes that share one storage.
        """
        self.root = root
        self.cli_argv = list(cli)
        self.env = dict(env) if env is not None else None
        self.storage_dir = storage_dir or root / "storage"
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
            # The endpoint is on by default; a free port, so tests never collide.
            "metrics": "127.0.0.1:0",
        }
        self.keys.update(keys)
        self.config_path = root / "storscp.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.tls_port = 0
        self.metrics_port = 0
        self.pids: set[int] = set()
        self.supervisord_pids: set[int] = set()
        self.extension = str(self.keys.get("extension", ".dcm"))
        # The one-process programs whose START means "started" (an older build has fewer).
        self.singles = {"committer", "feed", "commitment", "logger", "listener"}

    @property
    def depot_dir(self) -> Path:
        """The depot, or this node's own with the `node` key (depot/<node>/)."""
        node = str(self.keys.get("node", ""))
        return self.storage_dir / "depot" / node if node else self.storage_dir / "depot"

    def write_config(self) -> None:
        """Scalars and arrays first, then tables and arrays of tables (lists of dicts)."""

        def is_table(v: object) -> bool:
            return isinstance(v, dict) or (
                isinstance(v, list) and any(isinstance(i, dict) for i in v)
            )

        lines = [f"{k} = {toml_value(v)}" for k, v in self.keys.items() if not is_table(v)]
        for key, value in self.keys.items():
            if not is_table(value):
                continue
            if isinstance(value, dict):
                lines.append(f"[{key}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in value.items()]
            elif isinstance(value, list):
                for table in value:
                    lines.append(f"[[{key}]]")
                    lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 30.0) -> Service:
        """`storscp run` (or again after a stop); returns once every component STARTed anew."""
        self._record_pids()
        known = set(self.pids)
        self.launch()
        return self.wait_started(known, timeout_s)

    def wait_started(self, known: set[int], timeout_s: float = 30.0) -> Service:
        """Wait for a START of every component with a pid not in `known`."""
        poll_for(
            lambda: self._all_started(known) or self._died(),
            timeout_s,
            "every component to START",
        )
        self._read_port()
        return self

    def launch(self) -> None:
        """`storscp run` in its own session, without waiting for anything."""
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        out = open(self.root / "storscp-run.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*self.cli_argv, "run", "-c", str(self.config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
            # Not the caller's directory: the components run `python -m
            # storscp.<name>`, which puts the working directory first on
            # sys.path, so from a checkout's root they would import that
            # checkout's code rather than the venv's (bench.feed --baseline).
            cwd=self.root,
        )
        out.close()
        self.supervisord_pids.add(self.proc.pid)

    def start_daemon(self, timeout_s: float = 30.0) -> Service:
        """`storscp start`; returns once it said so and every component STARTed."""
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self._record_pids()
        known = set(self.pids)
        result = self.command("start", timeout_s=120)
        assert result.returncode == 0, f"storscp start: {result.stdout}{result.stderr}"
        assert result.stdout.strip().splitlines()[-1] == "start request issued", result.stdout
        self.supervisord_pids.add(self.supervisord_pid())
        poll_for(lambda: self._all_started(known), timeout_s, "every component to START")
        self._read_port()
        return self

    def _read_port(self) -> None:
        receiver = self.last_start("receiver")
        assert receiver is not None
        self.port = int(receiver["port"])
        tls_port = receiver.get("tls_port")
        self.tls_port = int(tls_port) if tls_port else 0
        metrics = self.last_start("metrics") if self.has_metrics else None
        self.metrics_port = int(metrics["port"]) if metrics is not None else 0

    def receiver_count(self) -> int:
        """How many receiver processes this service runs (`receivers`, 0: one per core)."""
        return int(str(self.keys.get("receivers", 0))) or (os.cpu_count() or 1)

    def current_port(self) -> int:
        """The port of the latest receiver START (it changes when a fresh start picks one)."""
        receiver = self.last_start("receiver")
        return int(receiver["port"]) if receiver is not None else self.port

    def command(
        self, *args: str, timeout_s: float = 120, prefix: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """`storscp <args> -c storscp.toml`, optionally behind `prefix` (runuser ...)."""
        return subprocess.run(
            [*prefix, *self.cli_argv, *args, "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=self.env,
            cwd=self.root,
        )

    def supervisord_pid(self) -> int:
        return int((self.run_dir / "supervisord.pid").read_text().strip())

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"storscp run exited with {self.proc.returncode}: {self.output()}")
        return False

    def _record_pids(self) -> None:
        for e in self.events("START"):
            if "pid" in e.fields:
                self.pids.add(int(e["pid"]))

    def _all_started(self, known: set[int] | frozenset[int] | int = frozenset()) -> bool:
        """Every component has a START that is new: after the first `known` START
        events (an int), or with a pid not in `known` (a set)."""
        starts = self.events("START")
        self._record_pids()
        if isinstance(known, int):
            fresh = starts[known:]
        else:
            fresh = [e for e in starts if int(e.get("pid") or 0) not in known]
        procs = {e["proc"] for e in fresh}
        receivers = sum(1 for e in fresh if e["proc"] == "receiver")
        expected = self.singles | ({"metrics"} if self.has_metrics else set())
        return expected <= procs and receivers >= self.receiver_count()

    @property
    def has_metrics(self) -> bool:
        """Whether this service runs the metrics endpoint (`metrics` not empty)."""
        return bool(self.keys.get("metrics", True))

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

    def wait_depot_swept(self, timeout_s: float = 120) -> None:
        """Until depot_entries() is empty (the committer's sweep takes a dead
        receiver's parts once PART_GRACE_S old); on timeout, say what is left."""
        try:
            poll_for(lambda: self.depot_entries() == [], timeout_s, "the depot to be swept")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; left: {self.depot_entries()}") from None

    def depot_entries(self) -> list[str]:
        """Depot files that should not be there now: ready files, parts holding
        data, and empty parts beyond the spares of the live receivers.

        Each receiver keeps up to SPARE_PARTS empty `*.part` files created in
        advance: those are counted per receiver (its pid is in their names),
        not listed, while they are no more than its pool; those of a receiver
        that is gone are listed (it removes its own at stop, the committer's
        sweep those of one that was killed), so after a stop none may remain.
        """
        if not self.depot_dir.is_dir():
            return []
        held: list[str] = []
        spares: list[str] = []
        for entry in os.scandir(self.depot_dir):
            if entry.name.startswith("."):
                continue  # a node's lock file, not an instance
            try:
                empty_part = entry.name.endswith(".part") and entry.stat().st_size == 0
            except FileNotFoundError:
                continue
            (spares if empty_part else held).append(entry.name)
        if spares:
            live = set(self.live_components("receiver"))
            per_receiver = Counter(_creator_pid(name) for name in spares)
            held += [
                name
                for name in spares
                if _creator_pid(name) not in live or per_receiver[_creator_pid(name)] > SPARE_PARTS
            ]
        return sorted(held)

    # -- supervision --------------------------------------------------------

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SUPERVISORCTL, "-c", str(self.run_dir / "supervisord.conf"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def process_statuses(self) -> list[ProcessStatus]:
        return parse_supervisorctl_status(self.supervisorctl("status").stdout)

    def program_processes(self, program: str) -> list[ProcessStatus]:
        """Every process of `program` (one, or several with numprocs)."""
        return [p for p in self.process_statuses() if p.program == program]

    def running_pids(self, program: str) -> list[int]:
        return [p.pid for p in self.program_processes(program) if p.state == "RUNNING" and p.pid]

    def wait_running_again(self, program: str, killed_pid: int, timeout_s: float) -> float:
        """Poll until every process of `program` is RUNNING with a new pid; seconds taken."""
        started = time.monotonic()

        def recovered() -> bool:
            procs = self.program_processes(program)
            return bool(procs) and all(
                p.state == "RUNNING" and p.pid not in (None, killed_pid) for p in procs
            )

        poll_for(recovered, timeout_s, f"{program} RUNNING again", interval_s=0.1)
        return time.monotonic() - started

    def is_up(self) -> bool:
        """Whether a supervisord answers on this service's control socket."""
        return self.command("status", timeout_s=60).returncode in (0, 1)

    def stop(self, timeout_s: float = 90.0, clean_depot: bool = True) -> None:
        """Stop supervisord, however it was started; then make sure nothing survives.

        After a stop no instance data may be left in the depot: everything
        acknowledged was committed.
        """
        self._all_started()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.proc = None
        if self.config_path.exists() and self.is_up():
            with_pidfile = (self.run_dir / "supervisord.pid").exists()
            if with_pidfile:
                self.supervisord_pids.add(self.supervisord_pid())
            result = self.command("stop", timeout_s=timeout_s)
            assert result.returncode == 0, f"storscp stop: {result.stdout}{result.stderr}"
        leftover = self.live_processes()
        deadline = time.monotonic() + 10
        while leftover and time.monotonic() < deadline:
            time.sleep(0.1)
            leftover = self.live_processes()
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        assert not leftover, f"processes still alive after stop: {leftover}"
        if clean_depot:
            remaining = self.depot_entries()
            assert not remaining, f"instance data left in the depot after stop: {remaining}"

    def live_processes(self) -> list[int]:
        """supervisord and component pids of this service (by run_dir) still running."""
        pids = self.pids | self.supervisord_pids
        return sorted(p for p in pids if _alive(p) and _cmdline_has(p, str(self.run_dir)))

    def live_components(self, program: str | None = None) -> list[int]:
        """Live processes of this service's components, found in /proc by their argv."""
        target = str(self.run_dir / "effective.toml")
        modules = {COMPONENT_MODULES[program]} if program else set(COMPONENT_MODULES.values())
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            argv = _cmdline(int(entry))
            matches = len(argv) >= 4 and argv[-1] == target and argv[-3] in modules
            if matches and _alive(int(entry)):
                found.append(int(entry))
        return sorted(found)


def _creator_pid(part_name: str) -> int | None:
    """The pid in a part file's name (`<nanoseconds>-<pid>-<n>.part`)."""
    fields = part_name.split("-")
    return int(fields[1]) if len(fields) == 3 and fields[1].isdigit() else None


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return text.encode() in fh.read()
    except FileNotFoundError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [part.decode(errors="replace") for part in fh.read().split(b"\0")[:-1]]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    return _alive(pid)


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


@contextlib.contextmanager
def running_service(**keys: object) -> Iterator[Service]:
    """A started service in its own short temporary directory, stopped and removed after.

    For fixtures wider than a test (`service_factory` is per test), so that
    several tests share one service's start and stop.
    """
    root = short_tempdir()
    (root / "svc").mkdir()
    svc = Service(root / "svc", **cast(dict[str, Any], keys))  # configuration keys only
    try:
        yield svc.start()
    finally:
        try:
            svc.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
