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
    COMMITMENT = "commitment"
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


def commitment_endpoint(run_dir: Path) -> str:
    """Receivers push commitment requests and report outcomes here; commitment binds it."""
    return f"ipc://{run_dir}/{BUS_DIR_NAME}/commitment.sock"


def receiver_endpoint(run_dir: Path, pid: int) -> str:
    """One receiver process binds this; commitment pushes ReportOffered to it."""
    return f"ipc://{run_dir}/{BUS_DIR_NAME}/receiver-{pid}.sock"


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


@dataclass(frozen=True, slots=True)
class CommitmentRequested:
    """Receiver -> commitment: a Storage Commitment request is pending on disk.

    `request_name` is its file in `<state_dir>/commitment/`; the file is the
    request, this only rings the bell.
    """

    request_name: str

    KIND = b"sc-requested"


@dataclass(frozen=True, slots=True)
class ReportOffered:
    """Commitment -> the receiver holding the association that asked: send this report.

    `committed` holds [SOP Class UID, SOP Instance UID] pairs, `failed` the
    same with `reasons` (Failure Reason codes) in the same order.
    """

    request_name: str
    association_id: int
    transaction_uid: str
    committed: list[list[str]]
    failed: list[list[str]]
    reasons: list[int]

    KIND = b"sc-offered"


class Outcome(StrEnum):
    """What became of a ReportOffered."""

    ACCEPTED = "accepted"  # the association is open; the report is being sent
    DELIVERED = "delivered"  # the SCU answered the N-EVENT-REPORT with Success
    DECLINED = "declined"  # not sent, or not confirmed: use a new association


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """Receiver -> commitment: the fate of an offered report."""

    request_name: str
    outcome: Outcome
    reason: str = ""

    KIND = b"sc-outcome"


Message = InstanceStored | Event | CommitmentRequested | ReportOffered | ReportOutcome


_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls))
    for cls in (InstanceStored, Event, CommitmentRequested, ReportOffered, ReportOutcome)
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
        if kind == CommitmentRequested.KIND:
            requested = CommitmentRequested(**body)
            _check_strings(requested, ("request_name",), frames)
            return requested
        if kind == ReportOffered.KIND:
            offered = ReportOffered(**body)
            _check_offer(offered, frames)
            return offered
        if kind == ReportOutcome.KIND:
            body["outcome"] = Outcome(body["outcome"])
            outcome = ReportOutcome(**body)
            _check_strings(outcome, ("request_name", "reason"), frames)
            return outcome
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
    _check_strings(
        msg,
        ("depot_name", "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "calling_ae"),
        frames,
    )
    if not _is_int(msg.size_bytes):
        raise BusError("field size_bytes must be an integer", frames)


def _check_strings(msg: Message, names: tuple[str, ...], frames: list[bytes]) -> None:
    for name in names:
        if not isinstance(getattr(msg, name), str):
            raise BusError(f"field {name} must be a string", frames)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_offer(msg: ReportOffered, frames: list[bytes]) -> None:
    _check_strings(msg, ("request_name", "transaction_uid"), frames)
    if not _is_int(msg.association_id):
        raise BusError("field association_id must be an integer", frames)
    for name in ("committed", "failed"):
        pairs = getattr(msg, name)
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(u, str) for u in p)
            for p in pairs
        ):
            raise BusError(f"field {name} must be a list of [class, instance] pairs", frames)
    if (
        not isinstance(msg.reasons, list)
        or len(msg.reasons) != len(msg.failed)
        or not all(_is_int(r) for r in msg.reasons)
    ):
        raise BusError("field reasons must be one integer per failed reference", frames)
