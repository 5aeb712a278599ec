"""Entry point of the commitment process: check pending requests, deliver their reports.

Binds the commitment endpoint (PULL): receivers ring it when a request is
on disk (CommitmentRequested) and say what became of an offered report
(ReportOutcome). It pushes ReportOffered to the receiver that holds the
association that asked (one PUSH socket per receiver endpoint, made when
needed). Outbound associations to modalities live here, never in the
committer's or the logger's loop: a slow modality delays nobody's commit.
Pending requests are files (commitmentfiles.py): at start, and every
SCAN_INTERVAL_S, every one is taken up, so a lost doorbell or a restart
costs latency, never a report.
"""

from __future__ import annotations

import functools
import logging
import os
import time

import zmq

from storscp import bus
from storscp.commitment.delivery import Deliveries
from storscp.commitmentfiles import RequestStore
from storscp.component import (
    StartupFailure,
    begin_component,
    claim_node,
    make_outbox,
    prepare_commitment_dir,
    report_startup_failure,
)
from storscp.exitcodes import ExitCode
from storscp.inbox import received
from storscp.runtime import StopFlag

PROC = "commitment"
SCAN_INTERVAL_S = 5.0
PRUNE_INTERVAL_S = 3600.0
# An offer socket unused this long is closed (its receiver has probably gone).
OFFER_SOCKET_IDLE_S = 120.0
OFFER_HWM = 100

log = logging.getLogger(__name__)


@functools.cache
def storage_classes() -> frozenset[str]:
    """The SOP classes a receiver accepts: the rest are 0x0122 when missing.

    pynetdicom is imported at the first check, not at start: several
    components start at once, and a slow start hides a failing one.
    """
    from pynetdicom.presentation import AllStoragePresentationContexts

    return frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)


class Offers:
    """PUSH sockets to receivers, one per endpoint; owned by the main thread."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self._context = context
        self._sockets: dict[str, tuple[zmq.Socket[bytes], float]] = {}

    def send(self, endpoint: str, msg: bus.ReportOffered) -> bool:
        entry = self._sockets.get(endpoint)
        if entry is None:
            sock: zmq.Socket[bytes] = self._context.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, OFFER_HWM)
            try:
                sock.connect(endpoint)
            except zmq.ZMQError as exc:
                log.warning("cannot connect to %s: %s", endpoint, exc)
                sock.close()
                return False
        else:
            sock = entry[0]
        self._sockets[endpoint] = (sock, time.monotonic())
        try:
            sock.send_multipart(bus.encode(msg), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        return True

    def close_idle(self, idle_s: float = OFFER_SOCKET_IDLE_S) -> None:
        now = time.monotonic()
        for endpoint, (sock, used) in list(self._sockets.items()):
            if now - used > idle_s:
                sock.close()
                del self._sockets[endpoint]

    def close(self) -> None:
        self.close_idle(-1.0)


def receive(sock: zmq.Socket[bytes], deliveries: Deliveries) -> None:
    """Everything queued on our endpoint now."""
    for msg in received(sock):
        if isinstance(msg, bus.CommitmentRequested):
            deliveries.requested(msg.request_name)
        elif isinstance(msg, bus.ReportOutcome):
            deliveries.outcome(msg)


def main(argv: list[str] | None = None) -> int:
    try:
        config, stop = begin_component(PROC, argv)
        store = RequestStore(config.commitment_dir, int(config.file_mode), int(config.dir_mode))
        prepare_commitment_dir(config)
        # Held until we exit, as by every process of a node: `storscp recover`
        # moves a node's pending requests only once none of them is alive.
        if config.node:
            config.depot_dir.mkdir(mode=int(config.dir_mode), parents=True, exist_ok=True)
        claim_node(config)
    except StartupFailure as exc:
        return report_startup_failure(PROC, exc)

    outbox = make_outbox(PROC, config)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock: zmq.Socket[bytes] = context.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, bus.SEND_HWM)
    offers = Offers(context)
    deliveries = Deliveries(config, store, outbox, offers.send, storage_classes)
    try:
        try:
            sock.bind(bus.commitment_endpoint(config.run_dir))
        except zmq.ZMQError as exc:
            reason = f"cannot bind {bus.commitment_endpoint(config.run_dir)}: {exc}"
            outbox.event(bus.EventType.ERROR, what="commitment cannot start", reason=reason)
            return report_startup_failure(PROC, StartupFailure(ExitCode.CANTCREAT, reason))
        store.prune()
        pending = deliveries.scan()
        outbox.event(bus.EventType.START, pid=os.getpid(), pending=pending)
        serve(sock, deliveries, offers, store, stop)
        return ExitCode.OK
    finally:
        # Work in flight is on disk: the next start takes it up again.
        offers.close()
        sock.close()
        context.term()
        deliveries.close()
        outbox.close()


def serve(
    sock: zmq.Socket[bytes],
    deliveries: Deliveries,
    offers: Offers,
    store: RequestStore,
    stop: StopFlag,
) -> None:
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(deliveries.wake_fd, zmq.POLLIN)
    next_scan = time.monotonic() + SCAN_INTERVAL_S
    next_prune = time.monotonic() + PRUNE_INTERVAL_S
    while not stop.requested.is_set():
        wait_s = min(deliveries.tick(), max(0.0, next_scan - time.monotonic()), 0.5)
        poller.poll(int(wait_s * 1000) + 1)
        receive(sock, deliveries)
        deliveries.run_completions()
        now = time.monotonic()
        if now >= next_scan:
            deliveries.scan()
            offers.close_idle()
            next_scan = now + SCAN_INTERVAL_S
        if now >= next_prune:
            store.prune()
            next_prune = now + PRUNE_INTERVAL_S
