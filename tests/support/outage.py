"""Disrupting a running service's processes while DICOM senders keep storing.

The senders are support.timedscu processes (each times every C-STORE and
records its associations). The disruptions return the stretch of time they
affected (a `Window`, in time.time()), so that each answer can be put
beside what was being done to the service when it was awaited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import dicomfiles as df
from .service import Service, poll_for

TESTS_DIR = Path(__file__).resolve().parents[1]
# A disruption's effects (resends, a logger catching up) last a little longer than it.
AFTER_S = 1.0
MAX_SENDING_S = 600.0


@dataclass(frozen=True)
class Window:
    """A stretch of time (time.time()) in which something was done to the service."""

    what: str
    start: float
    end: float

    def overlaps(self, start: float, end: float) -> bool:
        return start < self.end and end > self.start


def make_files(root: Path, senders: int, per_sender: int, seed: int) -> list[list[Path]]:
    """Tiny CT images, `per_sender` for each sender."""
    batches = []
    for s in range(senders):
        batch = []
        for i in range(per_sender):
            path = root / f"s{s}_{i}.dcm"
            df.make_image(path, df.CT, seed=seed + s * per_sender + i, rows=16, columns=16)
            batch.append(path)
        batches.append(batch)
    return batches


def start_senders(
    svc: Service, batches: list[list[Path]], per_association: int = 0
) -> list[subprocess.Popen[str]]:
    """One timedscu process per batch, storing round and round until `results()`."""
    return [
        subprocess.Popen(
            [sys.executable, "-m", "support.timedscu", str(svc.port), str(MAX_SENDING_S)]
            + [str(p) for p in batch]
            + ["--per-association", str(per_association)],
            cwd=TESTS_DIR,
            env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for batch in batches
    ]


def results(senders: list[subprocess.Popen[str]], timeout_s: float = 60) -> list[dict[str, Any]]:
    """Stop the senders (each finishes its store and releases) and read what each saw."""
    for sender in senders:
        if sender.poll() is None:
            sender.terminate()
    out = []
    for sender in senders:
        try:
            stdout, _ = sender.communicate(timeout=timeout_s)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait(10)
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def running_pid(svc: Service, program: str) -> int:
    """A RUNNING process of `program` (a death within startsecs counts as a failed start)."""
    pids: list[int] = poll_for(
        lambda: svc.running_pids(program), 30, f"{program} RUNNING", interval_s=0.1
    )
    return pids[0]


def freeze(svc: Service, program: str, seconds: float) -> Window:
    """SIGSTOP a process of `program` for `seconds`, then SIGCONT."""
    pid = running_pid(svc, program)
    start = time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        threading.Event().wait(seconds)  # the disruption itself lasts this long
    finally:
        os.kill(pid, signal.SIGCONT)
    return Window(f"SIGSTOP {program} {seconds:.0f} s", start, time.time() + AFTER_S)


def kill(svc: Service, program: str) -> Window:
    """SIGKILL a process of `program`; the window lasts until Supervisor has it RUNNING again."""
    pid = running_pid(svc, program)
    start = time.time()
    os.kill(pid, signal.SIGKILL)
    svc.wait_running_again(program, pid, 30)
    return Window(f"SIGKILL {program}", start, time.time() + AFTER_S)


def thaw_all(svc: Service, program: str) -> None:
    """Never leave a frozen process behind (a test that fails mid-freeze)."""
    for pid in svc.running_pids(program):
        os.kill(pid, signal.SIGCONT)


def wait_writes(svc: Service, count: int, proc: str = "committer") -> None:
    poll_for(lambda: len(svc.events("WRITE", proc=proc)) >= count, 60, f"{count} WRITE events")


def slowest(timings: list[tuple[float, float]], windows: list[Window]) -> tuple[float, float]:
    """The longest answer to a request whose wait overlapped a window, and when it was sent."""
    hit = [
        (answer, sent)
        for sent, answer in timings
        if any(w.overlaps(sent, sent + answer) for w in windows)
    ]
    return max(hit, default=(0.0, 0.0))


@dataclass
class Run:
    """What the senders saw while `schedule` was done to the service."""

    records: list[dict[str, Any]]
    control: Window
    windows: list[Window]
    seconds: float

    @property
    def timings(self) -> list[tuple[float, float]]:
        """(sent at, answer time) of every C-STORE."""
        return [(float(t[0]), float(t[1])) for r in self.records for t in r["timings"]]

    @property
    def association_timings(self) -> list[tuple[float, float]]:
        """(sent at, answer time) of every A-ASSOCIATE-RQ and A-RELEASE-RQ."""
        return [(float(t[0]), float(t[1])) for r in self.records for t in r["association_timings"]]

    @property
    def failures(self) -> list[str]:
        return [f for r in self.records for f in r["failures"]]

    @property
    def acknowledged(self) -> Counter[str]:
        return Counter(uid for r in self.records for uid in r["acknowledged"])

    @property
    def attempted(self) -> Counter[str]:
        """Every store sent, answered with Success or not."""
        return Counter(uid for r in self.records for uid in r["attempted"])

    @property
    def associations(self) -> dict[int, str]:
        return {int(port): state for r in self.records for port, state in r["associations"].items()}


def store_through(
    svc: Service,
    batches: list[list[Path]],
    schedule: list[Callable[[], Window]],
    control_s: float,
    program: str,
    per_association: int = 0,
) -> Run:
    """Senders store through a quiet stretch (`control_s`), then each disruption in turn."""
    before = len(svc.events("WRITE", proc="committer"))
    senders = start_senders(svc, batches, per_association)
    started = time.monotonic()
    windows: list[Window] = []
    try:
        wait_writes(svc, before + 100)
        control_start = time.time()
        threading.Event().wait(control_s)  # a stretch without disruption, for comparison
        control = Window("control", control_start, time.time())
        for disrupt in schedule:
            windows.append(disrupt())
        threading.Event().wait(AFTER_S)  # the last one's aftermath, under load too
    finally:
        thaw_all(svc, program)
        records = results(senders)
    return Run(records, control, windows, time.monotonic() - started)
