"""Staging one incoming instance in the depot, durably.

A `PartFile` is created when a C-STORE's command set has arrived: it writes
the Part 10 preamble and our file meta, then takes the dataset bytes as they
come off the wire, unchanged, so memory stays bounded whatever the size. It
holds an exclusive flock until closed, which tells the committer's sweep that
a live receiver owns it. `make_ready()` fsyncs the file, renames it to its
ready name and fsyncs the depot directory: only then may Success be sent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from storscp import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, depotfiles

PREAMBLE = b"\x00" * 128 + b"DICM"
WRITE_BUFFER_BYTES = 256 * 1024

DEFLATED_TS = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE_TS = "1.2.840.10008.1.2"
EXPLICIT_BE_TS = "1.2.840.10008.1.2.2"

SOP_CLASS_TAG = 0x00080016
SOP_INSTANCE_TAG = 0x00080018
# How much of a deflated dataset we inflate to find its SOP UIDs.
DEFLATED_HEAD_BYTES = 1024 * 1024

# errnos that mean "no room or no right to write": the SCU gets 0xA700.
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str
) -> bytes:
    """Encoded group 0002 (with its group length) for one instance."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue()


class PartFile:
    """One instance being received into `<depot>/<token>.part`."""

    def __init__(self, depot_dir: Path, meta: bytes, file_mode: int = 0o640) -> None:
        self.path = depot_dir / depotfiles.part_name(depotfiles.new_token())
        self.dataset_offset = len(PREAMBLE) + len(meta)
        self.dataset_bytes = 0
        self.error: OSError | None = None
        self._closed = False
        self._ready = False
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, file_mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fh: BinaryIO = open(  # noqa: SIM115 - lives as long as the part
                fd, "wb", buffering=WRITE_BUFFER_BYTES, closefd=True
            )
        except BaseException:
            os.close(fd)
            _unlink_quietly(self.path)
            raise
        self._write(PREAMBLE)
        self._write(meta)

    def write(self, data: bytes | memoryview) -> None:
        """Append dataset bytes; after a write error the rest is discarded."""
        if self.error is None:
            self._write(data)
            self.dataset_bytes += len(data)

    def _write(self, data: bytes | memoryview) -> None:
        try:
            self._fh.write(data)
        except OSError as exc:
            self.error = exc

    def flush(self) -> None:
        """Push buffered bytes to the file so it can be read back."""
        if self.error is None:
            try:
                self._fh.flush()
            except OSError as exc:
                self.error = exc

    def make_ready(self, uid: str, depot_dir_fd: int) -> str:
        """fsync, rename to the ready name, fsync the depot; return the ready name.

        Raises the first OSError seen while receiving or here; the caller then
        calls `discard()`.
        """
        if self.error is not None:
            raise self.error
        self._fh.flush()
        os.fsync(self._fh.fileno())
        name = depotfiles.ready_name(uid)
        ready = self.path.with_name(name)
        os.rename(self.path, ready)
        self.path = ready
        self._ready = True
        os.fsync(depot_dir_fd)
        self.close()
        return name

    def close(self) -> None:
        """Close the file (releasing the flock); idempotent."""
        if not self._closed:
            self._closed = True
            try:
                self._fh.close()
            except OSError as exc:
                # A late ENOSPC on flush: keep the first error.
                self.error = self.error or exc

    def discard(self) -> None:
        """Drop the file: a failed or aborted store leaves nothing behind.

        A no-op once the file is ready: from then on it belongs to the committer.
        """
        self.close()
        if self._ready:
            return
        _unlink_quietly(self.path)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@dataclass(frozen=True, slots=True)
class SopUids:
    sop_class_uid: str | None
    sop_instance_uid: str | None


def read_sop_uids(path: Path, offset: int, transfer_syntax_uid: str) -> SopUids:
    """Read (0008,0016) and (0008,0018) from the dataset at `offset` of `path`.

    Only the head of the dataset is parsed; large values are skipped unread.
    Raises ValueError (or an OSError) when the bytes cannot be parsed.
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
            stream,
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
        except (EOFError, struct.error, NotImplementedError) as exc:
            raise ValueError(f"dataset cannot be parsed: {exc}") from exc
    return SopUids(found.get(SOP_CLASS_TAG), found.get(SOP_INSTANCE_TAG))
