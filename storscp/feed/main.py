"""Entry point of the feed process: answers replay requests from the history.

Binds the replay endpoint (ROUTER; consumers use REQ, or DEALER with an
empty delimiter frame). Each ReplayRequest gets one ReplayPage with up to
REPLAY_PAGE_MAX messages read from the history database, which the
committer writes. The live messages come from the committer's PUB socket;
this is a process of its own so that a consumer replaying a long history
costs the committer nothing, not even the GIL. It also checkpoints the
history's WAL every second, which the committer would otherwise do inside a
commit.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time

import zmq

from storscp import bus
from storscp.component import (
    StartupFailure,
    begin_component,
    make_outbox,
    report_startup_failure,
)
from storscp.config import Config
from storscp.exitcodes import ExitCode
from storscp.history import HistoryError, HistoryReader, history_path
from storscp.runtime import StopFlag

PROC = "feed"
POLL_MS = 200
CHECKPOINT_INTERVAL_S = 1.0
# A request is 2 frames after the envelope: no consumer needs more.
MAX_REQUEST_FRAMES = 4

log = logging.getLogger(__name__)


class Replayer:
    """Answers one request at a time from a read-only view of the history."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._reader: HistoryReader | None = None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The frames answering `request` ([kind, JSON]); an error page if it is not one."""
        try:
            msg = bus.decode(request)
        except bus.BusError as exc:
            return _error_page(f"bad request: {exc}")
        if not isinstance(msg, bus.ReplayRequest):
            return _error_page(f"bad request: expected {bus.ReplayRequest.KIND!r}")
        if msg.after < 0 or msg.limit < 1:
            return _error_page("bad request: after must be >= 0 and limit >= 1")
        try:
            reader = self._open()
            page, messages = reader.page(msg.after, min(msg.limit, bus.REPLAY_PAGE_MAX))
        except (HistoryError, sqlite3.Error) as exc:
            self.close()
            self._reader = None
            return _error_page(f"history not available: {exc}", msg.after)
        return bus.encode_page(page, messages)

    def checkpoint(self) -> None:
        """Fold the committer's WAL into the database (off the committer's path)."""
        try:
            if self._reader is not None or history_path(self.config.state_dir).exists():
                self._open().checkpoint()
        except (HistoryError, sqlite3.Error) as exc:
            log.warning("checkpoint failed: %s", exc)

    def _open(self) -> HistoryReader:
        if self._reader is None:
            if not history_path(self.config.state_dir).exists():
                raise HistoryError("the committer has not created it yet")
            self._reader = HistoryReader(self.config.state_dir)
        return self._reader


def _error_page(reason: str, after: int = -1) -> list[bytes]:
    return bus.encode(bus.ReplayPage(after, 0, 0, 0, reason))


def serve(sock: zmq.Socket[bytes], replayer: Replayer, stop: StopFlag) -> None:
    next_checkpoint = 0.0
    while not stop.requested.is_set():
        if time.monotonic() >= next_checkpoint:
            replayer.checkpoint()
            next_checkpoint = time.monotonic() + CHECKPOINT_INTERVAL_S
        if not sock.poll(POLL_MS):
            continue
        frames = sock.recv_multipart()
        # [identity, b"" (REQ's delimiter), kind, JSON]: keep the envelope for the answer.
        split = 2 if len(frames) > 2 and frames[1] == b"" else 1
        envelope, request = frames[:split], frames[split:]
        if len(frames) > MAX_REQUEST_FRAMES:
            request = [b"", b""]  # answered as malformed, without decoding a flood
        answer = replayer.answer(request)
        try:
            sock.send_multipart(envelope + answer, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("consumer queue full: dropped a replay page")


def main(argv: list[str] | None = None) -> int:
    try:
        config, stop = begin_component(PROC, argv)
    except StartupFailure as exc:
        return report_startup_failure(PROC, exc)
    outbox = make_outbox(PROC, config)
    context = zmq.Context()
    sock: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, bus.SEND_HWM)
    replayer = Replayer(config)
    endpoint = bus.feed_replay_endpoint(config.run_dir, config.feed_replay_endpoint)
    try:
        try:
            if endpoint.startswith("tcp://["):
                sock.setsockopt(zmq.IPV6, 1)
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            reason = f"cannot bind {endpoint}: {exc}"
            outbox.event(bus.EventType.ERROR, what="feed cannot start", reason=reason)
            code = ExitCode.UNAVAILABLE if exc.errno == zmq.EADDRINUSE else ExitCode.CANTCREAT
            return report_startup_failure(PROC, StartupFailure(code, reason))
        outbox.event(bus.EventType.START, pid=os.getpid(), replay_endpoint=endpoint)
        serve(sock, replayer, stop)
        return ExitCode.OK
    finally:
        replayer.close()
        sock.close()
        context.term()
        outbox.close()
