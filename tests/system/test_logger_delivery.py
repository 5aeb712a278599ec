"""No event lost, doubled or reordered when the logger dies or restarts under load.

A real sender process (support.probe, the components' own Outbox) sends N
numbered events at a steady rate. Meanwhile the logger is `kill -9`ed (its
pid comes from its START event) or stopped and started with supervisorctl.
Then we count the numbers in the log.

Each sender numbers its events and keeps them until the logger says they
are in the file; after the logger restarts it sends again what was not
acknowledged, and the logger writes each (sender, number) once, in order.
So what died in the killed logger's queue comes back, and nothing comes
twice: lost 0, duplicated 0, out of order 0.

`make test` runs one rate (1000 events/s); the table in the README comes
from the slow measurement (five runs of 10,000 events at 1000/s and 5000/s
for each disruption), with `-s` to see the numbers:
    .venv/bin/python -m pytest -s -m slow tests/system/test_logger_delivery.py
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from storscp import bus
from storscp.logger.lines import parse_line
from storscp.logger.reader import LogFollower
from support.service import Service, poll_for, running_service

TESTS_DIR = Path(__file__).resolve().parents[1]


@dataclass
class Delivery:
    scenario: str
    sent: int
    dropped_by_sender: int
    delivered: int
    duplicates: int
    out_of_order: int
    missing: list[int]
    disrupted_after: int

    @property
    def lost(self) -> int:
        return self.sent - self.delivered

    @property
    def perfect(self) -> bool:
        return self.lost == self.duplicates == self.out_of_order == self.dropped_by_sender == 0

    def summary(self) -> str:
        return (
            f"{self.scenario}: sent {self.sent}, delivered {self.delivered},"
            f" lost {self.lost} ({self.dropped_by_sender} dropped by the sender),"
            f" duplicates {self.duplicates}, out of order {self.out_of_order},"
            f" missing seq {ranges(self.missing)}"
            f" (the logger was disrupted after seq {self.disrupted_after})"
        )


def out_of_order(seqs: list[int]) -> int:
    """Numbers written after a higher one (a duplicate is counted as that, not this)."""
    seen: set[int] = set()
    highest = -1
    count = 0
    for n in seqs:
        if n not in seen and n < highest:
            count += 1
        seen.add(n)
        highest = max(highest, n)
    return count


def ranges(numbers: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5,9'."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and n == int(out[-1].rsplit("-", 1)[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ",".join(out) or "none"


class ProbeLines:
    """The seq numbers of one run in the log, read incrementally (files grow large)."""

    def __init__(self, svc: Service, run: str) -> None:
        self.follower = LogFollower(svc.log_dir)
        self.marker = f" run={run} ".encode()
        self.seqs: list[int] = []

    def poll(self) -> list[int]:
        for raw in self.follower.poll():
            if self.marker in raw:
                parsed = parse_line(raw.decode())
                assert parsed is not None and parsed["proc"] == "probe", raw
                self.seqs.append(int(parsed["seq"]))
        return self.seqs


def measure(
    svc: Service, scenario: str, disrupt: Callable[[Service], None], count: int, rate: float
) -> Delivery:
    """Send `count` events at `rate`/s, disrupt the logger a quarter of the way in."""
    run = f"{scenario}-{os.getpid()}"
    probe = ProbeLines(svc, run)
    sender = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "support.probe",
            bus.logger_endpoint(svc.run_dir),
            run,
            str(count),
            str(rate),
        ],
        cwd=TESTS_DIR,
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        poll_for(
            lambda: len(probe.poll()) >= count // 4,
            60,
            "a quarter of the events in the log",
            interval_s=0.1,
        )
        wait_logger_running(svc)
        disrupted_after = max(probe.poll())
        disrupt(svc)
        out, _ = sender.communicate(timeout=count / rate + 120)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(10)
    report = json.loads(out.strip().splitlines()[-1])
    # One sender, one pipe: FIFO. Once the last event is in, nothing more comes.
    # If the last one never comes, the tail was lost: count it after a grace period.
    with contextlib.suppress(AssertionError):
        poll_for(lambda: count - 1 in probe.poll(), 30, "the last event", interval_s=0.2)
    seqs = probe.seqs
    delivered = set(seqs)
    result = Delivery(
        scenario=scenario,
        sent=count,
        dropped_by_sender=int(report["dropped"]),
        delivered=len(delivered),
        duplicates=len(seqs) - len(delivered),
        out_of_order=out_of_order(seqs),
        missing=sorted(set(range(count)) - delivered),
        disrupted_after=disrupted_after,
    )
    print(result.summary())
    return result


def wait_logger_running(svc: Service) -> None:
    """Supervisor counts a death within startsecs as a failed start (FATAL after 3)."""
    poll_for(
        lambda: re.search(r"^logger\s+RUNNING", svc.supervisorctl("status", "logger").stdout),
        30,
        "the logger RUNNING",
        interval_s=0.2,
    )


def kill_logger(svc: Service) -> None:
    """kill -9 our logger (its pid from its START), wait for the next one."""
    wait_logger_running(svc)
    pid = svc.pid_of("logger")
    os.kill(pid, signal.SIGKILL)
    poll_for(lambda: svc.pid_of("logger") != pid, 60, "a new logger START", interval_s=0.1)


def stop_start_logger(svc: Service) -> None:
    """supervisorctl stop logger, then start; both wait for the state change."""
    wait_logger_running(svc)
    pid = svc.pid_of("logger")
    assert "stopped" in svc.supervisorctl("stop", "logger").stdout
    assert "started" in svc.supervisorctl("start", "logger").stdout
    poll_for(lambda: svc.pid_of("logger") != pid, 60, "a new logger START", interval_s=0.1)


@pytest.fixture(scope="module")
def big_log_service() -> Iterator[Service]:
    """One service for the tests below (each uses its own run marker); stopped at the end.

    Files large enough that no probe event is overwritten by alternation.
    """
    with running_service(log_max_bytes=64_000_000) as svc:
        yield svc


def test_sigkill_of_the_logger_under_load_loses_nothing(big_log_service: Service) -> None:
    svc = big_log_service
    old_pid = svc.pid_of("logger")
    result = measure(svc, "sigkill", kill_logger, count=4000, rate=1000)
    assert result.perfect, result.summary()
    # And the listener's ERROR about the crash, sent while no logger ran, arrived.
    svc.wait_event("ERROR", program="logger", pid=str(old_pid))


def test_supervisorctl_stop_start_of_the_logger_under_load_loses_nothing(
    big_log_service: Service,
) -> None:
    result = measure(big_log_service, "stop-start", stop_start_logger, count=4000, rate=1000)
    assert result.perfect, result.summary()


def test_events_sent_while_the_logger_is_stopped_arrive_when_it_is_back(
    big_log_service: Service,
) -> None:
    svc = big_log_service
    # Given no logger
    assert "stopped" in svc.supervisorctl("stop", "logger").stdout
    run = f"away-{os.getpid()}"
    probe = ProbeLines(svc, run)
    # When a sender sends 2000 events (they wait in its queue; it waits to deliver them)
    sender = subprocess.Popen(
        [sys.executable, "-m", "support.probe", bus.logger_endpoint(svc.run_dir), run, "2000", "0"],
        cwd=TESTS_DIR,
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sender.stdout is not None
        assert json.loads(sender.stdout.readline()) == {"queued": 2000}
        assert probe.poll() == []
        # Then, once the logger is started again, every one of them is written, in order.
        assert "started" in svc.supervisorctl("start", "logger").stdout
        poll_for(lambda: len(probe.poll()) == 2000, 60, "all 2000 events")
        out, _ = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(10)
    assert json.loads(out.strip().splitlines()[-1]) == {"sent": 2000, "dropped": 0}
    assert probe.seqs == list(range(2000))


RUNS = 5


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["sigkill", "stop-start"])
@pytest.mark.parametrize("rate", [1000.0, 5000.0])
def test_delivery_measurement(service_factory: type[Service], scenario: str, rate: float) -> None:
    """The numbers for the README: five runs of 10,000 events per scenario and rate."""
    svc = service_factory(log_max_bytes=64_000_000).start()
    disrupt = kill_logger if scenario == "sigkill" else stop_start_logger
    results = [
        measure(svc, f"{scenario}{i}", disrupt, count=10_000, rate=rate) for i in range(RUNS)
    ]
    print(
        f"{scenario} at {rate:.0f}/s, per run of 10000:"
        f" lost {[r.lost for r in results]}, duplicated {[r.duplicates for r in results]},"
        f" out of order {[r.out_of_order for r in results]},"
        f" dropped by the sender {[r.dropped_by_sender for r in results]}"
    )
    assert all(r.perfect for r in results), [r.summary() for r in results if not r.perfect]
