"""Finding a received dataset's identifiers: SOP Class and Instance, Modality, Study, Series.

All five sit near the start of the dataset, in groups 0008 and 0020, before
any pixel data. `from_head` walks the first bytes we kept in memory while
streaming, which answers for nearly every instance in tens of microseconds;
it steps over sequences of undefined length item by item, to a bounded depth.
When it cannot tell (the head ends first, a deflated dataset, an odd VR, deep
nesting), `from_file` parses the head of the depot file with pydicom, reading
at most PARSE_READ_BYTES. Pixel data is never read.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from storscp.uids import UIDError, check_uid

DEFLATED_TS = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE_TS = "1.2.840.10008.1.2"
EXPLICIT_BE_TS = "1.2.840.10008.1.2.2"

SOP_CLASS_TAG = 0x00080016
SOP_INSTANCE_TAG = 0x00080018
MODALITY_TAG = 0x00080060
STUDY_TAG = 0x0020000D
SERIES_TAG = 0x0020000E
WANTED_TAGS = frozenset({SOP_CLASS_TAG, SOP_INSTANCE_TAG, MODALITY_TAG, STUDY_TAG, SERIES_TAG})
LAST_TAG = SERIES_TAG
ITEM_TAG = 0xFFFEE000
ITEM_END_TAG = 0xFFFEE00D
SEQUENCE_END_TAG = 0xFFFEE0DD
# Nesting deeper than this is left to pydicom (and its read budget).
MAX_DEPTH = 16
# How much of a deflated dataset we inflate to find the identifiers.
DEFLATED_HEAD_BYTES = 1024 * 1024
# How many bytes pydicom may read to find them (skipping by seek is free).
PARSE_READ_BYTES = 1024 * 1024
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# Explicit VRs with a 2-byte length; anything else is left to pydicom.
SHORT_VRS = frozenset(
    {
        b"AE",
        b"AS",
        b"AT",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"FD",
        b"FL",
        b"IS",
        b"LO",
        b"LT",
        b"PN",
        b"SH",
        b"SL",
        b"SS",
        b"ST",
        b"TM",
        b"UI",
        b"UL",
        b"US",
    }
)
UNDEFINED_LENGTH = 0xFFFFFFFF
# A Modality value is a CS: at most 16 characters.
MODALITY_MAX = 16


@dataclass(frozen=True, slots=True)
class DatasetIds:
    """What we read from a dataset's head; None where the element is absent.

    Values are as sent (UIDs may keep their padding): the caller validates.
    """

    sop_class_uid: str | None
    sop_instance_uid: str | None
    modality: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None


def study_series_modality(ids: DatasetIds) -> tuple[str, str, str]:
    """Study and Series Instance UID and Modality as the feed carries them.

    A UID that is not a valid DICOM UID becomes "" (consumers may build paths
    from these, as DCMTK's `-su` does); Modality keeps printable ASCII only.
    """
    study = _valid_or_empty(ids.study_instance_uid)
    series = _valid_or_empty(ids.series_instance_uid)
    modality = "".join(c for c in ids.modality or "" if " " <= c <= "~")
    return study, series, modality


def _valid_or_empty(value: str | None) -> str:
    if value is None:
        return ""
    try:
        return check_uid(value)
    except UIDError:
        return ""


class _Layout:
    """Byte order and VR encoding of one walk."""

    def __init__(self, transfer_syntax_uid: str) -> None:
        order = ">" if transfer_syntax_uid == EXPLICIT_BE_TS else "<"
        self.implicit = transfer_syntax_uid == IMPLICIT_LE_TS
        self.tag = struct.Struct(order + "HH")
        self.u16 = struct.Struct(order + "H")
        self.u32 = struct.Struct(order + "L")
        # One unpack per element on the hot path: tag, then VR and length.
        self.explicit_header = struct.Struct(order + "HH2sH")
        self.implicit_header = struct.Struct(order + "HHL")


_LAYOUTS = {ts: _Layout(ts) for ts in ("", IMPLICIT_LE_TS, EXPLICIT_BE_TS)}
_IMPLICIT_LE = _LAYOUTS[IMPLICIT_LE_TS]


def from_head(head: bytes, transfer_syntax_uid: str, complete: bool) -> DatasetIds | None:
    """The identifiers from the first bytes of a dataset, or None if they cannot tell.

    `complete` says whether `head` is the whole dataset (then running out of
    bytes means the elements are absent rather than further on).
    """
    if transfer_syntax_uid == DEFLATED_TS:
        return None
    layout = _LAYOUTS.get(transfer_syntax_uid) or _LAYOUTS[""]
    found: dict[int, str] = {}
    walk = _walk_implicit if layout.implicit else _walk_explicit
    pos = walk(head, layout, found)
    if pos is None:
        return None
    if pos < 0 or (complete and pos == len(head)):
        return _done(found)
    return None


# The two walks below are written out rather than calling _element_header:
# they run for every element before (0020,000E), ~100 in a CT header, on the
# C-STORE path. Each returns -1 once past LAST_TAG, the position where the
# head ran out, or None when it cannot tell.


def _walk_explicit(head: bytes, layout: _Layout, found: dict[int, str]) -> int | None:
    unpack_header = layout.explicit_header.unpack_from
    u32 = layout.u32.unpack_from
    pos, end = 0, len(head)
    while pos + 8 <= end:
        group, element, vr, length = unpack_header(head, pos)
        tag = group << 16 | element
        if tag > LAST_TAG:
            return -1
        if vr in SHORT_VRS:
            header = 8
        elif vr in LONG_VRS:
            if pos + 12 > end:
                return None
            length = u32(head, pos + 8)[0]
            header = 12
            if length == UNDEFINED_LENGTH:
                # An UN of undefined length holds an implicit VR LE sequence (CP-246).
                inner = _IMPLICIT_LE if vr == b"UN" else layout
                skipped = _skip_sequence(head, pos + 12, inner, 1)
                if skipped is None:
                    return None
                pos = skipped
                continue
        else:
            return None
        value_end = pos + header + length
        if tag in WANTED_TAGS:
            if value_end > end:
                return None
            found[tag] = head[pos + header : value_end].decode("ascii", errors="replace")
        pos = value_end
    return pos


def _walk_implicit(head: bytes, layout: _Layout, found: dict[int, str]) -> int | None:
    unpack_header = layout.implicit_header.unpack_from
    pos, end = 0, len(head)
    while pos + 8 <= end:
        group, element, length = unpack_header(head, pos)
        tag = group << 16 | element
        if tag > LAST_TAG:
            return -1
        if length == UNDEFINED_LENGTH:
            skipped = _skip_sequence(head, pos + 8, layout, 1)
            if skipped is None:
                return None
            pos = skipped
            continue
        value_end = pos + 8 + length
        if tag in WANTED_TAGS:
            if value_end > end:
                return None
            found[tag] = head[pos + 8 : value_end].decode("ascii", errors="replace")
        pos = value_end
    return pos


def _element_header(head: bytes, pos: int, layout: _Layout) -> tuple[int, int, _Layout] | None:
    """(header bytes, value length, layout of nested items) of the element at `pos`."""
    if layout.implicit:
        return 8, layout.u32.unpack_from(head, pos + 4)[0], layout
    vr = head[pos + 4 : pos + 6]
    if vr in LONG_VRS:
        if pos + 12 > len(head):
            return None
        # An UN of undefined length holds an implicit VR little endian sequence (CP-246).
        inner = _IMPLICIT_LE if vr == b"UN" else layout
        return 12, layout.u32.unpack_from(head, pos + 8)[0], inner
    if vr in SHORT_VRS:
        return 8, layout.u16.unpack_from(head, pos + 6)[0], layout
    return None


def _skip_sequence(head: bytes, pos: int, layout: _Layout, depth: int) -> int | None:
    """Where the undefined-length sequence whose items start at `pos` ends, or None."""
    if depth > MAX_DEPTH:
        return None
    end = len(head)
    while True:
        if pos + 8 > end:
            return None
        group, element = layout.tag.unpack_from(head, pos)
        tag = group << 16 | element
        length = layout.u32.unpack_from(head, pos + 4)[0]
        pos += 8
        if tag == SEQUENCE_END_TAG:
            return pos
        if tag != ITEM_TAG:
            return None
        if length != UNDEFINED_LENGTH:
            pos += length
            continue
        found = _skip_item(head, pos, layout, depth)
        if found is None:
            return None
        pos = found


def _skip_item(head: bytes, pos: int, layout: _Layout, depth: int) -> int | None:
    """Where the undefined-length item whose elements start at `pos` ends, or None."""
    end = len(head)
    while True:
        if pos + 8 > end:
            return None
        group, element = layout.tag.unpack_from(head, pos)
        if group << 16 | element == ITEM_END_TAG:
            return pos + 8
        parsed = _element_header(head, pos, layout)
        if parsed is None:
            return None
        header, length, inner = parsed
        if length == UNDEFINED_LENGTH:
            found = _skip_sequence(head, pos + header, inner, depth + 1)
            if found is None:
                return None
            pos = found
        else:
            pos += header + length


def _done(found: dict[int, str]) -> DatasetIds:
    modality = found.get(MODALITY_TAG)
    if modality is not None:
        modality = modality.strip(" \x00")[:MODALITY_MAX]
    return DatasetIds(
        found.get(SOP_CLASS_TAG),
        found.get(SOP_INSTANCE_TAG),
        modality,
        found.get(STUDY_TAG),
        found.get(SERIES_TAG),
    )


class ReadBudget:
    """A file whose read()s may return at most `budget_bytes` in all; seeks cost nothing.

    pydicom skips large values by seeking only at the top level: inside a
    sequence item it reads every value whole, so without a budget a sequence
    holding a 2 GB value before the identifiers would cost 2 GB of memory.
    """

    def __init__(self, fh: BinaryIO, budget_bytes: int) -> None:
        self._fh = fh
        self._budget = budget_bytes
        self._left = budget_bytes

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            raise ValueError(f"identifiers not in the first {self._budget // 1024} KiB")
        data = self._fh.read(n)
        self._left -= len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


def from_file(path: str | Path, offset: int, transfer_syntax_uid: str) -> DatasetIds:
    """Read the identifiers from the dataset at `offset` of `path`.

    Only the head of the dataset is parsed: large top-level values are skipped
    unread, and at most PARSE_READ_BYTES are read in all. What was found before
    a parse error is returned if it includes both SOP UIDs (the rest then counts
    as absent); otherwise raises ValueError (or an OSError).
    """
    # Imported here: the committer, which may call this after a crash, runs
    # without pydicom otherwise (~15 MiB RSS); the receiver has it loaded anyway.
    from pydicom.filereader import data_element_generator

    found: dict[int, str] = {}
    with open(path, "rb") as fh:
        fh.seek(offset)
        stream: BinaryIO = fh
        if transfer_syntax_uid == DEFLATED_TS:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                head = inflater.decompress(fh.read(DEFLATED_HEAD_BYTES), DEFLATED_HEAD_BYTES)
            except zlib.error as exc:
                raise ValueError(f"deflated dataset cannot be inflated: {exc}") from exc
            stream = io.BytesIO(head)
        elements = data_element_generator(
            cast(BinaryIO, ReadBudget(stream, PARSE_READ_BYTES)),
            is_implicit_VR=transfer_syntax_uid == IMPLICIT_LE_TS,
            is_little_endian=transfer_syntax_uid != EXPLICIT_BE_TS,
            stop_when=lambda tag, vr, length: tag > LAST_TAG,
            defer_size=4096,
        )
        try:
            for elem in elements:
                if elem.tag in WANTED_TAGS:
                    value = elem.value
                    if isinstance(value, bytes):
                        value = value.decode("ascii", errors="replace")
                    found[elem.tag] = str(value or "")
        except (EOFError, struct.error, NotImplementedError, ValueError, RecursionError) as exc:
            if SOP_CLASS_TAG not in found or SOP_INSTANCE_TAG not in found:
                raise ValueError(f"dataset cannot be parsed: {exc}") from exc
    return _done(found)
