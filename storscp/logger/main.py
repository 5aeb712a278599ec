"""Entry point of the logger: lock the log directory, then write every event.

Binds the logger endpoint (ROUTER); every other process sends EventSent
messages from a DEALER whose routing id is its origin (see bus.py). After
each batch it has written, the logger acknowledges to each sender the last
of its events now in the file (`Ack`); what it has received but not written
is not acknowledged, so it stays with its sender. The lock comes first: a
second logger on the same log directory exits with UNAVAILABLE before it
binds the socket or opens a log file. At start it reads the newest lines
back for the last event of each sender (streams.py), so that what a sender
resends after a restart is written once. On stop it writes and
acknowledges what keeps arriving until the senders are quiet, fsyncs and
exits.

The receive queue (RECV_HWM) is short: everything in it is still held by
its sender, and a logger killed with a long queue only makes the senders
resend more. When it is full, libzmq stops reading that sender's connection
and the events wait in the sender's queue.
"""

from __future__ import annotations

import logging
import os
import time

import zmq

from storscp import __version__, bus
from storscp.component import StartupFailure, begin_component, report_startup_failure
from storscp.config import Config
from storscp.exitcodes import ExitCode
from storscp.logger.counting import LogCounter
from storscp.logger.lock import LogDirLocked, lock_log_dir
from storscp.logger.logfile import AlternatingLog
from storscp.logger.streams import Streams, Verdict, read_known
from storscp.logger.writer import LogWriter
from storscp.runtime import StopFlag

PROC = "logger"
POLL_MS = 200
DRAIN_S = 1.0
# Senders silent this long at a stop: everything they sent is in.
QUIET_MS = 100
# Messages the logger's own ZeroMQ queue may hold per sender (see above).
RECV_HWM = 1000
MAX_ERROR_SAMPLE = 200
MAX_BATCH = 1000
# Acknowledgements go out at most this often, one per sender: at 1000
# events/s a batch is often one event, and a lone ZeroMQ message costs tens
# of µs of CPU on each side (waking I/O threads), more than the event's line.
# Waiting is cheap: the sender holds the events 0.1 s longer.
ACK_INTERVAL_S = 0.1
MAX_ORIGIN_NAMES = 4096
# At a stop, how long the last acknowledgements may take to leave.
ACK_LINGER_MS = 200

log = logging.getLogger(__name__)


_origin_names: dict[bytes, str | None] = {}


def origin_name(routing_id: bytes) -> str | None:
    """bus.origin_of, remembered: it is asked for every event."""
    name = _origin_names.get(routing_id, "")
    if name == "":
        if len(_origin_names) >= MAX_ORIGIN_NAMES:
            _origin_names.clear()
        name = _origin_names[routing_id] = bus.origin_of(routing_id)
    return name


def handle(frames: list[bytes], writer: LogWriter) -> None:
    """Write one message from the ROUTER ([routing id, frames...]) if it is due.

    An EventSent is written if it is the next of its origin (streams.py);
    a bare Event (no place in a stream) is written as it comes; anything
    else becomes an ERROR line.
    """
    routing_id, frames = frames[0], frames[1:]
    try:
        msg = bus.decode(frames)
    except bus.BusError as exc:
        writer.error(
            what="malformed bus message",
            reason=str(exc)[:MAX_ERROR_SAMPLE],
            frames=len(frames),
            bytes=sum(len(f) for f in frames),
        )
        return
    origin: str | None = None
    seq = 0
    if isinstance(msg, bus.EventSent):
        origin = origin_name(routing_id)
        if origin is None:
            writer.error(
                what="malformed bus message", reason="sender has no origin", frames=len(frames)
            )
            return
        if writer.streams.admit(origin, msg.seq, msg.floor) is not Verdict.WRITE:
            return
        seq, msg = msg.seq, msg.event
    if not isinstance(msg, bus.Event):
        writer.error(what="unexpected bus message", kind=type(msg).__name__)
        return
    try:
        writer.write(msg, origin, seq)
    except Exception as exc:  # one odd event must not stop the only log writer
        log.exception("cannot write event %r", msg)
        if origin is not None:
            writer.streams.reject(origin, seq)
        writer.error(what="cannot write event", proc_of_event=msg.proc, reason=repr(exc))


def receive_all(sock: zmq.Socket[bytes], writer: LogWriter) -> int:
    """Write what is queued now, at most MAX_BATCH, while the writer accepts lines.

    Bounded so that a sender faster than the disk cannot keep the main loop
    from acknowledging, fsyncing, retrying or noticing a stop.
    """
    count = 0
    while writer.accepting and count < MAX_BATCH:
        try:
            frames = sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            break
        handle(frames, writer)
        count += 1
    return count


