"""Storage Commitment Push Model datasets (PS3.4 Annex J.3): what is asked, what is answered.

The receiver parses the Action Information of an N-ACTION: peer bytes,
bounded in size before they get here, walked by a small reader of our own
and checked strictly (a Transaction UID, a non-empty Referenced SOP
Sequence, valid UIDs), since every UID may become a file name we look up.
The report's Event Information is built here too: encoded directly for the
receiver (same association), as a pydicom Dataset for pynetdicom (new
association).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

from storscp.errors import StorscpError
from storscp.uids import UIDError, check_uid

SOP_CLASS_UID = "1.2.840.10008.1.20.1"
# The well-known instance every N-ACTION and N-EVENT-REPORT names (PS3.4 J.3.5).
SOP_INSTANCE_UID = "1.2.840.10008.1.20.1.1"
ACTION_REQUEST_COMMITMENT = 1
# The only syntaxes we negotiate for this class: every SCU supports Implicit,
# most also Explicit; neither needs more than a dataset reader.
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
TRANSFER_SYNTAXES = (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)

# A reference is two UIDs in an item, ~120 bytes; optional attributes (Retrieve
# AE Title, Storage Media File-Set ID/UID) fit in the rest of this allowance.
BYTES_PER_REFERENCE = 512
BYTES_OVERHEAD = 64 * 1024

Reference = tuple[str, str]  # (SOP Class UID, SOP Instance UID)


class EventType(IntEnum):
    """Event Type ID of the report (PS3.4 J.3.3.1)."""

    ALL_COMMITTED = 1
    FAILURES_EXIST = 2


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) of a Failed SOP Sequence item (PS3.3 C.14.1.1)."""

    PROCESSING_FAILURE = 0x0110
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    CLASS_INSTANCE_CONFLICT = 0x0119
    REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    DUPLICATE_TRANSACTION_UID = 0x0131
    RESOURCE_LIMITATION = 0x0213


class ActionStatus(IntEnum):
    """N-ACTION-RSP statuses we send (PS3.7 10.1.4.1.10 and Annex C)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    NO_SUCH_SOP_INSTANCE = 0x0112
    INVALID_ARGUMENT_VALUE = 0x0115
    NO_SUCH_SOP_CLASS = 0x0118
    NO_SUCH_ACTION = 0x0123
    NOT_AUTHORISED = 0x0124
    UNRECOGNISED_OPERATION = 0x0211
    RESOURCE_LIMITATION = 0x0213


class ActionRefused(StorscpError):
    """An N-ACTION we answer with `status`; the message says why (the Error Comment)."""

    def __init__(self, status: ActionStatus, reason: str, transaction_uid: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.transaction_uid = transaction_uid


@dataclass(frozen=True, slots=True)
class ActionInformation:
    """A valid Storage Commitment request."""

    transaction_uid: str
    references: tuple[Reference, ...]


@dataclass(frozen=True, slots=True)
class Failure:
    sop_class_uid: str
    sop_instance_uid: str
    reason: FailureReason


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of one request: every reference is in exactly one list."""

    transaction_uid: str
    committed: tuple[Reference, ...]
    failed: tuple[Failure, ...]

    @property
    def event_type(self) -> EventType:
        return EventType.FAILURES_EXIST if self.failed else EventType.ALL_COMMITTED


def max_action_bytes(max_references: int) -> int:
    """The largest Action Information we read into memory for `max_references`."""
    return BYTES_OVERHEAD + max_references * BYTES_PER_REFERENCE


