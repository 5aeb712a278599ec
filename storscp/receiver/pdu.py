"""DICOM Upper Layer PDUs (PS3.8 section 9.3) as the receiver reads and writes them.

Only the framing the acceptor needs: the 6-byte PDU header, P-DATA-TF
items read as a stream, and the small fixed PDUs we send (A-ASSOCIATE-RJ,
A-RELEASE-RP, A-ABORT, a one-PDV P-DATA-TF). The A-ASSOCIATE-RQ/AC pair is
left to pynetdicom (see `acse.py`).
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple

from storscp.errors import StorscpError

HEADER = struct.Struct(">BxL")
PDV_HEADER = struct.Struct(">LBB")


class PduType(IntEnum):
    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class Reject(NamedTuple):
    """An A-ASSOCIATE-RJ (result, source, reason) with the words for the log."""

    result: int
    source: int
    reason: int
    text: str


# PS3.8 section 9.3.4: result 1 permanent / 2 transient; source 1 service-user,
# 2 service-provider (ACSE), 3 service-provider (presentation).
REJECT_NO_REASON = Reject(1, 1, 1, "no reason given")
REJECT_APPLICATION_CONTEXT = Reject(1, 1, 2, "application context name not supported")
REJECT_CALLING_AE = Reject(1, 1, 3, "calling AE title not recognised")
REJECT_CALLED_AE = Reject(1, 1, 7, "called AE title not recognised")
REJECT_PROTOCOL_VERSION = Reject(1, 2, 2, "protocol version not supported")
REJECT_LOCAL_LIMIT = Reject(2, 3, 2, "local limit exceeded")
REJECT_CONGESTION = Reject(2, 3, 1, "temporary congestion")


class AbortReason(IntEnum):
    """A-ABORT reasons when the service provider (we) aborts (source 2)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER = 6


class ProtocolError(StorscpError):
    """The peer broke the Upper Layer or DIMSE protocol; we abort."""

    def __init__(self, message: str, reason: AbortReason = AbortReason.NOT_SPECIFIED):
        super().__init__(message)
        self.reason = reason


def associate_rj(reject: Reject) -> bytes:
    return HEADER.pack(PduType.ASSOCIATE_RJ, 4) + bytes(
        (0, reject.result, reject.source, reject.reason)
    )


def release_rp() -> bytes:
    return HEADER.pack(PduType.RELEASE_RP, 4) + b"\x00\x00\x00\x00"


def abort(reason: AbortReason, source: int = 2) -> bytes:
    return HEADER.pack(PduType.ABORT, 4) + bytes((0, 0, source, int(reason)))


def p_data_command(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF carrying a whole command set as its last fragment."""
    item = PDV_HEADER.pack(len(command) + 2, context_id, 0x03)
    return HEADER.pack(PduType.P_DATA_TF, len(item) + len(command)) + item + command


def p_data_message(context_id: int, data: bytes, is_command: bool, max_pdu: int) -> list[bytes]:
    """P-DATA-TF PDUs carrying one whole command set or dataset, one PDV each.

    `max_pdu` is the peer's Maximum Length Received (0: no limit): the
    length of a PDU after its 6-byte header, so each fragment carries at most
    `max_pdu - 6` bytes (4-byte item length, context id, control header).
    """
    room = max_pdu - 6 if max_pdu else max(len(data), 1)
    room = max(room, 2)
    pdus = []
    view = memoryview(data)
    offset = 0
    while True:
        chunk = view[offset : offset + room]
        offset += len(chunk)
        last = offset >= len(data)
        control = (0x01 if is_command else 0x00) | (0x02 if last else 0x00)
        item = PDV_HEADER.pack(len(chunk) + 2, context_id, control)
        pdus.append(HEADER.pack(PduType.P_DATA_TF, len(item) + len(chunk)) + item + bytes(chunk))
        if last:
            return pdus
