"""One C-STORE from command set to answer: open the part, check, make durable.

`open_store()` runs when the command set is complete and decides where the
dataset goes (a PartFile, or nowhere with a recorded refusal); the
connection streams the dataset into it; `finish_store()` checks the UIDs,
makes the file durable and returns the status to send. Every failure has a
named status and a reason; only Success carries an InstanceStored.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from storscp import bus
from storscp.errors import StorscpError
from storscp.receiver import sopuids
from storscp.receiver.depot import PartFile, PartPool, file_meta_bytes
from storscp.receiver.dimse import Command
from storscp.uids import UIDError, check_uid, strip_padding

# Dataset bytes kept in memory to find the SOP UIDs without reading the file.
HEAD_BYTES = 64 * 1024
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class StoreStatus(IntEnum):
    """C-STORE response statuses we send (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    INVALID_UID = 0xC001
    # Also pynetdicom's code for "exception in the handler".
    UNEXPECTED_ERROR = 0xC211


class StoreFailure(StorscpError):
    """A C-STORE that must be answered with `status`; the message says why."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def status_for_os_error(exc: OSError) -> StoreStatus:
    """Full disk or quota: out of resources; anything else: processing failure."""
    if exc.errno in RESOURCE_ERRNOS:
        return StoreStatus.OUT_OF_RESOURCES
    return StoreStatus.PROCESSING_FAILURE


class Discard:
    """Where a refused dataset goes: read off the wire (the peer is mid-message), dropped."""

    def __init__(self, failure: StoreFailure) -> None:
        self.failure = failure
        self.dataset_bytes = 0

    def write(self, data: bytes | memoryview) -> None:
        self.dataset_bytes += len(data)

    def discard(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Refusals decided before or while an instance arrives (0: no limit)."""

    max_instance_bytes: int = 0
    min_free_bytes: int = 0
    # layout = "study": Study and Series Instance UID become directory names.
    needs_study: bool = False


@dataclass(slots=True)
class PendingStore:
    """A C-STORE whose dataset is arriving."""

    command: Command
    context_id: int
    transfer_syntax: str
    calling_ae: str
    sink: PartFile | Discard
    max_instance_bytes: int = 0
    needs_study: bool = False
    received: int = 0
    head: bytearray = field(default_factory=bytearray)
    # When the command set was complete: the start of the C-STORE's receive time.
    started: float = field(default_factory=time.monotonic)

    def take(self, data: memoryview) -> None:
        """Dataset bytes off the wire, in order."""
        self.received += len(data)
        too_big = self.max_instance_bytes and self.received > self.max_instance_bytes
        if too_big and isinstance(self.sink, PartFile):
            # Drop what is on disk now; keep reading the rest to nowhere.
            self.sink.discard()
            self.sink = Discard(
                StoreFailure(
                    StoreStatus.OUT_OF_RESOURCES,
                    f"instance larger than max_instance_bytes={self.max_instance_bytes}",
                )
            )
        self.sink.write(data)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]

    def discard(self) -> None:
        self.sink.discard()


def open_store(
    command: Command,
    context_id: int,
    abstract_syntax: str,
    transfer_syntax: str,
    calling_ae: str,
    parts: PartPool,
    limits: StoreLimits,
) -> PendingStore:
    """Decide where the dataset of a C-STORE-RQ goes, before it arrives."""
    sink: PartFile | Discard
    low_space = _low_space(parts.depot_dir, limits.min_free_bytes)
    try:
        uid = check_uid(command.affected_sop_instance_uid)
        class_uid = check_uid(command.affected_sop_class_uid)
    except UIDError as exc:
        sink = Discard(StoreFailure(StoreStatus.INVALID_UID, f"request UID: {exc}"))
    else:
        if low_space:
            sink = Discard(StoreFailure(StoreStatus.OUT_OF_RESOURCES, low_space))
        elif class_uid != abstract_syntax:
            sink = Discard(
                StoreFailure(
                    StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                    f"SOP Class {class_uid} sent on a context for {abstract_syntax}",
                )
            )
        else:
            try:
                meta = file_meta_bytes(class_uid, uid, transfer_syntax, calling_ae)
                fd, path = parts.take()
                sink = PartFile(fd, path, meta, parts.arrival)
            except OSError as exc:
                sink = Discard(
                    StoreFailure(status_for_os_error(exc), f"cannot create depot file: {exc}")
                )
    return PendingStore(
        command,
        context_id,
        transfer_syntax,
        calling_ae,
        sink,
        limits.max_instance_bytes,
        limits.needs_study,
    )


