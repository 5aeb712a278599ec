"""A real logger component on its own, for tests of what talks to it.

`python -m storscp.logger -c <config>` in a short temporary directory, like
supervisord starts it, without the rest of the service. `stop()` sends
SIGTERM (it drains and fsyncs), `kill()` SIGKILL, `start()` again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

from storscp import bus
from storscp.logger.lines import ParsedLine, parse_line
from storscp.logger.reader import read_lines

from .service import poll_for, short_tempdir

DISK_FULL = "No space left on device"


class LoneLogger:
    def __init__(self, log_max_bytes: int = 64_000_000) -> None:
        self.root = short_tempdir("lg")
        self.log_dir = self.root / "log"
        self.run_dir = self.root / "run"
        (self.run_dir / "bus").mkdir(parents=True)
        self.config = self.root / "storscp.toml"
        self.config.write_text(
            f'log_dir = "{self.log_dir}"\nrun_dir = "{self.run_dir}"\n'
            f'storage_dir = "{self.root}"\nlog_max_bytes = {log_max_bytes}\n'
        )
        self.endpoint = bus.logger_endpoint(self.run_dir)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, disk_full: bool = False) -> LoneLogger:
        """Start it; wait for its START line (`disk_full`: for it to say it cannot write)."""
        starts = len(self.lines("START", proc="logger"))
        complaints = self.stderr().count(DISK_FULL)

        def started() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                return True
            if disk_full:
                return self.stderr().count(DISK_FULL) > complaints
            return len(self.lines("START", proc="logger")) > starts

        with open(self.root / "logger.err", "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "storscp.logger", "-c", str(self.config)], stderr=err
            )
        poll_for(started, 30, "the logger's START")
        assert self.proc.poll() is None, self.stderr()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def stderr(self) -> str:
        path = self.root / "logger.err"
        return path.read_text(errors="replace") if path.exists() else ""

    def lines(self, type_: str | None = None, **match: str) -> list[ParsedLine]:
        if not self.log_dir.exists():
            return []
        parsed = [parse_line(raw.decode("utf-8", "replace")) for raw in read_lines(self.log_dir)]
        return [
            p
            for p in parsed
            if p is not None
            and (type_ is None or p.type == type_)
            and all(p.get(k) == v for k, v in match.items())
        ]
