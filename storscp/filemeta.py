"""Reading a Part 10 file's meta information (group 0002) without pydicom.

The committer (for a ready file whose bus message never came) and the
commitment check read files storscp wrote itself (`receiver/depot.py`) or, at
worst, any Part 10 file in the storage directory. Group 0002 is always
explicit VR little endian (PS3.10 7.1), so a few lines of `struct` read it;
importing pydicom for it cost the committer ~15 MiB RSS (bench/README.md,
"Where the memory goes").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from storscp.errors import StorscpError

# Our file meta is ~250 bytes; anything past this is not a file we wrote.
META_READ_BYTES = 16 * 1024
PREAMBLE_BYTES = 128
PREFIX = b"DICM"
GROUP_LENGTH = 0x0000
TRANSFER_SYNTAX = 0x0010
MEDIA_SOP_CLASS = 0x0002
MEDIA_SOP_INSTANCE = 0x0003
SOURCE_AE = 0x0016
_ELEMENT = struct.Struct("<HH2s")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})


class MetaError(StorscpError, ValueError):
    """A file whose meta information we cannot read."""


@dataclass(frozen=True, slots=True)
class FileMeta:
    values: dict[int, bytes]  # element number of (0002,xxxx) -> raw value
    dataset_offset: int  # where the dataset starts in the file

    def text(self, element: int) -> str:
        """An element's value as text without its padding; "" when absent.

        Raises MetaError if it is not ASCII.
        """
        try:
            return self.values.get(element, b"").decode("ascii").rstrip("\x00 ")
        except UnicodeDecodeError:
            raise MetaError(f"file meta element (0002,{element:04X}) is not ASCII") from None


def read(path: Path) -> FileMeta:
    """The file meta of `path`, reading at most META_READ_BYTES.

    Raises OSError (FileNotFoundError if the file is not there) or MetaError.
    """
    with open(path, "rb") as fh:
        head = fh.read(META_READ_BYTES)
    return parse(head)


def parse(head: bytes) -> FileMeta:
    """The file meta from a file's first bytes (preamble included)."""
    if head[PREAMBLE_BYTES : PREAMBLE_BYTES + 4] != PREFIX:
        raise MetaError("no DICM prefix")
    values: dict[int, bytes] = {}
    start = pos = PREAMBLE_BYTES + 4
    while pos + 8 <= len(head):
        group, element, vr = _ELEMENT.unpack_from(head, pos)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                break
            length = _U32.unpack_from(head, pos + 8)[0]
            pos += 12
        else:
            length = _U16.unpack_from(head, pos + 6)[0]
            pos += 8
        if pos + length > len(head):
            raise MetaError(
                f"file meta element (0002,{element:04X}) runs past {META_READ_BYTES} bytes"
            )
        values[element] = head[pos : pos + length]
        pos += length
    group_length = values.get(GROUP_LENGTH, b"")
    if len(group_length) == 4:
        # The group length element itself (12 bytes), then the rest of the group.
        pos = start + 12 + _U32.unpack(group_length)[0]
    return FileMeta(values, pos)
