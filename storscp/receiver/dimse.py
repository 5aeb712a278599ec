"""DIMSE command sets (PS3.7 section 9.3, Annex E), implicit VR little endian.

The receiver reads C-ECHO-RQ and C-STORE-RQ and writes their responses;
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
    C_CANCEL_RQ = 0x0FFF


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
    message_id = 0
    if 0x0110 in values and len(values[0x0110]) == 2:
        message_id = US.unpack(values[0x0110])[0]
    return Command(
        command_field=field,
        message_id=message_id,
        has_dataset=data_set_type != NO_DATASET,
        affected_sop_class_uid=_text(values.get(0x0002, b"")),
        affected_sop_instance_uid=_text(values.get(0x1000, b"")),
        move_originator_ae=_text(values.get(0x1030, b"")).strip(),
    )


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