class Acknowledger:
    """Tells each sender owed one how far its events are in the file, every ACK_INTERVAL_S.

    The ROUTER drops an ack it cannot deliver (sender gone, or its queue
    full) rather than block; the next one says the same and more.
    """

    def __init__(self, sock: zmq.Socket[bytes], writer: LogWriter) -> None:
        self.sock = sock
        self.streams = writer.streams
        self.next_at = 0.0

    def poll_ms(self, idle_ms: int) -> int:
        """How long the main loop may wait for events before acks are due."""
        if not self.streams.owed:
            return idle_ms
        return max(0, min(idle_ms, int((self.next_at - time.monotonic()) * 1000) + 1))

    def send(self, force: bool = False) -> None:
        if not self.streams.owed:
            return
        now = time.monotonic()
        if now < self.next_at and not force:
            return
        self.next_at = now + ACK_INTERVAL_S
        for origin, seq in self.streams.take_acks():
            self.sock.send_multipart(
                [origin.encode("ascii"), *bus.encode(bus.Ack(seq))], zmq.NOBLOCK
            )


def open_log(config: Config) -> tuple[int, AlternatingLog]:
    """Lock the log directory, then open the current log file."""
    try:
        config.log_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = lock_log_dir(config.log_dir)
    except LogDirLocked as exc:
        raise StartupFailure(ExitCode.UNAVAILABLE, str(exc)) from None
    except OSError as exc:
        raise StartupFailure(
            ExitCode.CANTCREAT, f"log directory {config.log_dir} is not writable: {exc}"
        ) from None
    try:
        return lock_fd, AlternatingLog(config.log_dir, config.log_max_bytes)
    except OSError as exc:
        os.close(lock_fd)
        raise StartupFailure(
            ExitCode.CANTCREAT, f"cannot open log files in {config.log_dir}: {exc}"
        ) from None


def known_senders(config: Config) -> Streams:
    """The last event of each sender in the newest lines; empty if they cannot be read."""
    try:
        return Streams(read_known(config.log_dir))
    except OSError as exc:
        # Not a reason to lose every event from now on: at worst a resent one is doubled.
        log.error("cannot read the last lines of %s back: %s", config.log_dir, exc)
        return Streams()


def serve(sock: zmq.Socket[bytes], writer: LogWriter, stop: StopFlag, counter: LogCounter) -> None:
    """Write and acknowledge events until stopped, then until the senders are quiet."""
    acks = Acknowledger(sock, writer)
    while not stop.requested.is_set():
        if writer.accepting:
            if sock.poll(acks.poll_ms(POLL_MS)):  # at once if anything is queued
                receive_all(sock, writer)
        else:
            stop.requested.wait(POLL_MS / 1000)
        writer.tick()
        acks.send()
        counter.update(writer)
    counter.metrics.heartbeat.stopped()
    drain(sock, acks, writer, stop)
    counter.update(writer)


def drain(sock: zmq.Socket[bytes], acks: Acknowledger, writer: LogWriter, stop: StopFlag) -> None:
    """Take what keeps coming until the senders are quiet (or DRAIN_S), then close.

    The other components may still be saying goodbye, and each waits for
    our acknowledgement. What we never take stays with its sender and goes
    to the next logger.
    """
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline and not stop.urgent.is_set() and writer.accepting:
        if not sock.poll(QUIET_MS):
            break
        receive_all(sock, writer)
        acks.send(force=True)
    acks.send(force=True)
    sock.close(linger=ACK_LINGER_MS)


def main(argv: list[str] | None = None) -> int:
    try:
        config, stop = begin_component(PROC, argv)
        lock_fd, logfile = open_log(config)
    except StartupFailure as exc:
        return report_startup_failure(PROC, exc)

    writer = LogWriter(logfile, PROC, streams=known_senders(config))
    context = zmq.Context()
    sock: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, RECV_HWM)
    # A sender that reconnects under its origin takes its old connection over.
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    try:
        try:
            sock.bind(bus.logger_endpoint(config.run_dir))
        except zmq.ZMQError as exc:
            return report_startup_failure(
                PROC, StartupFailure(ExitCode.CANTCREAT, f"cannot bind logger socket: {exc}")
            )
        writer.write(
            bus.Event(
                bus.EventType.START,
                PROC,
                {
                    "pid": os.getpid(),
                    "version": __version__,
                    "log_dir": str(config.log_dir),
                    "log_max_bytes": config.log_max_bytes,
                    "file": logfile.current_path.name,
                },
            )
        )
        serve(sock, writer, stop, LogCounter())
        return ExitCode.OK
    finally:
        writer.close()
        os.close(lock_fd)
        sock.close()
        context.term()
