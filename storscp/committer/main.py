"""Entry point of the committer: recover, then commit as told, and publish the feed.

Binds the committer endpoint (PULL: InstanceStored from receivers) and the
live feed (PUB: InstanceCommitted, StudyComplete, a heartbeat each second).
Each wake-up drains every queued InstanceStored and commits what is ready,
in arrival order; every `depot_scan_interval_s` it also reads back ready
files the bus never announced. Publishing never waits: a PUB socket drops
for a subscriber whose queue is full, and that consumer replays the gap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from typing import cast

import zmq

from storscp import bus
from storscp.arrival import Arrival
from storscp.committer.commit import Committer
from storscp.committer.recover import recover_pending, remove_orphaned_parts
from storscp.committer.studies import Studies
from storscp.component import (
    StartupFailure,
    begin_component,
    claim_node,
    make_depot,
    make_outbox,
    open_arrival,
    report_startup_failure,
)
from storscp.config import Config
from storscp.exitcodes import ExitCode
from storscp.history import History, HistoryError
from storscp.outbox import LOGGER_ROUTE, Outbox
from storscp.runtime import StopFlag

PROC = "committer"
MAX_COLLECT = 256
POLL_MS = 200
# While a ready file waits for its InstanceStored, look again this often.
WAITING_POLL_MS = 20
# After the first notification, wait this long for others to share the batch's
# fsyncs: a few ms of latency for far fewer fsyncs and wake-ups.
BATCH_WINDOW_S = 0.004
HEARTBEAT_S = 1.0
PRUNE_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


def collect(sock: zmq.Socket[bytes], announced: dict[str, bus.InstanceStored]) -> None:
    """Add what arrives within BATCH_WINDOW_S of the first notification."""
    drain(sock, announced)
    deadline = time.monotonic() + BATCH_WINDOW_S
    while len(announced) < MAX_COLLECT:
        left_ms = int((deadline - time.monotonic()) * 1000) + 1
        if time.monotonic() >= deadline or not sock.poll(left_ms):
            break
        drain(sock, announced)


def drain(sock: zmq.Socket[bytes], announced: dict[str, bus.InstanceStored]) -> None:
    """Everything queued on the socket now, without waiting."""
    # Asking the socket first: a zmq.Again per empty look cost more than the look.
    while len(announced) < MAX_COLLECT and cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN:
        try:
            frames = sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            msg = bus.decode(frames)
        except bus.BusError as exc:
            log.warning("ignoring malformed message: %s", exc)
            continue
        if isinstance(msg, bus.InstanceStored):
            announced[msg.depot_name] = msg


class Feed:
    """The live side of the feed: the PUB socket, WRITE events, heartbeats."""

    def __init__(self, sock: zmq.Socket[bytes], outbox: Outbox, history: History) -> None:
        self.sock = sock
        self.outbox = outbox
        self.history = history
        self._next_heartbeat = 0.0

    def publish(self, messages: list[bus.InstanceCommitted] | list[bus.StudyComplete]) -> None:
        """Send durable messages (never blocks) and log each commit's WRITE."""
        for msg in messages:
            self._send(msg)
            if isinstance(msg, bus.InstanceCommitted):
                fields: dict[str, bus.FieldValue] = {
                    "path": msg.path,
                    "sop_class_uid": msg.sop_class_uid,
                    "sop_instance_uid": msg.sop_instance_uid,
                    "transfer_syntax": msg.transfer_syntax_uid,
                    "bytes": msg.bytes,
                    "calling_ae": msg.calling_ae,
                    "replaced": msg.replaced,
                    "seq": msg.seq,
                }
                # Stamped with the batch's commit time (the feed's `time`), taken
                # once per batch: a timestamp per event cost more than its JSON.
                event = bus.Event(bus.EventType.WRITE, self.outbox.proc, fields, msg.time)
                self.outbox.post(LOGGER_ROUTE, event)

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._send(bus.FeedHeartbeat(self.history.last_seq))
            self._next_heartbeat = now + HEARTBEAT_S

    def _send(self, msg: bus.Message) -> None:
        # PUB drops rather than blocks; consumers see the gap and replay it.
        with contextlib.suppress(zmq.Again):
            self.sock.send_multipart(bus.encode(msg), flags=zmq.NOBLOCK)


