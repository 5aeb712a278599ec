"""The listener: Supervisor PROCESS_STATE events -> ERROR events in the log.

Runs as a Supervisor event listener. stdout is reserved for the listener
protocol ("only eventlistener protocol messages may be sent to stdout"), so
diagnostics go to stderr. An EXITED that Supervisor did not expect, a
BACKOFF (a start attempt failed) or a FATAL (Supervisor gave up) becomes an
ERROR with the program, its pid, how it ended (exit status or signal, read
from supervisord's log: the event does not carry it) and whether that was
expected. Pushes to the logger endpoint; owns no file.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import BinaryIO

from storscp import bus
from storscp.component import (
    StartupFailure,
    load_component_config,
    make_outbox,
    report_startup_failure,
)
from storscp.instruments import ListenerMetrics, listener_metrics
from storscp.outbox import Outbox
from storscp.runtime import die_with_parent
from storscp.supervisor import conf
from storscp.supervisor.exits import last_exit, startup_reason

PROC = "listener"

WHAT = {
    "EXITED": "component exited unexpectedly",
    "BACKOFF": "component failed to start",
    "FATAL": "component gave up: too many failed starts",
}

log = logging.getLogger(__name__)

# Supervisor's event listener protocol ("Event Listener Notification Protocol"
# in its docs): say READY, read a header line of `key:value` tokens and `len`
# bytes of payload, answer RESULT. Written out here rather than imported from
# supervisor.childutils, which also loads xmlrpc, http.client and ssl for its
# RPC helpers: 10 MiB RSS in this process (bench/README.md, "Where the memory goes").
READY = b"READY\n"
RESULT_OK = b"RESULT 2\nOK"


def tokens(line: str) -> dict[str, str]:
    """`a:1 b:2` -> {"a": "1", "b": "2"}; a token without ':' is skipped."""
    return dict(t.split(":", 1) for t in line.split() if ":" in t)


def wait_event(stdin: BinaryIO, stdout: BinaryIO) -> tuple[dict[str, str], str]:
    """(headers, payload) of the next event. Raises EOFError when stdin closes."""
    stdout.write(READY)
    stdout.flush()
    line = stdin.readline()
    if not line:
        raise EOFError("supervisord closed stdin")
    headers = tokens(line.decode("utf-8", errors="replace"))
    payload = stdin.read(int(headers["len"]))
    return headers, payload.decode("utf-8", errors="replace")


def acknowledge(stdout: BinaryIO) -> None:
    stdout.write(RESULT_OK)
    stdout.flush()


def error_for(
    eventname: str, payload: dict[str, str], run_dir: Path
) -> dict[str, bus.FieldValue] | None:
    """The ERROR fields for a state change worth reporting, else None."""
    state = eventname.removeprefix("PROCESS_STATE_")
    if state not in WHAT:
        return None
    if state == "EXITED" and payload.get("expected") == "1":
        return None  # an exit code listed as expected: not an error
    process = payload.get("processname", "")
    group = payload.get("groupname", "") or process
    fields: dict[str, bus.FieldValue] = {"what": WHAT[state], "program": group}
    if process != group:
        fields["process"] = process  # receiver:receiver_0 and the like
    # EXITED names the pid; BACKOFF and FATAL come after the process is gone.
    ended = last_exit(conf.log_path_in(run_dir), process)
    pid = payload.get("pid") or (str(ended.pid) if ended and ended.pid else None)
    if pid is not None:
        fields["pid"] = int(pid)
    if ended is not None:
        if ended.exit_status is not None:
            fields["exit_status"] = ended.exit_status
        if ended.signal is not None:
            fields["signal"] = ended.signal
    fields["expected"] = False
    fields["from_state"] = payload.get("from_state", "")
    fields["to_state"] = state
    if "tries" in payload:
        fields["tries"] = int(payload["tries"])
    if state != "EXITED":
        # A start-up failure says why on its stderr, the last line of its log.
        reason = startup_reason(conf.child_log_path(run_dir, process))
        if reason is not None:
            fields["reason"] = reason
    return fields


def count(metrics: ListenerMetrics, eventname: str, payload: dict[str, str]) -> None:
    """Exits (expected or not) and automatic restarts, by program."""
    state = eventname.removeprefix("PROCESS_STATE_")
    program = payload.get("groupname", "") or payload.get("processname", "")
    if state == "EXITED":
        expected = "true" if payload.get("expected") == "1" else "false"
        metrics.exits.labels(program, expected).inc()
    elif state == "STARTING" and payload.get("from_state") in ("EXITED", "BACKOFF"):
        metrics.restarts.labels(program).inc()


def serve(outbox: Outbox, run_dir: Path) -> None:
    metrics = listener_metrics()
    while True:
        headers, payload = wait_event(sys.stdin.buffer, sys.stdout.buffer)
        try:
            body = tokens(payload.split("\n", 1)[0])
            count(metrics, headers.get("eventname", ""), body)
            fields = error_for(headers.get("eventname", ""), body, run_dir)
            if fields is not None:
                outbox.event(bus.EventType.ERROR, **fields)
        except Exception:  # never let one odd event stop the listener
            log.exception("cannot handle event %r", headers)
        acknowledge(sys.stdout.buffer)


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_component_config(PROC, argv)
        die_with_parent()
    except StartupFailure as exc:
        return report_startup_failure(PROC, exc)
    outbox = make_outbox(PROC, config)
    outbox.event(bus.EventType.START, pid=os.getpid())
    try:
        serve(outbox, config.run_dir)
    except (EOFError, KeyboardInterrupt, BrokenPipeError, ValueError, KeyError):
        # stdin closed: supervisord is going away.
        pass
    finally:
        outbox.close()
    return 0
