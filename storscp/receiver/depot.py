"""Staging one incoming instance in the depot, durably.

A `PartFile` is created when a C-STORE's command set has arrived: it writes
the Part 10 preamble and our file meta, then takes the dataset bytes as they
come off the wire, unchanged, so memory stays bounded whatever the size. It
holds an exclusive flock until closed, which tells the committer's sweep that
a live receiver owns it. `make_ready()` fsyncs the file, renames it to its
ready name (taking its arrival token under the arrival lock, see arrival.py)
and fsyncs the depot directory: only then may Success be sent.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import struct
import threading
from pathlib import Path

from storscp import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, depotfiles
from storscp.arrival import Arrival

log = logging.getLogger(__name__)

PREAMBLE = b"\x00" * 128 + b"DICM"
WRITE_BUFFER_BYTES = 256 * 1024


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str
) -> bytes:
    """Encoded group 0002 (with its group length) for one instance.

    Encoded here rather than with pydicom's writer, which costs ~0.2 ms per
    instance on the hot path; tests check both agree.
    """
    elements = [
        _VERSION_ELEMENT,
        _short(0x0002, b"UI", _pad(sop_class_uid, b"\x00")),
        _short(0x0003, b"UI", _pad(sop_instance_uid, b"\x00")),
        _short(0x0010, b"UI", _pad(transfer_syntax_uid, b"\x00")),
        _IMPLEMENTATION_ELEMENTS,
    ]
    if source_ae:
        elements.append(_short(0x0016, b"AE", _pad(source_ae[:16], b" ")))
    body = b"".join(elements)
    return _short(0x0000, b"UL", struct.pack("<L", len(body))) + body


def _pad(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", errors="replace")
    return raw + pad if len(raw) % 2 else raw


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def _long(element: int, vr: bytes, value: bytes) -> bytes:
    return (
        struct.pack("<HH", 0x0002, element)
        + vr
        + b"\x00\x00"
        + struct.pack("<L", len(value))
        + value
    )


# The same in every file: encoded once.
_VERSION_ELEMENT = _long(0x0001, b"OB", b"\x00\x01")
_IMPLEMENTATION_ELEMENTS = b"".join(
    (
        _short(0x0012, b"UI", _pad(IMPLEMENTATION_CLASS_UID, b"\x00")),
        _short(0x0013, b"SH", _pad(IMPLEMENTATION_VERSION_NAME, b" ")),
    )
)


def create_locked_part(
    depot_dir: str | Path, file_mode: int, chmod: bool = True
) -> tuple[int, str]:
    """A new empty `*.part` file, exclusively flocked; returns (fd, path).

    `chmod=False` when the caller knows the umask leaves `file_mode` whole
    (`umask_keeps`): one syscall less per instance. Paths on this per-instance
    path are plain strings: pathlib's joins were a tenth of the receiver's time.
    """
    path = f"{os.fspath(depot_dir)}/{depotfiles.part_name(depotfiles.unique_name())}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = os.open(path, flags, file_mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if chmod:
            os.fchmod(fd, file_mode)  # exactly the configured mode, whatever the umask
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    return fd, path


def umask_keeps(file_mode: int) -> bool:
    """Whether open(..., file_mode) already gives exactly `file_mode` in this process.

    Read once (the umask is per process and storscp never changes it) from
    /proc/self/status: os.umask() can only be read by setting it, which
    would race with other threads creating files. Unknown: False.
    """
    try:
        with open("/proc/self/status") as fh:
            line = next((x for x in fh if x.startswith("Umask:")), "")
        umask = int(line.split()[1], 8)
    except (OSError, IndexError, ValueError):
        return False
    return file_mode <= 0o777 and not umask & file_mode


# Empty part files each receiver keeps ready (removed at stop).
SPARE_PARTS = 4


class PartPool:
    """Empty part files made ahead of need, shared by a receiver's connections.

    Creating a file is the slowest step before the data can be written: with
    fsyncs in flight it takes 0.1 ms, and on ext4 without a journal, after many
    files were deleted, most of a millisecond. A connection refills the pool
    right after it has answered a C-STORE, while the peer reads the response
    and prepares its next request, so the next C-STORE takes a ready part.
    A background thread would do the same work but contend for the GIL with
    the connection on its critical path. Spare parts are locked like any
    other, removed at close (or, after a crash, by the committer's sweep).
    """

    def __init__(
        self, depot_dir: Path, file_mode: int, arrival: Arrival, size: int = SPARE_PARTS
    ) -> None:
        self.depot_dir = depot_dir
        self.file_mode = file_mode
        # Shared by every part this pool hands out: their ready names' tokens.
        self.arrival = arrival
        self.size = size
        self._chmod = not umask_keeps(file_mode)
        self._depot = os.fspath(depot_dir)
        self._spares: collections.deque[tuple[int, str]] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self._making = 0  # spares being created now, by connection threads

    def take(self) -> tuple[int, str]:
        """A locked empty part (fd, path); creates one now if none is spare."""
        try:
            return self._spares.popleft()
        except IndexError:
            return create_locked_part(self._depot, self.file_mode, self._chmod)

    def refill(self) -> None:
        """Top the pool up to its size; a failure is left for take() to report.

        Several connection threads refill at once: each reserves its slot
        under the lock before making the file, so the pool never holds more
        than its size (a power-loss test once found five spares of four).
        """
        while True:
            with self._lock:
                if self._closed or len(self._spares) + self._making >= self.size:
                    return
                self._making += 1
            try:
                spare = create_locked_part(self._depot, self.file_mode, self._chmod)
            except OSError as exc:
                with self._lock:
                    self._making -= 1
                # Full disk or no permission: take() will report it per C-STORE.
                log.debug("cannot pre-create a part file: %s", exc)
                return
            with self._lock:
                self._making -= 1
                if self._closed:
                    _drop(spare)
                    return
                self._spares.append(spare)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        while self._spares:
            _drop(self._spares.popleft())


def _drop(spare: tuple[int, str]) -> None:
    os.close(spare[0])
    _unlink_quietly(spare[1])


class PartFile:
    """One instance being received into `<depot>/<token>.part`."""

    def __init__(self, fd: int, path: str, meta: bytes, arrival: Arrival) -> None:
        self.path = path
        self._fd = fd
        self._arrival = arrival
        self.dataset_offset = len(PREAMBLE) + len(meta)
        self.dataset_bytes = 0
        self.error: OSError | None = None
        self._ready = False
        # Preamble and meta wait in the buffer: a small instance is one write().
        self._pending = bytearray(PREAMBLE)
        self._pending += meta

    def write(self, data: bytes | memoryview) -> None:
        """Append dataset bytes; after a write error the rest is discarded."""
        if self.error is not None:
            return
        self.dataset_bytes += len(data)
        if len(self._pending) + len(data) <= WRITE_BUFFER_BYTES:
            self._pending += data
            return
        self.flush()
        if self.error is None:
            self._write_all(data)

    def flush(self) -> None:
        """Write what is buffered, so the file can be read back."""
        if self._pending and self.error is None:
            self._write_all(self._pending)
            # A new buffer rather than clear(): a failed write may still hold a view of it.
            self._pending = bytearray()

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            # Without its traceback the error keeps no frame (and no buffer view) alive.
            self.error = exc.with_traceback(None)
        finally:
            view.release()

    def make_ready(self, uid: str, depot_dir_fd: int) -> str:
        """fsync, rename to the ready name, fsync the depot; return the ready name.

        Raises the first OSError seen while receiving or here; the caller then
        calls `discard()`.
        """
        self.flush()
        if self.error is not None:
            raise self.error
        os.fsync(self._fd)
        # Token and rename under one lock: token order is the order files appear in.
        with self._arrival.ordered():
            name = depotfiles.ready_name(self._arrival.take(), uid)
            ready = self.path[: self.path.rindex("/") + 1] + name
            os.rename(self.path, ready)
        try:
            os.fsync(depot_dir_fd)
        except OSError:
            self._take_back(ready)
            raise
        self.path = ready
        self._ready = True
        self.close()
        return name

    def _take_back(self, ready: str) -> None:
        """Undo the rename to the ready name: the rename is not durable, so the SCU
        is told the store failed, and the committer must not publish it.

        Best effort: if the sweep took the file in that instant, or the name
        cannot be taken back (or a power cut loses the undo), the instance
        appears although its SCU was told it failed; the SCU sends it again
        and the new copy replaces it (README, "What it promises").
        """
        try:
            os.rename(ready, self.path)
        except OSError as exc:
            log.error("%s stays ready after a failed depot fsync: %s", ready, exc)

    def close(self) -> None:
        """Close the file (releasing the flock); idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def discard(self) -> None:
        """Drop the file: a failed or aborted store leaves nothing behind.

        A no-op once the file is ready: from then on it belongs to the committer.
        """
        self.close()
        if not self._ready:
            _unlink_quietly(self.path)


def _unlink_quietly(path: str) -> None:
    """Remove a part; if the filesystem refuses (read-only), the committer's sweep will."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s now (%s); the depot sweep will", path, exc)
