"""The ZeroMQ wire protocol: endpoints, message classes, encode/decode.

Everything that crosses a socket between storscp processes, or from storscp
to a feed consumer, is defined here. Sockets live over ipc in
`<run_dir>/bus/`; the owner binds, senders connect. A message is an ASCII
kind, then UTF-8 JSON carrying a `"v"` version; `InstanceStored`, the one
message per instance on the C-STORE path, is a small binary record with its
own version byte instead (see `_encode_stored`), and `EventSent` a binary
header before its JSON. Never pickle: decoding must not execute anything.

Receivers -> committer is PUSH/PULL: ZeroMQ is the doorbell, the depot is
the queue, so a lost `InstanceStored` costs latency (the committer's sweep
finds the file), never data. Likewise for the feed: the history is the
queue, the live PUB socket the doorbell; a consumer that misses a live
message sees a gap in `seq` and replays it.

Every process -> logger is DEALER/ROUTER, because the log has no depot
behind it: an event that dies in a killed logger's queue is gone unless its
sender still holds it. So each sender incarnation numbers its events
(`EventSent`: seq, and `floor`, the oldest it still holds), keeps them until
the logger says they are written (`Ack`), and sends them again after the
logger restarts; the logger writes each (origin, seq) once, in order (the
zguide's "Lazy Pirate" idea, resend until answered, made idempotent with
sequence numbers).

Why this pair: PUSH/PULL has no way back. A second socket would do
(a PUB in the logger, a SUB per sender filtering on its origin; missing an
ack is harmless since they are cumulative), but DEALER/ROUTER does it over
one connection per sender: the ack comes back on the connection that
carried the events, the ROUTER names the sender by its routing id (the
origin), and that connection's handshake tells the sender a new logger is
there. DEALER is as asynchronous as PUSH ("like PUSH and PULL combined",
zguide ch. 3), and a ROUTER never blocks on a peer: messages "they can't
send anywhere: they drop them silently", so a frozen sender cannot stall
the logger, and the next cumulative ack makes good a dropped one.
"""

from __future__ import annotations

import json
import os
import re
import struct
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

# The header frame of an EventSent: version, seq, floor. Binary because it is
# built for every (re)send and read for every event: 0.1 µs, JSON 2 µs.
EVENT_HEADER = struct.Struct("!BQQ")
EVENT_HEADER_VERSION = 1
# An origin: the sender's pid, then 32 random bits (pids are reused, after a
# restart and after a reboot alike; the random part makes the name unique).
_ORIGIN_RE = re.compile(rb"[0-9]{1,10}-[0-9a-f]{8}")

FieldValue = str | int | float | bool | None
_JSON_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool, "tuple[str, ...]": tuple}


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
    """The component names, as in Supervisor and the `proc=` field."""

    RECEIVER = "receiver"
    COMMITTER = "committer"
    FEED = "feed"
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


FEED_LIVE_SOCKET = "feed-pub.sock"
FEED_REPLAY_SOCKET = "feed-rep.sock"


def feed_live_endpoint(run_dir: Path, configured: str = "") -> str:
    """The committer's PUB socket (live feed): `feed_live_endpoint`, or ipc in bus/."""
    return configured or f"ipc://{run_dir}/{BUS_DIR_NAME}/{FEED_LIVE_SOCKET}"


def feed_replay_endpoint(run_dir: Path, configured: str = "") -> str:
    """The feed process's ROUTER socket (replay): `feed_replay_endpoint`, or ipc in bus/."""
    return configured or f"ipc://{run_dir}/{BUS_DIR_NAME}/{FEED_REPLAY_SOCKET}"


def new_origin() -> str:
    """A name for this process incarnation on the logger route: `<pid>-<8 hex digits>`."""
    # os.urandom is what secrets.token_hex reads; `secrets` itself imports
    # hmac and hashlib (OpenSSL's libcrypto): 3.6 MiB RSS in every process.
    return f"{os.getpid()}-{os.urandom(4).hex()}"


