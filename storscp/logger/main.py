"""Entry point of the logger: lock the log directory, then write every event.

Binds the logger endpoint (PULL); every other process pushes Event messages.
The lock comes first: a second logger on the same log directory exits with
UNAVAILABLE before it binds the socket or opens a log file. On stop it
takes what is still queued, closes the socket, writes it,
fsyncs and exits.

The receive queue (RECV_HWM) is a trade-off, measured. What waits in a
sender's queue survives a crash of the logger and goes to the next one; what
waits in ours dies with us, so ours should be short. But when ours is full,
libzmq stops reading that sender's connection, and if the sender closes it
then (a component stopping while the logger catches up after a restart),
whatever was still in the kernel buffer is dropped: with 100 or 1000 a
stopping sender lost its last 200-400 events. So ours is as long as the
sender's: a sender that far behind is already dropping events anyway.
"""

from __future__ import annotations

import logging
import os
import time

import zmq

from storscp import __version__, bus
from storscp.component import StartupFailure, load_component_config, report_startup_failure
from storscp.config import Config
from storscp.exitcodes import ExitCode
from storscp.logger.counting import LogCounter
from storscp.logger.lock import LogDirLocked, lock_log_dir
from storscp.logger.logfile import AlternatingLog
from storscp.logger.writer import LogWriter
from storscp.runtime import StopFlag, die_with_parent

PROC = "logger"
POLL_MS = 200
DRAIN_S = 1.0
# Senders silent this long at a stop: everything they sent is in.
QUIET_MS = 100
# Messages the logger's own ZeroMQ queue may hold per sender (see above).
RECV_HWM = bus.SEND_HWM
MAX_ERROR_SAMPLE = 200
MAX_BATCH = 1000

log = logging.getLogger(__name__)


def handle(frames: list[bytes], writer: LogWriter) -> None:
    """Write one message; anything that is not an Event becomes an ERROR line."""
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
    if not isinstance(msg, bus.Event):
        writer.error(what="unexpected bus message", kind=type(msg).__name__)
        return
    try:
        writer.write(msg)
    except Exception as exc:  # one odd event must not stop the only log writer
        log.exception("cannot write event %r", msg)
        writer.error(what="cannot write event", proc_of_event=msg.proc, reason=repr(exc))


def receive_all(sock: zmq.Socket[bytes], writer: LogWriter) -> int:
    """Write what is queued now, at most MAX_BATCH, while the writer accepts lines.

    Bounded so that a sender faster than the disk cannot keep the main loop
    from fsyncing, retrying or noticing a stop.
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


def serve(sock: zmq.Socket[bytes], writer: LogWriter, stop: StopFlag, counter: LogCounter) -> None:
    """Write events until stopped, then drain for up to DRAIN_S and close the socket."""
    while not stop.requested.is_set():
        if writer.accepting:
            if sock.poll(POLL_MS):  # at once if anything is queued
                receive_all(sock, writer)
        else:
            stop.requested.wait(POLL_MS / 1000)
        writer.tick()
        counter.update(writer)
    counter.metrics.heartbeat.stopped()
    for frames in drain(sock, stop):
        handle(frames, writer)
    counter.update(writer)


def drain(sock: zmq.Socket[bytes], stop: StopFlag) -> list[list[bytes]]:
    """Take what is queued until the senders are quiet (or DRAIN_S), then close.

    The other components may still be saying goodbye. Receiving only, and
    writing after the socket is closed, keeps what the socket holds at the
    close small: a message still in a sender's queue goes to the next
    logger, one already in ours would be lost.
    """
    frames: list[list[bytes]] = []
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline and not stop.urgent.is_set():
        try:
            frames.append(sock.recv_multipart(flags=zmq.NOBLOCK))
        except zmq.Again:
            if not sock.poll(QUIET_MS):
                break
    sock.close()
    return frames


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_component_config(PROC, argv)
        stop = StopFlag()
        stop.install()
        die_with_parent()
        lock_fd, logfile = open_log(config)
    except StartupFailure as exc:
        return report_startup_failure(PROC, exc)

    writer = LogWriter(logfile, PROC)
    context = zmq.Context()
    sock: zmq.Socket[bytes] = context.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, RECV_HWM)
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
