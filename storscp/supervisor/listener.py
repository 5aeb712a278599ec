"""The listener: Supervisor PROCESS_STATE events -> ERROR events in the log.

Runs as a Supervisor event listener. stdout is reserved for the listener
protocol ("only eventlistener protocol messages may be sent to stdout"), so
diagnostics go to stderr. An EXITED that Supervisor did not expect, a
BACKOFF or a FATAL becomes an ERROR with program, pid, states and, where
Supervisor can tell, the exit status.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from supervisor import childutils

from storscp import bus
from storscp.component import (
    StartupFailure,
    load_component_config,
    make_outbox,
    report_startup_failure,
)
from storscp.outbox import Outbox
from storscp.runtime import die_with_parent

PROC = "listener"
UNEXPECTED_STATES = {"PROCESS_STATE_BACKOFF", "PROCESS_STATE_FATAL"}

log = logging.getLogger(__name__)


def error_for(eventname: str, payload: dict[str, str]) -> dict[str, bus.FieldValue] | None:
    """The ERROR fields for a state change worth reporting, else None."""
    if eventname == "PROCESS_STATE_EXITED":
        if payload.get("expected") == "1":
            return None
    elif eventname not in UNEXPECTED_STATES:
        return None
    state = eventname.removeprefix("PROCESS_STATE_")
    fields: dict[str, bus.FieldValue] = {
        "what": f"component {state.lower()}",
        "program": payload.get("processname", ""),
        "group": payload.get("groupname", ""),
        "from_state": payload.get("from_state", ""),
        "to_state": state,
        "expected": payload.get("expected") == "1" if state == "EXITED" else False,
    }
    if "pid" in payload:
        fields["pid"] = payload["pid"]
    if "tries" in payload:
        fields["tries"] = payload["tries"]
    return fields


def exit_status(program: str, group: str) -> Any:
    """Ask supervisord for the exit status of the process that just ended."""
    try:
        rpc = childutils.getRPCInterface(os.environ)
        info = rpc.supervisor.getProcessInfo(f"{group}:{program}")
        return info.get("exitstatus")
    except Exception as exc:  # supervisord busy or going away: report without it
        log.debug("no exit status for %s: %s", program, exc)
        return None


def serve(outbox: Outbox) -> None:
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        try:
            body = childutils.get_headers(payload.split("\n", 1)[0])
            fields = error_for(headers.get("eventname", ""), body)
            if fields is not None:
                if fields["to_state"] == "EXITED":
                    status = exit_status(str(fields["program"]), str(fields["group"]))
                    if status is not None:
                        fields["exit_status"] = status
                outbox.event(bus.EventType.ERROR, **fields)
        except Exception:  # never let one odd event stop the listener
            log.exception("cannot handle event %r", headers)
        childutils.listener.ok(sys.stdout)


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_component_config(PROC, argv)
        die_with_parent()
    except StartupFailure as exc:
        return report_startup_failure(PROC, exc)
    outbox = make_outbox(PROC, config)
    outbox.event(bus.EventType.START, pid=os.getpid())
    try:
        serve(outbox)
    except (EOFError, KeyboardInterrupt, BrokenPipeError, ValueError, KeyError):
        # stdin closed: supervisord is going away.
        pass
    finally:
        outbox.close()
    return 0
