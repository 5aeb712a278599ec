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
import fcntl
import os
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from storscp import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, depotfiles

PREAMBLE = b"\x00" * 128 + b"DICM"
WRITE_BUFFER_BYTES = 256 * 1024



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