def complete_quiet_studies(committer: Committer, feed: Feed) -> None:
    """One study_complete per study quiet for study_quiet_s, written before it is sent."""
    studies = committer.studies
    boot, tick = committer.arrival.now()
    for uid in studies.quiet(boot, tick):
        msg = committer.history.append_study_complete(studies.completion(uid))
        studies.close(uid)
        feed.publish([msg])


def open_state(config: Config) -> tuple[Arrival, History]:
    arrival = open_arrival(config)
    try:
        history = History(config.state_dir, int(config.file_mode), int(config.dir_mode))
    except HistoryError as exc:
        arrival.close()
        raise StartupFailure(ExitCode.CANTCREAT, str(exc)) from None
    return arrival, history


def main(argv: list[str] | None = None) -> int:
    try:
        config, stop = begin_component(PROC, argv)
        if not config.storage_dir.is_dir():
            raise StartupFailure(
                ExitCode.CANTCREAT,
                f"An existing Storage SCP directory must be specified: {config.storage_dir}"
                " does not exist or is not a directory",
            )
        make_depot(config)
        # The descriptor stays open until we exit: `storscp recover --node` waits for us.
        claim_node(config)
        arrival, history = open_state(config)
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
    pub: zmq.Socket[bytes] = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, bus.SEND_HWM)
    committer = None
    try:
        live = bus.feed_live_endpoint(config.run_dir, config.feed_live_endpoint)
        try:
            sock.bind(bus.committer_endpoint(config.run_dir))
            if live.startswith("tcp://["):
                pub.setsockopt(zmq.IPV6, 1)
            pub.bind(live)
            boot, tick = arrival.now()
            studies = Studies(config.study_quiet_s, history.open_studies(), boot, tick)
            committer = Committer(config, outbox, history, arrival, studies)
        except (zmq.ZMQError, OSError) as exc:
            reason = f"cannot start: {exc}"
            outbox.event(bus.EventType.ERROR, what="committer cannot start", reason=reason)
            code = ExitCode.UNAVAILABLE if "in use" in str(exc) else ExitCode.CANTCREAT
            return report_startup_failure(PROC, StartupFailure(code, reason))
        feed = Feed(pub, outbox, history)
        announced: dict[str, bus.InstanceStored] = {}
        try:
            recovered = recover_pending(committer)
            feed.publish(recovered)
            swept = committer.commit_ready(announced, read_back=True)
            feed.publish(swept)
            report_orphaned_parts(committer)
            outbox.event(
                bus.EventType.START,
                pid=os.getpid(),
                recovered=len(recovered) + len(swept),
                last_seq=history.last_seq,
                open_studies=len(studies),
            )
            serve(config, committer, feed, sock, stop)
            # Graceful stop: what is ready now gets committed before we go.
            committer.counter.metrics.heartbeat.stopped()
            drain(sock, announced)
            feed.publish(committer.commit_ready(announced, read_back=True))
        except sqlite3.Error as exc:
            # Nothing may be committed unrecorded: stop, and let the restart's
            # recovery finish the batch once the history can be written again.
            reason = f"{history.path}: {exc}"
            outbox.event(bus.EventType.ERROR, what="feed history write failed", reason=reason)
            log.error("feed history write failed: %s", reason)
            return ExitCode.CANTCREAT
        return ExitCode.OK
    finally:
        if committer is not None:
            committer.close()
        sock.close()
        pub.close()
        context.term()
        history.close()
        arrival.close()
        outbox.close()


def serve(
    config: Config, committer: Committer, feed: Feed, sock: zmq.Socket[bytes], stop: StopFlag
) -> None:
    """Commit and publish until asked to stop."""
    announced: dict[str, bus.InstanceStored] = {}
    next_sweep = time.monotonic() + config.depot_scan_interval_s
    next_prune = 0.0
    heartbeat = committer.counter.metrics.heartbeat
    while not stop.requested.is_set():
        heartbeat.beat()
        if sock.poll(WAITING_POLL_MS if committer.waiting else POLL_MS):
            collect(sock, announced)
        now = time.monotonic()
        read_back = now >= next_sweep
        if announced or committer.waiting or read_back:
            feed.publish(committer.commit_ready(announced, read_back))
        if read_back:
            report_orphaned_parts(committer)
            next_sweep = time.monotonic() + config.depot_scan_interval_s
        complete_quiet_studies(committer, feed)
        feed.heartbeat()
        if now >= next_prune:
            committer.history.prune(config.feed_max_bytes, config.feed_max_age_s)
            next_prune = now + PRUNE_INTERVAL_S


def report_orphaned_parts(committer: Committer) -> None:
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
