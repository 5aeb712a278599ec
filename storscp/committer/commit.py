"""Moving ready files from the depot to `<storage_dir>/<UID><ext>`.

A commit is one `os.replace` (atomic, same filesystem), so a reader of the
storage directory sees either the old file or the new one, never a partial
one. A batch of commits shares one fsync of the storage directory; WRITE
events follow that fsync. A ready file older than the file it would replace
(a duplicate UID received later and already committed) is dropped instead,
so arrival order wins even when the bus delivered out of order. A file that
cannot be committed is retried with a backoff and said to fail once, then
at a bounded rate (`storscp.repeats`), so it never floods the log.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from storscp import bus, depotfiles
from storscp.committer.counting import CommitCounter
from storscp.config import Config
from storscp.outbox import Outbox
from storscp.repeats import Repeats, still_failing_fields
from storscp.uids import UIDError, storage_path

log = logging.getLogger(__name__)

QUARANTINE_SUFFIX = ".bad"


@dataclass(frozen=True, slots=True)
class Committed:
    path: Path
    replaced: bool
    info: bus.InstanceStored
    ready_ctime: float  # the rename to .ready, just before the receiver's Success

    @property
    def calling_ae(self) -> str:
        return self.info.calling_ae

    @property
    def size_bytes(self) -> int:
        return self.info.size_bytes


class Committer:
    """Commits ready files; owns no socket (the caller feeds it names)."""

    def __init__(self, config: Config, outbox: Outbox) -> None:
        self.config = config
        self.outbox = outbox
        self.depot_dir = config.depot_dir
        self.storage_dir = config.storage_dir
        self._storage_fd = os.open(self.storage_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.committed_total = 0
        self.counter = CommitCounter(config)
        # A file that cannot be committed fails again at every sweep: back off, say it rarely.
        self.repeats = Repeats(retry_s=config.depot_scan_interval_s)

    def close(self) -> None:
        os.close(self._storage_fd)

    def commit_batch(self, items: list[tuple[str, bus.InstanceStored | None]]) -> int:
        """Commit each (ready name, what the receiver said); one directory fsync.

        A file that failed is tried again with a backoff (or at once when another
        commit works: the cause may be gone), and said to fail at a bounded rate.
        """
        done: list[Committed] = []
        for name, info in items:
            if not self.repeats.due(name):
                continue
            try:
                result = self._commit_one(name, info)
            except OSError as exc:
                self._failed(name, exc)
                continue
            if result is None:
                self.repeats.forget(name)
            else:
                self.repeats.succeeded(name)
                done.append(result)
        if done:
            os.fsync(self._storage_fd)
            self.repeats.retry_all_now()
        self.counter.committed(done)
        for item in done:
            self._report(item)
        self.committed_total += len(done)
        reminder = self.repeats.reminder()
        if reminder is not None:
            self.outbox.event(
                bus.EventType.ERROR,
                what="commit failed",
                depot_file=reminder.key,
                **still_failing_fields(reminder),
            )
        return len(done)

    def _failed(self, name: str, exc: OSError) -> None:
        """The first failure of a file is said at once; repeats at a bounded rate."""
        if self.repeats.failed(name, str(exc)):
            self.outbox.event(
                bus.EventType.ERROR, what="commit failed", depot_file=name, reason=str(exc)
            )

    def _commit_one(self, name: str, info: bus.InstanceStored | None) -> Committed | None:
        src = self.depot_dir / name
        uid = depotfiles.uid_of_ready(name)
        try:
            if uid is None:
                raise UIDError(f"{name} is not a ready file name")
            dst = storage_path(self.storage_dir, uid, self.config.extension)
        except UIDError as exc:
            self._quarantine(src, str(exc))
            return None
        try:
            src_stat = os.stat(src)
        except FileNotFoundError:
            return None  # committed already (bus and sweep both saw it)
        replaced = True
        try:
            dst_stat = os.stat(dst)
        except FileNotFoundError:
            replaced = False
        else:
            if dst_stat.st_mtime_ns > src_stat.st_mtime_ns:
                # A later copy of this UID is already in place; keep it.
                log.info("dropping %s: superseded by a newer %s", name, dst.name)
                os.unlink(src)
                return None
        if info is None or info.depot_name != name:
            info = describe(src, name, uid, src_stat.st_size)
        os.replace(src, dst)
        return Committed(dst, replaced, info, src_stat.st_ctime)

    def _quarantine(self, src: Path, reason: str) -> None:
        """Set aside a depot file we must not commit, rather than lose it."""
        try:
            os.rename(src, src.with_name(src.name + QUARANTINE_SUFFIX))
        except FileNotFoundError:
            return
        self.outbox.event(
            bus.EventType.ERROR, what="depot file quarantined", depot_file=src.name, reason=reason
        )

    def _report(self, item: Committed) -> None:
        info = item.info
        self.outbox.event(
            bus.EventType.WRITE,
            path=str(item.path),
            sop_class_uid=info.sop_class_uid,
            sop_instance_uid=info.sop_instance_uid,
            transfer_syntax=info.transfer_syntax_uid,
            bytes=info.size_bytes,
            calling_ae=info.calling_ae,
            replaced=item.replaced,
        )


def describe(path: Path, name: str, uid: str, size: int) -> bus.InstanceStored:
    """What a WRITE event needs, read back from a file's meta information.

    Used for files found by the sweep, whose InstanceStored never arrived.
    """
    try:
        meta = read_file_meta_info(path)
        sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
        syntax = str(meta.get("TransferSyntaxUID", ""))
        calling = str(meta.get("SourceApplicationEntityTitle", "")).strip()
    except Exception as exc:  # a damaged meta must not stop the commit
        log.warning("cannot read file meta of %s: %s", path, exc)
        sop_class = syntax = calling = ""
    return bus.InstanceStored(
        depot_name=name,
        sop_instance_uid=uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=syntax,
        size_bytes=size,
        calling_ae=calling,
    )
