"""Crash safety: kill -9 a component while four senders store 200 instances each.

Given four pynetdicom senders storing 800 small instances (each sender
reconnects after a failure and carries on with its next instance),
When one process is killed with SIGKILL mid-stream,
Then every instance that got Success is in the storage directory, byte for
byte as sent; nothing partial is there; the depot drains; the killed
component is RUNNING again within 10 s and the listener logged an ERROR
naming it. For supervisord itself, a fresh `storscp start` takes over: the
orphaned components stop by themselves (PR_SET_PDEATHSIG), nothing still
holds the port, and there is never a second logger.

The counts (sent / acknowledged / found) are printed in the test summary.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from support import dicomfiles as df
from support.senders import Instance, SenderPool, make_instances
from support.service import COMPONENTS, Service, alive, poll_for, short_tempdir

SENDERS = 4
PER_SENDER = 200
KILL_AFTER_ACKS = 200  # a quarter of the way in: every sender is mid-stream
RECOVERY_LIMIT_S = 10.0


@pytest.fixture(scope="module")
def batches() -> Iterator[list[list[Instance]]]:
    root = short_tempdir("crash")
    yield make_instances(root, SENDERS, PER_SENDER)
    shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Counts:
    sent: int
    acknowledged: int
    found: int
    associations: int


def start_senders(svc: Service, batches: list[list[Instance]]) -> SenderPool:
    pool = SenderPool(batches, port=svc.current_port).start()
    poll_for(
        lambda: pool.acknowledged_count() >= KILL_AFTER_ACKS,
        120,
        f"{KILL_AFTER_ACKS} acknowledged instances",
        interval_s=0.01,
    )
    return pool


def check_storage(svc: Service, pool: SenderPool) -> Counts:
    """Acknowledged ⊆ stored, stored == sent bytes, nothing else, depot drained."""
    acknowledged = pool.acknowledged()
    # Success means durable in the depot; visible in storage follows within ms.
    poll_for(lambda: svc.depot_entries() == [], 60, "the depot to drain")
    found = {uid for uid in pool.instances if svc.stored_path(uid).exists()}
    lost = acknowledged - found
    assert not lost, f"{len(lost)} acknowledged instances missing, e.g. {sorted(lost)[:3]}"
    for uid in found:
        stored = df.dataset_bytes(svc.stored_path(uid))
        assert stored == df.dataset_bytes(pool.instances[uid].path), f"{uid}: bytes differ"
    # Beside the instances: the depot and the durable state (.storscp).
    expected_names = {svc.stored_path(uid).name for uid in found} | {"depot", ".storscp"}
    strays = sorted(set(os.listdir(svc.storage_dir)) - expected_names)
    assert not strays, f"unexpected entries in the storage directory: {strays[:5]}"
    return Counts(pool.sent(), len(acknowledged), len(found), pool.associations())


def established_sockets(port: int) -> set[str]:
    """Socket inodes of established TCP connections whose local port is `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                    inodes.add(fields[9])
    return inodes


def busiest_receiver(svc: Service) -> int | None:
    """The running receiver holding the most associations (None while none holds one)."""
    established = established_sockets(svc.current_port())
    held: dict[int, int] = {}
    for pid in svc.running_pids("receiver"):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue  # it exited meanwhile
        count = sum(
            1 for link in links if link.startswith("socket:[") and link[8:-1] in established
        )
        if count:
            held[pid] = count
    return max(held, key=held.__getitem__) if held else None


def report(
    crash_report: list[str], killed: str, counts: Counts, recovery_s: float, pool: SenderPool
) -> None:
    failed = Counter(pool.failures().values())
    line = (
        f"kill -9 {killed:<11} sent={counts.sent} acknowledged={counts.acknowledged}"
        f" found={counts.found} associations={counts.associations}"
        f" running_again_after={recovery_s:.1f}s"
        + (f" unacknowledged={dict(failed)}" if failed else "")
    )
    print(line)
    crash_report.append(line)


@pytest.mark.parametrize("program", ["receiver", "committer", "logger"])
def test_kill_9_component_loses_no_acknowledged_instance(
    service_factory: type[Service],
    batches: list[list[Instance]],
    crash_report: list[str],
    program: str,
) -> None:
    svc = service_factory().start()
    pool = start_senders(svc, batches)

    # When: one process of the program dies without warning (a receiver: one that
    # holds associations in flight, so that the kill interrupts at least one).
    if program == "receiver":
        victim = poll_for(lambda: busiest_receiver(svc), 30, "a receiver holding associations")
    else:
        victim = poll_for(lambda: svc.running_pids(program), 30, f"{program} RUNNING")[0]
    os.kill(victim, signal.SIGKILL)
    recovery_s = svc.wait_running_again(program, victim, RECOVERY_LIMIT_S)

    # Then: the listener said so, with the pid and how it ended.
    error = svc.wait_event("ERROR", 30, proc="listener", program=program, pid=str(victim))[0]
    assert (error["to_state"], error["signal"], error["expected"]) == ("EXITED", "SIGKILL", "false")
    pool.join(240)
    counts = check_storage(svc, pool)
    assert counts.sent == SENDERS * PER_SENDER
    if program == "receiver":
        # The kill cut associations: their senders had to associate again.
        assert counts.associations > SENDERS, counts
    report(crash_report, program, counts, recovery_s, pool)


def test_kill_9_supervisord_then_a_fresh_start_takes_over(
    service_factory: type[Service],
    batches: list[list[Instance]],
    crash_report: list[str],
) -> None:
    svc = service_factory().start_daemon()
    pool = start_senders(svc, batches)
    old = {program: svc.running_pids(program) for program in COMPONENTS}
    supervisord = svc.supervisord_pid()
    old_port = svc.port

    # When: supervisord dies; its socket and pidfile stay behind.
    os.kill(supervisord, signal.SIGKILL)
    killed_at = time.monotonic()
    poll_for(lambda: not alive(supervisord), 10, "supervisord to die")
    assert (svc.run_dir / "supervisor.sock").exists()
    assert (svc.run_dir / "supervisord.pid").exists()

    # Then: a fresh start waits for the orphans to drain and stop on their own.
    result = svc.command("start")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "start request issued"
    recovery_s = time.monotonic() - killed_at
    # The receiver was still draining its associations: start waited for it.
    assert "waiting for components of a previous run to stop" in result.stderr
    svc.supervisord_pids.add(svc.supervisord_pid())
    leftovers = [pid for pids in old.values() for pid in pids if alive(pid)]
    assert not leftovers, f"components of the killed supervisord still alive: {leftovers}"
    for program in COMPONENTS:
        # Exactly the configured processes: one each, receivers one per core.
        expected = svc.receiver_count() if program == "receiver" else 1
        live, running = svc.live_components(program), svc.running_pids(program)
        assert len(live) == len(running) == expected, program
    if svc.current_port() != old_port:
        with socket.socket() as probe:  # nobody listens on the old port any more
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            probe.bind(("127.0.0.1", old_port))
            probe.listen(1)
    svc.wait_event(
        "ERROR",
        30,
        proc="cli",
        what="previous supervisord ended without a stop",
        pid=str(supervisord),
    )

    pool.join(240)
    counts = check_storage(svc, pool)
    assert counts.sent == SENDERS * PER_SENDER
    # The receiver drains up to drain_timeout_s before the new one can bind.
    assert recovery_s < 5 + RECOVERY_LIMIT_S + 10
    report(crash_report, "supervisord", counts, recovery_s, pool)


def test_storscp_run_after_a_supervisord_kill_logs_the_unclean_end(
    service_factory: type[Service],
) -> None:
    # Given a service in the foreground (`storscp run` became supervisord)
    svc = service_factory().start()
    supervisord = svc.supervisord_pid()
    # When: supervisord dies, and the admin runs `storscp run` again
    os.kill(supervisord, signal.SIGKILL)
    poll_for(lambda: not alive(supervisord), 10, "supervisord to die")
    svc.start()
    # Then: the console and the log both say how the previous one ended
    assert f"previous supervisord (pid {supervisord}) ended without a stop" in svc.output()
    error = svc.wait_event(
        "ERROR", 30, proc="cli", what="previous supervisord ended without a stop"
    )[0]
    assert error["pid"] == str(supervisord)