def parse_action_information(
    data: bytes, transfer_syntax: str, max_references: int
) -> ActionInformation:
    """Decode and validate the dataset of an N-ACTION; raise ActionRefused if unusable.

    A direct reader of the two attributes we need: pydicom takes ~0.2 ms per
    reference (most of a second for 4,096), on the receiver's threads.
    Tests check it agrees with pydicom.
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ActionRefused(
            ActionStatus.INVALID_ARGUMENT_VALUE, f"transfer syntax {transfer_syntax} not supported"
        )
    try:
        found = _read_action(data, transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN)
    except _Malformed as exc:
        raise ActionRefused(
            ActionStatus.INVALID_ARGUMENT_VALUE, f"Action Information cannot be decoded: {exc}"
        ) from None
    transaction_raw, items = found
    if transaction_raw is None:
        raise ActionRefused(ActionStatus.INVALID_ARGUMENT_VALUE, "no Transaction UID (0008,1195)")
    try:
        transaction = check_uid(_text(transaction_raw))
    except UIDError as exc:
        raise ActionRefused(
            ActionStatus.INVALID_ARGUMENT_VALUE, f"Transaction UID (0008,1195): {exc}"
        ) from None
    if not items:
        raise ActionRefused(
            ActionStatus.INVALID_ARGUMENT_VALUE,
            "empty or missing Referenced SOP Sequence (0008,1199)",
            transaction,
        )
    if len(items) > max_references:
        raise ActionRefused(
            ActionStatus.RESOURCE_LIMITATION,
            f"{len(items)} references, more than commitment_max_references={max_references}",
            transaction,
        )
    references = []
    for number, item in enumerate(items, 1):
        uids = []
        for tag, keyword in (
            (_CLASS, "Referenced SOP Class UID"),
            (_INSTANCE, "Referenced SOP Instance UID"),
        ):
            try:
                uids.append(check_uid(_text(item.get(tag, b""))))
            except UIDError as exc:
                raise ActionRefused(
                    ActionStatus.INVALID_ARGUMENT_VALUE,
                    f"item {number}: {keyword}: {exc}",
                    transaction,
                ) from None
        references.append((uids[0], uids[1]))
    return ActionInformation(transaction, tuple(references))


def _text(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace")


class _Malformed(StorscpError):
    """Bytes that are not a dataset we can walk."""


_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")
_TRANSACTION = (0x0008, 0x1195)
_SEQUENCE = (0x0008, 0x1199)
_CLASS = (0x0008, 0x1150)
_INSTANCE = (0x0008, 0x1155)
_REASON = (0x0008, 0x1197)
_FAILED = (0x0008, 0x1198)
_ITEM = (0xFFFE, 0xE000)
_ITEM_END = (0xFFFE, 0xE00D)
_SEQUENCE_END = (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# Nesting beyond this is refused rather than walked (items within items...).
_MAX_DEPTH = 8

Tag2 = tuple[int, int]


class _Walker:
    """Reads elements of a little endian dataset, implicit or explicit VR."""

    def __init__(self, data: bytes, implicit: bool) -> None:
        self.data = data
        self.implicit = implicit

    def header(self, pos: int, end: int) -> tuple[Tag2, int, int]:
        """((group, element), value length, value position) of the element at `pos`."""
        if pos + 8 > end:
            raise _Malformed(f"element header at byte {pos} runs past its end")
        group, element = _TAG.unpack_from(self.data, pos)
        if group == 0xFFFE or self.implicit:
            return (group, element), _U32.unpack_from(self.data, pos + 4)[0], pos + 8
        vr = self.data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise _Malformed(f"element header at byte {pos} runs past its end")
            return (group, element), _U32.unpack_from(self.data, pos + 8)[0], pos + 12
        return (group, element), _U16.unpack_from(self.data, pos + 6)[0], pos + 8

    def elements(
        self, pos: int, end: int, wanted: frozenset[Tag2], depth: int, until_item_end: bool
    ) -> tuple[dict[Tag2, bytes | list[dict[Tag2, bytes]]], int]:
        """The wanted elements from `pos` to `end` (or to an Item Delimitation)."""
        if depth > _MAX_DEPTH:
            raise _Malformed("sequences nested too deeply")
        found: dict[Tag2, bytes | list[dict[Tag2, bytes]]] = {}
        while pos < end:
            tag, length, value = self.header(pos, end)
            if tag == _ITEM_END and until_item_end:
                return found, value
            if tag[0] == 0xFFFE:
                raise _Malformed(f"unexpected delimiter at byte {pos}")
            if length == _UNDEFINED:
                items, pos = self.sequence(value, end, depth + 1, tag == _SEQUENCE)
                if tag == _SEQUENCE:
                    found[tag] = items
                continue
            if value + length > end:
                raise _Malformed(f"element ({tag[0]:04X},{tag[1]:04X}) runs past its end")
            if tag == _SEQUENCE and depth == 0:
                found[tag], _ = self.sequence(value, value + length, depth + 1, True, defined=True)
            elif tag in wanted:
                found[tag] = self.data[value : value + length]
            pos = value + length
        if until_item_end:
            raise _Malformed("item without its delimiter")
        return found, pos

    def sequence(
        self, pos: int, end: int, depth: int, keep: bool, defined: bool = False
    ) -> tuple[list[dict[Tag2, bytes]], int]:
        """The items of a sequence (undefined length unless `defined`); only kept if `keep`."""
        wanted = frozenset({_CLASS, _INSTANCE}) if keep and depth == 1 else frozenset()
        items: list[dict[Tag2, bytes]] = []
        while pos < end:
            tag, length, value = self.header(pos, end)
            if tag == _SEQUENCE_END and not defined:
                return items, value
            if tag != _ITEM:
                raise _Malformed(f"expected an item at byte {pos}")
            if length == _UNDEFINED:
                item, pos = self.elements(value, end, wanted, depth, until_item_end=True)
            else:
                if value + length > end:
                    raise _Malformed(f"item at byte {pos} runs past its sequence")
                item, pos = self.elements(value, value + length, wanted, depth, False)
            if keep:
                items.append({k: v for k, v in item.items() if isinstance(v, bytes)})
        if not defined:
            raise _Malformed("sequence without its delimiter")
        return items, pos


def _read_action(data: bytes, implicit: bool) -> tuple[bytes | None, list[dict[Tag2, bytes]]]:
    walker = _Walker(data, implicit)
    found, _ = walker.elements(0, len(data), frozenset({_TRANSACTION}), 0, False)
    transaction = found.get(_TRANSACTION)
    items = found.get(_SEQUENCE)
    return (
        transaction if isinstance(transaction, bytes) else None,
        items if isinstance(items, list) else [],
    )


def event_information(report: Report) -> Dataset:
    """The N-EVENT-REPORT dataset as pydicom's Dataset, for pynetdicom to send.

    pydicom is imported here, not at the top: the commitment process starts
    (and restarts) without it, and loads it for its first report.
    """
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    if report.committed:
        ds.ReferencedSOPSequence = [_item(cls, uid) for cls, uid in report.committed]
    if report.failed:
        failed = []
        for failure in report.failed:
            item = _item(failure.sop_class_uid, failure.sop_instance_uid)
            item.FailureReason = int(failure.reason)
            failed.append(item)
        ds.FailedSOPSequence = failed
    return ds


def encode_event_information(report: Report, transfer_syntax: str) -> bytes:
    """The report's dataset in one of TRANSFER_SYNTAXES, as pydicom would write it.

    Written directly: pydicom takes most of a second for 4,096 references,
    on a receiver thread. Tests check both agree byte for byte.
    """
    implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    parts = [_element(_TRANSACTION, b"UI", _uid(report.transaction_uid), implicit)]
    if report.failed:
        items = [
            _element(_CLASS, b"UI", _uid(f.sop_class_uid), implicit)
            + _element(_INSTANCE, b"UI", _uid(f.sop_instance_uid), implicit)
            + _element(_REASON, b"US", _U16.pack(int(f.reason)), implicit)
            for f in report.failed
        ]
        parts.append(_sequence(_FAILED, items, implicit))
    if report.committed:
        items = [
            _element(_CLASS, b"UI", _uid(cls), implicit)
            + _element(_INSTANCE, b"UI", _uid(uid), implicit)
            for cls, uid in report.committed
        ]
        parts.append(_sequence(_SEQUENCE, items, implicit))
    return b"".join(parts)


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _element(tag: Tag2, vr: bytes, value: bytes, implicit: bool) -> bytes:
    if implicit:
        return _TAG.pack(*tag) + _U32.pack(len(value)) + value
    if vr in _LONG_VRS:
        return _TAG.pack(*tag) + vr + b"\x00\x00" + _U32.pack(len(value)) + value
    return _TAG.pack(*tag) + vr + _U16.pack(len(value)) + value


def _sequence(tag: Tag2, items: list[bytes], implicit: bool) -> bytes:
    body = b"".join(_TAG.pack(*_ITEM) + _U32.pack(len(item)) + item for item in items)
    return _element(tag, b"SQ", body, implicit)


def _item(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item
