"""The receivers under test, each started and stopped the same way.

- dcmtk: DCMTK `storescp --fork +xa`, one child process per association.
- pynetdicom: pynetdicom's `storescp` app (`python -m pynetdicom storescp`).
- storscp: this project, started as a black box with `storscp run -c <toml>`;
  the bound port comes from the receiver's START event in its log.
- orthanc: in bench/orthanc.py (its own configuration and REST API).

Every server runs in its own session (process group) so the harness can stop
exactly what it started. DCMTK processes get TCP_NODELAY=1 in their
environment: Debian's DCMTK leaves Nagle's algorithm on otherwise, and every
C-STORE response then waits ~40 ms for a delayed ACK.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

from storscp.config import Config
from tests.support.service import Service, poll_for

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
AE_TITLE = "STORSCP"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0


def free_port() -> int:
    """A port that was free a moment ago (for servers that cannot report theirs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def echo_ok(port: int) -> bool:
    """One C-ECHO with DCMTK's echoscu: the server is up and answering DIMSE."""
    result = subprocess.run(
        ["echoscu", "-aec", AE_TITLE, "-to", "2", "127.0.0.1", str(port)],
        capture_output=True,
        env=DCMTK_ENV,
        timeout=30,
    )
    return result.returncode == 0


class Server(ABC):
    """A receiver with an output directory and a root process to measure."""

    name: str = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.output_dir = root / "storage"
        self.trash_dir = root / "trash"
        self._trash_names = itertools.count()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._terminated = False

    @property
    def pid(self) -> int:
        """Root of the process tree that the meter charges."""
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def uid_of(self, filename: str) -> str | None:
        """The SOP Instance UID a stored file's name stands for (None: not an instance)."""

    @abstractmethod
    def describe(self) -> str:
        """The command line, for the report."""

    def visible(self, expected: set[str]) -> bool:
        """Every expected UID is in the output directory (storscp commits after Success)."""
        return expected <= self.stored_files().keys()

    def stored_files(self) -> dict[str, Path]:
        """uid -> path of every file in the output directory (subdirectories skipped)."""
        found: dict[str, Path] = {}
        with os.scandir(self.output_dir) as entries:
            for entry in entries:
                if not entry.is_file(follow_symlinks=False):
                    continue
                uid = self.uid_of(entry.name)
                # A name that is no instance stays visible to verification as extra.
                found[uid if uid is not None else f"not an instance: {entry.name}"] = Path(
                    entry.path
                )
        return found

    def clear_output(self) -> None:
        """Empty the output directory for the next run, freeing blocks but no inodes.

        On ext4 without a journal (this VM's disk), creating a file scans past
        every inode freed in the last minutes (`recently_deleted()` in
        fs/ext4/ialloc.c): deleting thousands of files between runs made the
        next server's creates up to 30x slower and the numbers depend on who ran
        after whom. So files are truncated and moved aside, and the trash is
        deleted only when the benchmark is over (`empty_trash`).
        """
        self.trash_dir.mkdir(parents=True, exist_ok=True)
        for path in self.stored_files().values():
            os.truncate(path, 0)
            path.rename(self.trash_dir / f"{next(self._trash_names)}")

    def empty_trash(self) -> None:
        shutil.rmtree(self.trash_dir, ignore_errors=True)

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / "server.out", "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.root,
                start_new_session=True,
            )

    def _wait_for_echo(self) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.output()}"
                )
            return echo_ok(self.port)

        poll_for(ready, START_TIMEOUT_S, f"{self.name} to answer C-ECHO", interval_s=0.1)

    def output(self) -> str:
        try:
            return (self.root / "server.out").read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def terminate(self) -> None:
        """Ask the server to stop (SIGTERM) without waiting, so several stop at once."""
        if self.proc is not None and self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self) -> None:
        """SIGTERM the root, wait, then SIGKILL whatever is left of its process group."""
        self.terminate()
        proc, self.proc = self.proc, None
        self._terminated = False
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"{self.name}: no exit after SIGTERM, killing", file=sys.stderr)
        # The group is ours (start_new_session): children such as forked DCMTK
        # association handlers must not outlive the benchmark.
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _strip_modality_prefix(filename: str) -> str | None:
    """`CT.1.2.3` -> `1.2.3`: DCMTK and pynetdicom prefix the UID with a modality code."""
    prefix, sep, rest = filename.partition(".")
    if not sep or not prefix.isalpha() or not rest[:1].isdigit():
        return None
    return rest


