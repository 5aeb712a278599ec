"""Finding a received dataset's SOP Class and Instance UIDs.

Both sit near the start of the dataset, in group 0008. `from_head` walks the
first bytes we kept in memory while streaming, which answers for nearly
every instance in microseconds; when it cannot tell (a sequence of undefined
length before them, a deflated dataset, an odd VR), `from_file` parses the
head of the depot file with pydicom.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from pydicom.filereader import data_element_generator

DEFLATED_TS = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE_TS = "1.2.840.10008.1.2"
EXPLICIT_BE_TS = "1.2.840.10008.1.2.2"

SOP_CLASS_TAG = 0x00080016
SOP_INSTANCE_TAG = 0x00080018
# How much of a deflated dataset we inflate to find its SOP UIDs.
DEFLATED_HEAD_BYTES = 1024 * 1024
# How many bytes pydicom may read to find them (skipping by seek is free).
PARSE_READ_BYTES = 1024 * 1024
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class SopUids:
    sop_class_uid: str | None
    sop_instance_uid: str | None


def from_head(head: bytes, transfer_syntax_uid: str, complete: bool) -> SopUids | None:
    """The UIDs from the first bytes of a dataset, or None if they cannot tell.

    `complete` says whether `head` is the whole dataset (then running out of
    bytes means the elements are absent rather than further on).
    """
    if transfer_syntax_uid == DEFLATED_TS:
        return None
    implicit = transfer_syntax_uid == IMPLICIT_LE_TS
    order = ">" if transfer_syntax_uid == EXPLICIT_BE_TS else "<"
    tag_struct = struct.Struct(order + "HH")
    u16 = struct.Struct(order + "H")
    u32 = struct.Struct(order + "L")
    found: dict[int, str] = {}
    pos, end = 0, len(head)
    while True:
        if pos + 8 > end:
            return _done(found) if complete and pos == end else None
        group, element = tag_struct.unpack_from(head, pos)
        tag = group << 16 | element
        if tag > SOP_INSTANCE_TAG:
            return _done(found)
        if implicit:
            length = u32.unpack_from(head, pos + 4)[0]
            header = 8
        else:
            vr = head[pos + 4 : pos + 6]
            if vr in LONG_VRS:
                if pos + 12 > end:
                    return None
                length = u32.unpack_from(head, pos + 8)[0]
                header = 12
            elif vr.isalpha() and vr.isupper():
                length = u16.unpack_from(head, pos + 6)[0]
                header = 8
            else:
                return None
        if length == UNDEFINED_LENGTH:
            return None
        value_end = pos + header + length
        if tag in (SOP_CLASS_TAG, SOP_INSTANCE_TAG):
            if value_end > end:
                return None
            found[tag] = head[pos + header : value_end].decode("ascii", errors="replace")
        pos = value_end


def _done(found: dict[int, str]) -> SopUids:
    return SopUids(found.get(SOP_CLASS_TAG), found.get(SOP_INSTANCE_TAG))


class ReadBudget:
    """A file whose read()s may return at most `budget_bytes` in all; seeks cost nothing.

    pydicom skips large values by seeking only at the top level: inside a
    sequence item it reads every value whole, so without a budget a sequence
    holding a 2 GB value before the SOP UIDs would cost 2 GB of memory.
    """

    def __init__(self, fh: BinaryIO, budget_bytes: int) -> None:
        self._fh = fh
        self._budget = budget_bytes
        self._left = budget_bytes

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            raise ValueError(f"SOP UIDs not in the first {self._budget // 1024} KiB")
        data = self._fh.read(n)
        self._left -= len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


def from_file(path: Path, offset: int, transfer_syntax_uid: str) -> SopUids:
    """Read (0008,0016) and (0008,0018) from the dataset at `offset` of `path`.

    Only the head of the dataset is parsed: large top-level values are skipped
    unread, and at most PARSE_READ_BYTES are read in all. Raises ValueError
    (or an OSError) when the bytes cannot be parsed.
    """
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
        found: dict[int, str] = {}
        elements = data_element_generator(
            cast(BinaryIO, ReadBudget(stream, PARSE_READ_BYTES)),
            is_implicit_VR=transfer_syntax_uid == IMPLICIT_LE_TS,
            is_little_endian=transfer_syntax_uid != EXPLICIT_BE_TS,
            stop_when=lambda tag, vr, length: tag > SOP_INSTANCE_TAG,
            defer_size=4096,
        )
        try:
            for elem in elements:
                if elem.tag in (SOP_CLASS_TAG, SOP_INSTANCE_TAG):
                    value = elem.value
                    if isinstance(value, bytes):
                        value = value.decode("ascii", errors="replace")
                    found[elem.tag] = str(value or "")
        except (EOFError, struct.error, NotImplementedError, ValueError) as exc:
            raise ValueError(f"dataset cannot be parsed: {exc}") from exc
    return _done(found)
