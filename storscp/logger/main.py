"""Entry point of the logger: lock the log directory, then write every event.

Binds the logger endpoint (PULL); every other process pushes Event messages.
On stop it drains what is queued, fsyncs and exits.
"""

from __future__ import annotations

import logging
import os
import time

import zmq

from storscp import bus
from storscp.component import StartupFailure, load_component_config, report_startup_failure
from storscp.exitcodes import ExitCode
from storscp.logger.lines import format_event
from storscp.logger.lock import LogDirLocked, lock_log_dir
from storscp.logger.logfile import AlternatingLog
from storscp.runtime import StopFlag, die_with_parent

PROC = "logger"
POLL_MS = 500
SYNC_INTERVAL_S = 1.0
DRAIN_S = 1.0

log = logging.getLogger(__name__)


def write_event(logfile: AlternatingLog, event: bus.Event) -> None:
    logfile.write_line(format_event(event).encode("utf-8"))


def receive_all(sock: zmq.Socket[bytes], logfile: AlternatingLog) -> int:
    """Write everything queued now; malformed messages become ERROR lines."""
    count = 0
    while True:
        try:
            frames = sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return count
        try:
            msg = bus.decode(frames)
        except bus.BusError as exc:
            msg = bus.Event(
                bus.EventType.ERROR, PROC, {"what": "malformed bus message", "reason": str(exc)}
            )
        if isinstance(msg, bus.Event):
            write_event(logfile, msg)
            count += 1


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_component_config(PROC, argv)
        stop = StopFlag()
        stop.install()
        die_with_parent()
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
            logfile = AlternatingLog(config.log_dir, config.log_max_bytes)
        except OSError as exc:
            raise StartupFailure(
                ExitCode.CANTCREAT, f"cannot open log files in {config.log_dir}: {exc}"
            ) from None
    except StartupFailure as exc:
        return report_startup_failure(PROC, exc)

    context = zmq.Context()
    sock: zmq.Socket[bytes] = context.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, bus.SEND_HWM)
    try:
        try:
            sock.bind(bus.logger_endpoint(config.run_dir))
        except zmq.ZMQError as exc:
            return report_startup_failure(
                PROC, StartupFailure(ExitCode.CANTCREAT, f"cannot bind logger socket: {exc}")
            )
        write_event(logfile, bus.Event(bus.EventType.START, PROC, {"pid": os.getpid()}))
        last_sync = time.monotonic()
        while not stop.requested.is_set():
            if sock.poll(POLL_MS):
                receive_all(sock, logfile)
            if time.monotonic() - last_sync >= SYNC_INTERVAL_S:
                logfile.sync()
                last_sync = time.monotonic()
        # Drain: the other components may still be saying goodbye.
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and not stop.urgent.is_set():
            if not sock.poll(100):
                break
            receive_all(sock, logfile)
        return ExitCode.OK
    finally:
        logfile.close()
        os.close(lock_fd)
        sock.close()
        context.term()