class Dcmtk(Server):
    name = "dcmtk"

    def argv(self) -> list[str]:
        # +xa: accept every transfer syntax; --fork: one process per association.
        # DCMTK 3.6.7's storescp has no bind-address option: it listens on all
        # interfaces, and the benchmark only ever connects to 127.0.0.1.
        return [
            "storescp",
            "--fork",
            "+xa",
            "-aet",
            AE_TITLE,
            "-od",
            str(self.output_dir),
            str(self.port),
        ]

    def start(self) -> None:
        self.port = free_port()
        self._spawn(self.argv(), env=DCMTK_ENV)
        self._wait_for_echo()

    def uid_of(self, filename: str) -> str | None:
        return _strip_modality_prefix(filename)

    def describe(self) -> str:
        return "TCP_NODELAY=1 " + " ".join(self.argv()).replace(str(self.port), "PORT")


class Pynetdicom(Server):
    name = "pynetdicom"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pynetdicom",
            "storescp",
            str(self.port),
            "-aet",
            AE_TITLE,
            "-ba",
            "127.0.0.1",
            "-od",
            str(self.output_dir),
        ]

    def start(self) -> None:
        self.port = free_port()
        self._spawn(self.argv())
        self._wait_for_echo()

    def uid_of(self, filename: str) -> str | None:
        return _strip_modality_prefix(filename)

    def describe(self) -> str:
        argv = ["python", *self.argv()[1:]]
        return " ".join(argv).replace(str(self.port), "PORT", 1)


class Storscp(Server):
    name = "storscp"

    env: dict[str, str] | None = None

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        defaults = Config()
        # Production defaults, spelled out because the test helper shortens them.
        self.service = Service(
            root,
            env=self.env,
            depot_scan_interval_s=defaults.depot_scan_interval_s,
            drain_timeout_s=defaults.drain_timeout_s,
        )
        self.output_dir = self.service.storage_dir

    @property
    def pid(self) -> int:
        assert self.service.proc is not None, "storscp is not running"
        return self.service.proc.pid

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.service.start(timeout_s=START_TIMEOUT_S)
        self.port = self.service.port
        self.proc = self.service.proc

    def component_pids(self) -> dict[str, int]:
        """proc -> pid from the latest START events (for checking the tree covers them)."""
        out: dict[str, int] = {}
        for event in self.service.events("START"):
            if "pid" in event.fields:
                out[event["proc"]] = int(event["pid"])
        return out

    def terminate(self) -> None:
        """Nothing ahead of stop(): a second SIGTERM would mean "stop now" to storscp."""

    def stop(self) -> None:
        if self.service.proc is not None:
            self.service.stop(STOP_TIMEOUT_S)
        self.proc = None

    def uid_of(self, filename: str) -> str | None:
        ext = self.service.extension
        return filename[: -len(ext)] if filename.endswith(ext) else None

    def describe(self) -> str:
        return "storscp run -c storscp.toml  (host 127.0.0.1, port 0, other keys default)"


class StorscpWithoutFsync(Storscp):
    """Diagnostic: storscp with os.fsync a no-op (bench/nofsync/sitecustomize.py).

    Not a fair competitor and not a mode of the service: the difference to
    `storscp` is what fsync-before-Success costs on this disk.
    """

    name = "storscp-nofsync"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent / "nofsync")}

    def describe(self) -> str:
        return "PYTHONPATH=bench/nofsync " + super().describe() + "; os.fsync is a no-op"
