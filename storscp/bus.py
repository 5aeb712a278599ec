"""The ZeroMQ wire protocol: endpoints, message classes, encode/decode.

Everything that crosses a socket between storscp processes is defined here.
Sockets are PUSH (senders connect) / PULL (the owner binds) over ipc in
`<run_dir>/bus/`. A message is two frames: an ASCII kind, then UTF-8 JSON carrying a
`"v"` version. Never pickle: decoding must not execute anything.

ZeroMQ is the doorbell, the depot is the queue: a lost `InstanceStored`
costs latency (the committer's sweep finds the file), never data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from storscp.errors import StorscpError

PROTOCOL_VERSION = 1

# Bounded queues: a slow or absent peer must never make a sender block.
SEND_HWM = 10_000
LINGER_MS = 1_000

FieldValue = str | int | float | bool | None


class BusError(StorscpError):
    """Frames that are not a valid storscp message; keeps the raw frames."""

    def __init__(self, reason: str, frames: list[bytes]) -> None:
        super().__init__(reason)
        self.frames = frames


class EventType(StrEnum):
    """The four service events of the log files."""

    START = "START"
    ASSOCIATION = "ASSOCIATION"
    WRITE = "WRITE"
    ERROR = "ERROR"


class Proc(StrEnum):
    """The four component names, as in Supervisor and the `proc=` field."""

    RECEIVER = "receiver"
    COMMITTER = "committer"
    LOGGER = "logger"
    LISTENER = "listener"
    CLI = "cli"


# The sockets live in <run_dir>/bus/, which the components' account owns;
# run_dir itself (supervisord.conf) stays writable only by whoever starts
# the service, so a component account can never rewrite what root runs.
BUS_DIR_NAME = "bus"


def committer_endpoint(run_dir: Path) -> str:
    """Receivers push InstanceStored here; the committer binds it."""
    return f"ipc://{run_dir}/{BUS_DIR_NAME}/committer.sock"


def logger_endpoint(run_dir: Path) -> str:
    """Every process pushes Event here; the logger binds it."""
    return f"ipc://{run_dir}/{BUS_DIR_NAME}/logger.sock"


def now_iso() -> str:
    """Local time with its UTC offset, millisecond precision."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class InstanceStored:
    """Receiver -> committer: a durable ready file is in the depot."""

    depot_name: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size_bytes: int
    calling_ae: str

    KIND = b"stored"


@dataclass(frozen=True, slots=True)
class Event:
    """Any process -> logger: one line of storscp1.log / storscp2.log."""

    type: EventType
    proc: str
    fields: dict[str, FieldValue] = field(default_factory=dict)
    time: str = field(default_factory=now_iso)

    KIND = b"event"


Message = InstanceStored | Event


_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in (InstanceStored, Event)
}


def encode(msg: Message) -> list[bytes]:
    """Message -> [kind, JSON] frames."""
    # A shallow dict: asdict() deep-copies, which costs more than the JSON here.
    body: dict[str, Any] = {name: getattr(msg, name) for name in _FIELD_NAMES[type(msg)]}
    body["v"] = PROTOCOL_VERSION
    return [msg.KIND, json.dumps(body, ensure_ascii=False).encode("utf-8")]


def decode(frames: list[bytes]) -> Message:
    """[kind, JSON] frames -> Message; BusError on anything else."""
    if len(frames) != 2:
        raise BusError(f"expected 2 frames, got {len(frames)}", frames)
    kind, payload = frames
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BusError(f"payload is not UTF-8 JSON: {exc}", frames) from None
    if not isinstance(body, dict):
        raise BusError("payload is not a JSON object", frames)
    if body.pop("v", None) != PROTOCOL_VERSION:
        raise BusError(f"unsupported protocol version in {kind!r}", frames)
    try:
        if kind == InstanceStored.KIND:
            stored = InstanceStored(**body)
            _check_types(stored, frames)
            return stored
        if kind == Event.KIND:
            body["type"] = EventType(body["type"])
            event = Event(**body)
            _check_event(event, frames)
            return event
    except (TypeError, ValueError, KeyError) as exc:
        raise BusError(f"malformed {kind!r} message: {exc}", frames) from None
    raise BusError(f"unknown message kind {kind!r}", frames)


def _check_event(event: Event, frames: list[bytes]) -> None:
    if not isinstance(event.proc, str) or not isinstance(event.time, str):
        raise BusError("event proc and time must be strings", frames)
    if not isinstance(event.fields, dict):
        raise BusError("event fields must be an object", frames)
    for key, value in event.fields.items():
        if not isinstance(value, str | int | float | bool | None):
            raise BusError(f"event field {key!r} must be a scalar", frames)


def _check_types(msg: InstanceStored, frames: list[bytes]) -> None:
    for name in (
        "depot_name",
        "sop_instance_uid",
        "sop_class_uid",
        "transfer_syntax_uid",
        "calling_ae",
    ):
        if not isinstance(getattr(msg, name), str):
            raise BusError(f"field {name} must be a string", frames)
    if not isinstance(msg.size_bytes, int) or isinstance(msg.size_bytes, bool):
        raise BusError("field size_bytes must be an integer", frames)
