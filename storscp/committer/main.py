"""Entry point of the committer: recover the depot, then commit as told.

Binds the committer endpoint (PULL). Each wake-up drains every queued
InstanceStored into one batch (one directory fsync); every
`depot_scan_interval_s` it sweeps the depot for what the bus missed.
"""

from __future__ import annotations

import logging
import os
import time

import zmq

from storscp import bus
from storscp.committer.commit import Committer
from storscp.committer.recover import ready_names, remove_orphaned_parts
from storscp.component import (
    StartupFailure,
    claim_node,
    load_component_config,
    make_depot,
    make_outbox,
    report_startup_failure,
)
from storscp.exitcodes import ExitCode
from storscp.runtime import StopFlag, die_with_parent

PROC = "committer"
MAX_BATCH = 256
POLL_MS = 200
# After the first notification, wait this long for others to share its
# directory fsync: a few ms of latency for far fewer fsyncs and wake-ups.
BATCH_WINDOW_S = 0.004

log = logging.getLogger(__name__)


def sweep(committer: Committer) -> int:
    """Commit every ready file left in the depot, oldest first; clean parts."""
    names = ready_names(committer.depot_dir)
    count = 0
    for start in range(0, len(names), MAX_BATCH):
        batch = names[start : start + MAX_BATCH]
        count += committer.commit_batch([(name, None) for name in batch])
    for name, size in remove_orphaned_parts(committer.depot_dir):
        if size == 0:
            continue  # a receiver's spare, never written to
        committer.outbox.event(
            bus.EventType.ERROR,
            what="partial depot file removed",
            depot_file=name,
            bytes=size,
            reason="its receiver died before the instance was complete",
        )
    return count


def collect(sock: zmq.Socket[bytes]) -> list[tuple[str, bus.InstanceStored | None]]:
    """What arrives within BATCH_WINDOW_S of the first notification (up to MAX_BATCH)."""
    items = drain(sock)
    deadline = time.monotonic() + BATCH_WINDOW_S
    while len(items) < MAX_BATCH:
        left_ms = int((deadline - time.monotonic()) * 1000) + 1
        if time.monotonic() >= deadline or not sock.poll(left_ms):
            break
        items += drain(sock, MAX_BATCH - len(items))
    return items


def drain(
    sock: zmq.Socket[bytes], limit: int = MAX_BATCH
) -> list[tuple[str, bus.InstanceStored | None]]:
    """Everything queued on the socket now, up to `limit`, without waiting."""
    items: list[tuple[str, bus.InstanceStored | None]] = []
    while len(items) < limit:
        try:
            frames = sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            break
        try:
            msg = bus.decode(frames)
        except bus.BusError as exc:
            log.warning("ignoring malformed message: %s", exc)
            continue
        if isinstance(msg, bus.InstanceStored):
            items.append((msg.depot_name, msg))
    return items


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_component_config(PROC, argv)
        stop = StopFlag()
        stop.install()
        die_with_parent()
        if not config.storage_dir.is_dir():
            raise StartupFailure(
                ExitCode.CANTCREAT,
                f"An existing Storage SCP directory must be specified: {config.storage_dir}"
                " does not exist or is not a directory",
            )
        make_depot(config)
        # The descriptor stays open until we exit: `storscp recover --node` waits for us.
        claim_node(config)
    except StartupFailure as exc:
        return report_startup_failure(PROC, exc)
    except OSError as exc:
        return report_startup_failure(
            PROC, StartupFailure(ExitCode.CANTCREAT, f"cannot create depot: {exc}")
        )

    outbox = make_outbox(PROC, config)
    context = zmq.Context()
    sock: zmq.Socket[bytes] = context.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, bus.SEND_HWM)
    committer = None
    try:
        try:
            sock.bind(bus.committer_endpoint(config.run_dir))
            committer = Committer(config, outbox)
        except (zmq.ZMQError, OSError) as exc:
            reason = f"cannot start: {exc}"
            outbox.event(bus.EventType.ERROR, what="committer cannot start", reason=reason)
            return report_startup_failure(PROC, StartupFailure(ExitCode.CANTCREAT, reason))
        recovered = sweep(committer)
        outbox.event(bus.EventType.START, pid=os.getpid(), recovered=recovered)
        next_sweep = time.monotonic() + config.depot_scan_interval_s
        heartbeat = committer.counter.metrics.heartbeat
        while not stop.requested.is_set():
            heartbeat.beat()
            if sock.poll(POLL_MS):
                committer.commit_batch(collect(sock))
            if time.monotonic() >= next_sweep:
                sweep(committer)
                next_sweep = time.monotonic() + config.depot_scan_interval_s
        # Graceful stop: what is ready now gets committed before we go.
        heartbeat.stopped()
        committer.commit_batch(drain(sock))
        sweep(committer)
        return ExitCode.OK
    finally:
        if committer is not None:
            committer.close()
        sock.close()
        context.term()
        outbox.close()