def _low_space(directory: Path, min_free_bytes: int) -> str:
    """Why the filesystem is too full to accept an instance, or ''."""
    if not min_free_bytes:
        return ""
    try:
        st = os.statvfs(directory)
    except OSError:
        return ""  # the store itself will fail and say why
    free = st.f_bavail * st.f_frsize
    if free >= min_free_bytes:
        return ""
    # Key first: the DIMSE Error Comment keeps only 64 characters.
    return f"min_free_bytes={min_free_bytes} not met: {free} bytes free in {directory}"


def finish_store(pending: PendingStore, depot_dir_fd: int) -> bus.InstanceStored:
    """Check the received instance and make it durable; raise StoreFailure if not.

    On return the ready file is fsynced in the depot: Success may be sent.
    The caller discards the part in every case (a no-op once it is ready).
    """
    part = pending.sink
    if isinstance(part, Discard):
        raise part.failure
    part.flush()
    if part.error is not None:
        raise StoreFailure(
            status_for_os_error(part.error), f"cannot write depot file: {part.error}"
        )
    command = pending.command
    uid = strip_padding(command.affected_sop_instance_uid)
    class_uid = strip_padding(command.affected_sop_class_uid)
    found = sopuids.from_head(
        bytes(pending.head), pending.transfer_syntax, part.dataset_bytes <= HEAD_BYTES
    )
    if found is None:
        try:
            found = sopuids.from_file(part.path, part.dataset_offset, pending.transfer_syntax)
        except (ValueError, OSError) as exc:
            raise StoreFailure(StoreStatus.CANNOT_UNDERSTAND, str(exc)) from exc
    found_uid = strip_padding(found.sop_instance_uid or "")
    if found.sop_instance_uid is None or found_uid != uid:
        raise StoreFailure(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Instance UID {found_uid!r} != request {uid!r}",
        )
    found_class = strip_padding(found.sop_class_uid or "")
    if found.sop_class_uid is None or found_class != class_uid:
        raise StoreFailure(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Class UID {found_class!r} != request {class_uid!r}",
        )
    study, series, modality = sopuids.study_series_modality(found)
    if pending.needs_study:
        _check_placeable(found, study, series)
    try:
        name = part.make_ready(uid, depot_dir_fd)
    except OSError as exc:
        raise StoreFailure(
            status_for_os_error(exc), f"cannot make depot file durable: {exc}"
        ) from exc
    return bus.InstanceStored(
        depot_name=name,
        sop_instance_uid=uid,
        sop_class_uid=class_uid,
        transfer_syntax_uid=pending.transfer_syntax,
        size_bytes=part.dataset_offset + part.dataset_bytes,
        calling_ae=pending.calling_ae,
        study_instance_uid=study,
        series_instance_uid=series,
        modality=modality,
    )


def _check_placeable(found: sopuids.DatasetIds, study: str, series: str) -> None:
    """With layout = "study" both UIDs name directories: refuse what is not a valid UID.

    A Study UID of `..` or `1.2/../3` is refused here, before anything is
    ready; the committer checks again before it creates a directory.
    """
    for name, valid, sent in (
        ("Study", study, found.study_instance_uid),
        ("Series", series, found.series_instance_uid),
    ):
        if not valid:
            # Key first: the DIMSE Error Comment keeps only 64 characters.
            what = "missing" if sent is None else f"invalid: {sent[:24]!r}"
            raise StoreFailure(
                StoreStatus.CANNOT_UNDERSTAND, f"layout=study: {name} Instance UID {what}"
            )