def origin_of(routing_id: bytes) -> str | None:
    """The origin a sender's routing id names, or None if it is not one of ours."""
    return routing_id.decode("ascii") if _ORIGIN_RE.fullmatch(routing_id) else None


def now_iso() -> str:
    """Local time with its UTC offset, millisecond precision."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class InstanceStored:
    """Receiver -> committer: a durable ready file is in the depot.

    Study, Series and Modality are what the receiver read from the dataset's
    head: valid UIDs (and a bounded Modality) or "".
    """

    depot_name: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size_bytes: int
    calling_ae: str
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    modality: str = ""

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
class EventSent:
    """Sender -> logger: an Event and its place in its sender's stream.

    Frames: [b"sent", EVENT_HEADER + the Event's JSON]. `seq` numbers the
    events of one sender incarnation from 1; `floor` is the oldest seq the
    sender still holds, so every event below it is written or given up and
    the logger need not wait for it. The header is rebuilt for each send,
    the JSON only once. Two frames, not three: each frame costs pyzmq about
    as much as the JSON of a short event.
    """

    seq: int
    floor: int
    event: Event

    KIND = b"sent"


@dataclass(frozen=True, slots=True)
class Ack:
    """Logger -> sender: every event of yours up to `seq` is in the log file."""

    seq: int

    KIND = b"ack"


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


# -- the feed: committer (live, PUB) and feed process (replay) -> consumers ------------


@dataclass(frozen=True, slots=True)
class InstanceCommitted:
    """An instance became visible in storage (after the fsync that made it durable).

    `seq` never repeats or goes back; `time` is when it was committed. No
    patient demographics: identifiers only.
    """

    seq: int
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    transfer_syntax_uid: str
    bytes: int
    calling_ae: str
    time: str
    replaced: bool

    KIND = b"instance"


@dataclass(frozen=True, slots=True)
class StudyComplete:
    """No instance of the study was committed for `study_quiet_s`: one burst ended."""

    seq: int
    study_instance_uid: str
    calling_aes: tuple[str, ...]
    series: int
    instances: int
    first_time: str
    last_time: str
    time: str

    KIND = b"study_complete"


@dataclass(frozen=True, slots=True)
class FeedHeartbeat:
    """Committer -> consumers, every second: the newest `seq` in the history.

    A consumer that missed the last live message notices it here, not only
    when the next instance arrives.
    """

    seq: int

    KIND = b"heartbeat"


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """Consumer -> feed process: the messages with a seq above `after`, up to `limit`."""

    after: int
    limit: int = 1000

    KIND = b"replay"


@dataclass(frozen=True, slots=True)
class ReplayPage:
    """Feed process -> consumer: first frame pair of a replay answer.

    `count` feed messages follow as [kind, JSON] frame pairs, in seq order.
    `history_start` is the oldest seq still kept (`last_seq` + 1 when the
    history is empty). When `after` is older than that, nothing follows and
    `error` says "history starts at N": the messages in between are gone.
    When `after` is beyond `last_seq`, "history ends at N": this is not the
    history the consumer followed (it was deleted and started again).
    """

    after: int
    history_start: int
    last_seq: int
    count: int
    error: str = ""

    KIND = b"page"


FeedMessage = InstanceCommitted | StudyComplete
Message = (
    InstanceStored
    | Event
    | FeedMessage
    | FeedHeartbeat
    | ReplayRequest
    | ReplayPage
    | CommitmentRequested
    | ReportOffered
    | ReportOutcome
    | EventSent
    | Ack
)
REPLAY_PAGE_MAX = 1000

_CLASSES: dict[bytes, type] = {
    cls.KIND: cls
    for cls in (
        InstanceStored,
        CommitmentRequested,
        InstanceCommitted,
        StudyComplete,
        FeedHeartbeat,
        ReplayRequest,
        ReplayPage,
    )
}
_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls))
    for cls in (Event, Ack, ReportOffered, ReportOutcome, *_CLASSES.values())
}
# The JSON type of every field of the flat messages (Event is checked on its own).
_FIELD_TYPES: dict[type, dict[str, type]] = {
    cls: {f.name: _JSON_TYPES[str(f.type)] for f in fields(cls)} for cls in _CLASSES.values()
}


# InstanceStored on the wire: a version byte, size_bytes, then each string
# field in this order as a 4-byte length and UTF-8. Per instance that is ~1 us
# to encode and ~3 us to decode, against ~10 us each as JSON.
STORED_VERSION = 1
_STORED_HEAD = struct.Struct("<Bq")
_LENGTH = struct.Struct("<L")
_STORED_STRINGS = (
    "depot_name",
    "sop_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "calling_ae",
    "study_instance_uid",
    "series_instance_uid",
    "modality",
)


def _encode_stored(msg: InstanceStored) -> bytes:
    parts = [_STORED_HEAD.pack(STORED_VERSION, msg.size_bytes)]
    for name in _STORED_STRINGS:
        raw = getattr(msg, name).encode("utf-8", errors="replace")
        parts += (_LENGTH.pack(len(raw)), raw)
    return b"".join(parts)


def _decode_stored(frames: list[bytes]) -> InstanceStored:
    payload = frames[1]
    try:
        version, size = _STORED_HEAD.unpack_from(payload)
        if version != STORED_VERSION:
            raise BusError(f"unsupported version {version} of a stored message", frames)
        pos = _STORED_HEAD.size
        strings: list[str] = []
        for _ in _STORED_STRINGS:
            (length,) = _LENGTH.unpack_from(payload, pos)
            pos += _LENGTH.size
            if pos + length > len(payload):
                raise BusError("stored message ends inside a field", frames)
            strings.append(payload[pos : pos + length].decode("utf-8"))
            pos += length
    except (struct.error, UnicodeDecodeError) as exc:
        raise BusError(f"malformed stored message: {exc}", frames) from None
    if pos != len(payload):
        raise BusError("stored message has trailing bytes", frames)
    depot, uid, sop_class, syntax, calling, study, series, modality = strings
    return InstanceStored(depot, uid, sop_class, syntax, size, calling, study, series, modality)


def _json(msg: Message) -> bytes:
    # A shallow dict: asdict() deep-copies, which costs more than the JSON here.
    body: dict[str, Any] = {name: getattr(msg, name) for name in _FIELD_NAMES[type(msg)]}
    body["v"] = PROTOCOL_VERSION
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def encode(msg: Message) -> list[bytes]:
    """Message -> [kind, JSON] frames ([kind, header + JSON] for EventSent,
    [kind, binary record] for InstanceStored)."""
    if type(msg) is InstanceStored:
        return [msg.KIND, _encode_stored(msg)]
    if isinstance(msg, EventSent):
        return event_frames(_json(msg.event), msg.seq, msg.floor)
    return [msg.KIND, _json(msg)]


def event_body(event: Event) -> bytes:
    """The JSON frame of an event, encoded once however often it is sent."""
    return _json(event)


def event_frames(body: bytes, seq: int, floor: int) -> list[bytes]:
    """The frames of EventSent(seq, floor, <the event of `body`>)."""
    return [EventSent.KIND, EVENT_HEADER.pack(EVENT_HEADER_VERSION, seq, floor) + body]


def decode(frames: list[bytes]) -> Message:
    """[kind, JSON] frames -> Message; BusError on anything else."""
    if len(frames) != 2:
        raise BusError(f"expected 2 frames, got {len(frames)}", frames)
    if frames[0] == EventSent.KIND:
        return _decode_event_sent(frames)
    if frames[0] == InstanceStored.KIND:
        return _decode_stored(frames)
    return _decode_json(frames[0], frames[1], frames)


def _decode_json(kind: bytes, payload: bytes, frames: list[bytes]) -> Message:
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BusError(f"payload is not UTF-8 JSON: {exc}", frames) from None
    if not isinstance(body, dict):
        raise BusError("payload is not a JSON object", frames)
    if body.pop("v", None) != PROTOCOL_VERSION:
        raise BusError(f"unsupported protocol version in {kind!r}", frames)
    try:
        if kind == Event.KIND:
            body["type"] = EventType(body["type"])
            event = Event(**body)
            _check_event(event, frames)
            return event
        if kind == Ack.KIND:
            ack = Ack(**body)
            if not _is_count(ack.seq):
                raise BusError("ack seq must be a non-negative integer", frames)
            return ack
        if kind == ReportOffered.KIND:
            offered = ReportOffered(**body)
            _check_offer(offered, frames)
            return offered
        if kind == ReportOutcome.KIND:
            body["outcome"] = Outcome(body["outcome"])
            outcome = ReportOutcome(**body)
            _check_strings(outcome, ("request_name", "reason"), frames)
            return outcome
        cls = _CLASSES.get(kind)
        if cls is not None:
            _check_types(cls, body, frames)
            msg: Message = cls(**body)
            return msg
    except (TypeError, ValueError, KeyError) as exc:
        raise BusError(f"malformed {kind!r} message: {exc}", frames) from None
    raise BusError(f"unknown message kind {kind!r}", frames)


def encode_page(page: ReplayPage, messages: list[list[bytes]]) -> list[bytes]:
    """A replay answer: the page's frames, then each message's [kind, JSON] frames."""
    frames = encode(page)
    for message in messages:
        frames += message
    return frames


def decode_page(frames: list[bytes]) -> tuple[ReplayPage, list[FeedMessage]]:
    """Inverse of encode_page; BusError unless it is a page followed by `count` feed messages."""
    if len(frames) < 2 or len(frames) % 2:
        raise BusError(f"a replay page has an even number of frames, got {len(frames)}", frames)
    page = decode(frames[:2])
    if not isinstance(page, ReplayPage):
        raise BusError(f"expected a replay page, got {frames[0]!r}", frames)
    messages: list[FeedMessage] = []
    for i in range(2, len(frames), 2):
        msg = decode(frames[i : i + 2])
        if not isinstance(msg, InstanceCommitted | StudyComplete):
            raise BusError(f"unexpected {frames[i]!r} in a replay page", frames)
        messages.append(msg)
    if len(messages) != page.count:
        raise BusError(f"page announces {page.count} messages, holds {len(messages)}", frames)
    return page, messages


def _decode_event_sent(frames: list[bytes]) -> EventSent:
    payload = frames[1]
    if len(payload) < EVENT_HEADER.size:
        raise BusError(f"sent event of {len(payload)} bytes", frames)
    version, seq, floor = EVENT_HEADER.unpack_from(payload)
    if version != EVENT_HEADER_VERSION:
        raise BusError(f"unsupported event header version {version}", frames)
    if not 1 <= floor <= seq:
        raise BusError(f"event seq {seq} with floor {floor}", frames)
    event = _decode_json(Event.KIND, payload[EVENT_HEADER.size :], frames)
    assert isinstance(event, Event)  # the kind says so
    return EventSent(seq, floor, event)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_event(event: Event, frames: list[bytes]) -> None:
    if not isinstance(event.proc, str) or not isinstance(event.time, str):
        raise BusError("event proc and time must be strings", frames)
    if not isinstance(event.fields, dict):
        raise BusError("event fields must be an object", frames)
    for key, value in event.fields.items():
        if not isinstance(value, str | int | float | bool | None):
            raise BusError(f"event field {key!r} must be a scalar", frames)


def _check_types(cls: type, body: dict[str, Any], frames: list[bytes]) -> None:
    """Every field present is of its JSON type (a bool is not an int); lists become tuples."""
    for name, expected in _FIELD_TYPES[cls].items():
        if name not in body:
            continue  # a missing field is the constructor's to report (or default)
        value = body[name]
        if expected is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BusError(f"field {name} must be a list of strings", frames)
            body[name] = tuple(value)
        elif expected is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise BusError(f"field {name} must be an integer", frames)
        elif not isinstance(value, expected):
            raise BusError(f"field {name} must be a {expected.__name__}", frames)


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
