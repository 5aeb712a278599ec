"""DIMSE command sets (PS3.7 section 9.3, Annex E), implicit VR little endian.

The receiver reads C-ECHO-RQ, C-STORE-RQ and N-ACTION-RQ and writes their
responses; for Storage Commitment on the same association it also writes an
N-EVENT-REPORT-RQ and reads the N-EVENT-REPORT-RSP;
command sets are a handful of short elements, so a direct codec here costs
microseconds where a general dataset decoder costs a millisecond per
instance. Values keep their raw text (padding included) so that callers
validate them, not this codec.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum

from storscp.errors import StorscpError

ELEMENT = struct.Struct("<HHL")
# Characters an LO value may hold as we write it: printable ASCII but the backslash.
_NOT_LO = re.compile(r"[^\x20-\x5b\x5d-\x7e]")
US = struct.Struct("<H")
UL = struct.Struct("<L")

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
NO_DATASET = 0x0101


class CommandField(IntEnum):
    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    C_CANCEL_RQ = 0x0FFF


# Data Set Type of a command followed by a dataset (any value but NO_DATASET).
DATASET_PRESENT = 0x0001


class CommandSetError(StorscpError, ValueError):
    """A command set that cannot be decoded: the association is aborted."""


@dataclass(frozen=True, slots=True)
class Command:
    """The elements of a request command set that the receiver uses."""

    command_field: int
    message_id: int
    has_dataset: bool
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    move_originator_ae: str
    # N-ACTION-RQ: Requested SOP Class/Instance UID, Action Type ID.
    requested_sop_class_uid: str = ""
    requested_sop_instance_uid: str = ""
    action_type_id: int | None = None
    # Responses (to our N-EVENT-REPORT-RQ): Message ID Being Responded To, Status.
    responded_to: int | None = None
    status: int | None = None


def decode_command(data: bytes) -> Command:
    """Decode an implicit VR little endian command set."""
    values: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            raise CommandSetError("command set ends inside an element header")
        group, element, length = ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0x0000:
            raise CommandSetError(f"element ({group:04X},{element:04X}) in a command set")
        if length > end - pos:
            raise CommandSetError(f"element (0000,{element:04X}) runs past the command set")
        values[element] = data[pos : pos + length]
        pos += length
    try:
        field = US.unpack(values[0x0100])[0]
        data_set_type = US.unpack(values[0x0800])[0]
    except (KeyError, struct.error):
        raise CommandSetError("command set lacks CommandField or CommandDataSetType") from None
    return Command(
        command_field=field,
        message_id=_us(values, 0x0110) or 0,
        has_dataset=data_set_type != NO_DATASET,
        affected_sop_class_uid=_text(values.get(0x0002, b"")),
        affected_sop_instance_uid=_text(values.get(0x1000, b"")),
        move_originator_ae=_text(values.get(0x1030, b"")).strip(),
        requested_sop_class_uid=_text(values.get(0x0003, b"")),
        requested_sop_instance_uid=_text(values.get(0x1001, b"")),
        action_type_id=_us(values, 0x1008),
        responded_to=_us(values, 0x0120),
        status=_us(values, 0x0900),
    )


def _us(values: dict[int, bytes], element: int) -> int | None:
    """An US value, or None if absent or not two bytes."""
    raw = values.get(element)
    if raw is None or len(raw) != 2:
        return None
    return int(US.unpack(raw)[0])


def _text(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace")


def _element(element: int, value: bytes) -> bytes:
    return ELEMENT.pack(0x0000, element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii", errors="replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _lo(value: str) -> bytes:
    """One LO value: at most 64 printable ASCII characters, never a backslash.

    Our comments quote what peers sent (reprs with `\\x00`, control characters);
    a backslash would split the value in two, a control character is not allowed.
    """
    raw = _NOT_LO.sub("?", value[:64]).encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def _command(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return _element(0x0000, UL.pack(len(body))) + body


def store_response(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int, comment: str = ""
) -> bytes:
    """A C-STORE-RSP command set."""
    elements = [
        _element(0x0002, _uid(sop_class_uid)),
        _element(0x0100, US.pack(CommandField.C_STORE_RSP)),
        _element(0x0120, US.pack(message_id)),
        _element(0x0800, US.pack(NO_DATASET)),
        _element(0x0900, US.pack(status)),
    ]
    if comment:
        elements.append(_element(0x0902, _lo(comment)))
    elements.append(_element(0x1000, _uid(sop_instance_uid)))
    return _command(elements)


def echo_response(message_id: int, status: int = 0x0000) -> bytes:
    """A C-ECHO-RSP command set."""
    return _command(
        [
            _element(0x0002, _uid(VERIFICATION_SOP_CLASS)),
            _element(0x0100, US.pack(CommandField.C_ECHO_RSP)),
            _element(0x0120, US.pack(message_id)),
            _element(0x0800, US.pack(NO_DATASET)),
            _element(0x0900, US.pack(status)),
        ]
    )


def action_response(
    message_id: int,
    status: int,
    comment: str = "",
    sop_class_uid: str = "",
    sop_instance_uid: str = "",
    action_type_id: int | None = None,
) -> bytes:
    """An N-ACTION-RSP command set without Action Reply (PS3.7 10.3.4.2).

    The Affected SOP Class/Instance UIDs and the Action Type ID are optional
    (U and C=); we send them on Success, the Error Comment on failure.
    """
    elements = []
    if sop_class_uid:
        elements.append(_element(0x0002, _uid(sop_class_uid)))
    elements += [
        _element(0x0100, US.pack(CommandField.N_ACTION_RSP)),
        _element(0x0120, US.pack(message_id)),
        _element(0x0800, US.pack(NO_DATASET)),
        _element(0x0900, US.pack(status)),
    ]
    if comment:
        elements.append(_element(0x0902, _lo(comment)))
    if sop_instance_uid:
        elements.append(_element(0x1000, _uid(sop_instance_uid)))
    if action_type_id is not None:
        elements.append(_element(0x1008, US.pack(action_type_id)))
    return _command(elements)


def event_report_request(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, event_type_id: int
) -> bytes:
    """An N-EVENT-REPORT-RQ command set; its Event Information dataset follows."""
    return _command(
        [
            _element(0x0002, _uid(sop_class_uid)),
            _element(0x0100, US.pack(CommandField.N_EVENT_REPORT_RQ)),
            _element(0x0110, US.pack(message_id)),
            _element(0x0800, US.pack(DATASET_PRESENT)),
            _element(0x1000, _uid(sop_instance_uid)),
            _element(0x1002, US.pack(event_type_id)),
        ]
    )
