"""Pending Storage Commitment requests on disk, in `<state_dir>/commitment/`.

A receiver writes each request it is about to answer with Success: a temp
file, fsync, link to `<transaction>.request` (fails if that transaction is
pending already), fsync the directory; only then the N-ACTION-RSP goes out.
So a request that got Success survives a kill -9 of any process, and a
power cut. The commitment process reads them, reports, and moves each to
`done/`, where it is kept a while so that a reused Transaction UID is
recognised (PS3.4 J.3.3.1.2: "shall not be reused").

    <transaction>.request             pending
    <transaction>~<token>.request     pending, a duplicate of a transaction in use
    .tmp-<token>                      being written (or left by a crash)
    done/<name>                       reported or given up

The file holds JSON: what the SCU asked, who asked, and where the
association that asked can be reached while it is open.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storscp import depotfiles
from storscp.commitmentinfo import Reference
from storscp.errors import StorscpError
from storscp.uids import UIDError, check_uid

FORMAT_VERSION = 1
SUFFIX = ".request"
DUPLICATE_MARK = "~"
TMP_PREFIX = ".tmp-"
DONE_DIR = "done"
# A reused Transaction UID is recognised this long after its report.
DONE_KEEP_S = 24 * 3600
DONE_KEEP_COUNT = 10_000
# A temp file older than this is a crash's leftover, not a write in progress.
TMP_STALE_S = 300


class RequestFileError(StorscpError):
    """A request file that cannot be read back; the message says why."""


@dataclass(frozen=True, slots=True)
class CommitmentRequest:
    """One N-ACTION that was answered Success."""

    transaction_uid: str
    references: tuple[Reference, ...]
    calling_ae: str
    called_ae: str
    peer: str
    # Wall-clock seconds: the delivery deadline must survive a reboot.
    received_unix: float
    # The receiver endpoint and association id that can still send the
    # report on the association that asked ("" / 0: none).
    reply_to: str = ""
    association_id: int = 0
    duplicate: bool = field(default=False, compare=False)

    def to_json(self) -> bytes:
        body = {
            "v": FORMAT_VERSION,
            "transaction_uid": self.transaction_uid,
            "references": [list(ref) for ref in self.references],
            "calling_ae": self.calling_ae,
            "called_ae": self.called_ae,
            "peer": self.peer,
            "received_unix": self.received_unix,
            "reply_to": self.reply_to,
            "association_id": self.association_id,
        }
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, duplicate: bool) -> CommitmentRequest:
        try:
            body = json.loads(data.decode("utf-8"))
            if not isinstance(body, dict) or body.get("v") != FORMAT_VERSION:
                raise ValueError("not a version 1 request")
            references = tuple(_reference(item) for item in body["references"])
            request = cls(
                transaction_uid=check_uid(_text(body["transaction_uid"])),
                references=references,
                calling_ae=_text(body["calling_ae"]),
                called_ae=_text(body["called_ae"]),
                peer=_text(body["peer"]),
                received_unix=float(body["received_unix"]),
                reply_to=_text(body["reply_to"]),
                association_id=int(body["association_id"]),
                duplicate=duplicate,
            )
        except (ValueError, KeyError, TypeError, UIDError) as exc:
            raise RequestFileError(f"malformed request: {exc!r}") from None
        if not references:
            raise RequestFileError("request without references")
        return request


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _reference(item: Any) -> Reference:
    if not isinstance(item, list) or len(item) != 2:
        raise TypeError("a reference is [class, instance]")
    return check_uid(_text(item[0])), check_uid(_text(item[1]))


def is_duplicate_name(name: str) -> bool:
    return DUPLICATE_MARK in name


class RequestStore:
    """The directory of pending requests; safe to use from several processes."""

    def __init__(self, directory: Path, file_mode: int = 0o640, dir_mode: int = 0o750) -> None:
        self.directory = directory
        self.done_dir = directory / DONE_DIR
        self.file_mode = file_mode
        self.dir_mode = dir_mode

    def create_dirs(self) -> None:
        """Make the directory and `done/`, and missing parents (state_dir may be new)."""
        missing = [self.done_dir]
        for path in (self.directory, *self.directory.parents):
            if path.is_dir():
                break
            missing.append(path)
        for path in reversed(missing):
            path.mkdir(mode=self.dir_mode, exist_ok=True)

    # -- receiver side ------------------------------------------------------

    def add(self, request: CommitmentRequest) -> tuple[str, bool]:
        """Write `request` durably; returns (file name, whether it is a duplicate).

        A duplicate is a Transaction UID that is pending or was reported
        within DONE_KEEP_S; it is kept under its own name and reported with
        Failure Reason 0x0131.
        """
        uid = request.transaction_uid
        tmp = self.directory / f"{TMP_PREFIX}{depotfiles.unique_name()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.file_mode)
        try:
            try:
                os.fchmod(fd, self.file_mode)
                _write_all(fd, request.to_json())
                os.fsync(fd)
            finally:
                os.close(fd)
            name = uid + SUFFIX
            duplicate = (self.done_dir / name).exists()
            if not duplicate:
                try:
                    # link() is atomic: of two receivers with one transaction, one wins.
                    os.link(tmp, self.directory / name)
                except FileExistsError:
                    duplicate = True
            if duplicate:
                name = f"{uid}{DUPLICATE_MARK}{depotfiles.unique_name()}{SUFFIX}"
                os.rename(tmp, self.directory / name)
            self._fsync_dir(self.directory)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return name, duplicate

    # -- commitment side ----------------------------------------------------

    def pending(self) -> list[str]:
        """Names of pending requests, oldest first."""
        entries = []
        try:
            scan = os.scandir(self.directory)
        except FileNotFoundError:
            return []
        with scan:
            for entry in scan:
                if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        entries.append((entry.stat().st_mtime_ns, entry.name))
        return [name for _, name in sorted(entries)]

    def load(self, name: str) -> CommitmentRequest:
        """Read a pending request back; RequestFileError if it is unusable."""
        if "/" in name or not name.endswith(SUFFIX):
            raise RequestFileError(f"{name!r} is not a request file name")
        try:
            data = (self.directory / name).read_bytes()
        except OSError as exc:
            raise RequestFileError(f"cannot read {name}: {exc}") from None
        return CommitmentRequest.from_json(data, is_duplicate_name(name))

    def exists(self, name: str) -> bool:
        return (self.directory / name).exists()

    def finish(self, name: str, suffix: str = "") -> None:
        """Move a request to `done/` (reported, given up, or `.bad`)."""
        done = self.done_dir / (name + suffix)
        try:
            os.rename(self.directory / name, done)
        except FileNotFoundError:
            return
        # Kept DONE_KEEP_S from now, the end of the transaction.
        with contextlib.suppress(OSError):
            os.utime(done)
        self._fsync_dir(self.directory)

    def adopt(self, other: RequestStore) -> list[str]:
        """Take over another node's pending requests (it is dead: `storscp recover`).

        Each is linked here, then removed there; a name already in use here
        gets a token, as a duplicate would. Returns the names here.
        """
        adopted: list[str] = []
        sources: list[str] = []
        for name in other.pending():
            target = name
            try:
                os.link(other.directory / name, self.directory / target)
            except FileExistsError:
                target = f"{name[: -len(SUFFIX)]}{DUPLICATE_MARK}{depotfiles.unique_name()}{SUFFIX}"
                os.link(other.directory / name, self.directory / target)
            except FileNotFoundError:
                continue
            adopted.append(target)
            sources.append(name)
        if adopted:
            # Durable here before it is gone there: a crash leaves it in both, never in none.
            self._fsync_dir(self.directory)
            for name in sources:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(other.directory / name)
            other._fsync_dir(other.directory)
        return adopted

    def prune(self, now: float | None = None) -> int:
        """Forget done requests past DONE_KEEP_S or DONE_KEEP_COUNT; drop stale temp files."""
        now = time.time() if now is None else now
        removed = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self.directory) as scan:
            for entry in scan:
                if entry.name.startswith(TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        if now - entry.stat().st_mtime > TMP_STALE_S:
                            os.unlink(entry.path)
        done: list[tuple[float, str]] = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.done_dir) as scan:
            for entry in scan:
                with contextlib.suppress(FileNotFoundError):
                    done.append((entry.stat().st_mtime, entry.path))
        done.sort()
        for index, (mtime, path) in enumerate(done):
            if now - mtime > DONE_KEEP_S or len(done) - index > DONE_KEEP_COUNT:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
        return removed

    def _fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
