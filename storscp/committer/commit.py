"""Moving ready files from the depot into storage, in arrival order, recorded in the history.

A commit is one `os.replace` (atomic, same filesystem), so a reader of the
storage directory sees either the old file or the new one, never a partial
one. Each batch is:

1. list the depot under the arrival lock and take ready files in token
   order (see arrival.py): a file is never committed while an older one is
   still to come, so of two copies of a UID the later arrival wins, by an
   order that cannot go back; both are committed, the second `replaced`;
2. record the planned renames in the history's `pending` table (fsync);
3. rename, then fsync each destination directory once;
4. append the feed rows, with their seqs, and clear `pending` (not fsynced:
   the rows follow from `pending`, see History.append);
5. only then are the messages returned for publishing and WRITE events.

A crash between 2 and 4 is repaired at start by `recover_pending`. Never the
wall clock, never a file's mtime: a stored file restored from a backup with
a future mtime is simply replaced.

A file that cannot be committed is retried with a backoff and said to fail
once, then at a bounded rate (`storscp.repeats`), so it never floods the log.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from storscp import bus, depotfiles
from storscp.arrival import Arrival, parse_token
from storscp.committer.counting import CommitCounter
from storscp.committer.describe import describe
from storscp.committer.studies import Studies
from storscp.config import Config
from storscp.history import History, Pending
from storscp.outbox import Outbox
from storscp.repeats import Repeats, still_failing_fields
from storscp.uids import UIDError, storage_file, study_path

log = logging.getLogger(__name__)

QUARANTINE_SUFFIX = ".bad"
SUPERSEDED_SUFFIX = ".superseded"
MAX_BATCH = 256
# A ready file whose InstanceStored has not arrived within this long is read
# back from disk instead (its receiver died, or the message was dropped).
DESCRIBE_GRACE_S = 0.5


@dataclass(frozen=True, slots=True)
class Visible:
    """What the metrics count of one instance made visible (counting.Visible)."""

    replaced: bool
    ready_ctime: float  # the rename to .ready, just before the receiver's Success
    calling_ae: str
    size_bytes: int


class Committer:
    """Commits ready files; owns no socket (the caller feeds it what the bus said)."""

    def __init__(
        self,
        config: Config,
        outbox: Outbox,
        history: History,
        arrival: Arrival,
        studies: Studies,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.history = history
        self.arrival = arrival
        self.studies = studies
        self.depot_dir = config.depot_dir
        self.storage_dir = config.storage_dir
        # Per-instance paths are plain strings: pathlib was a sixth of our Python time.
        self._depot = os.fspath(self.depot_dir) + os.sep
        self._storage = os.fspath(self.storage_dir)
        self.storage_fd = os.open(self.storage_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._known_dirs: set[Path] = {self.storage_dir}
        # Ready files seen in the depot before their InstanceStored: name -> first seen.
        self._unannounced: dict[str, float] = {}
        # When each planned ready file was made ready (its ctime), for the metrics.
        self._ready_ctime: dict[str, float] = {}
        self.committed_total = 0
        self.counter = CommitCounter(config)
        # A file that cannot be committed fails again at every sweep: back off, say it rarely.
        self.repeats = Repeats(retry_s=config.depot_scan_interval_s)

    def close(self) -> None:
        os.close(self.storage_fd)

    @property
    def waiting(self) -> bool:
        """Whether ready files wait for their InstanceStored (poll again soon)."""
        return bool(self._unannounced)

    # -- one batch ------------------------------------------------------------------

    def commit_ready(
        self, announced: dict[str, bus.InstanceStored], read_back: bool = False
    ) -> list[bus.InstanceCommitted]:
        """Commit the ready files in arrival order, as far as we know what they are.

        `announced` (ready name -> what its receiver said) is consumed. A file
        not announced stops the batch (an older arrival must not be overtaken)
        until it has waited DESCRIBE_GRACE_S, or at once with `read_back`:
        then its file meta and head are read from disk. Returns the messages,
        durable in the history, in seq order.
        """
        published: list[bus.InstanceCommitted] = []
        # One listing serves every batch: whatever turns up meanwhile has a
        # later token, and waits for the next call.
        names = self._list_ready()
        listed = set(names)
        for name in list(announced):
            if name not in listed:
                del announced[name]  # committed already (the bus was late)
        for name in list(self._unannounced):
            if name not in listed:
                del self._unannounced[name]
        start = 0
        while start < len(names):
            batch = names[start : start + MAX_BATCH]
            plans, taken, blocked = self._plan(batch, announced, read_back)
            self._mark_replacements(plans)
            if plans:
                published += self._commit(plans)
            if blocked:
                break
            start += taken
        self._remind()
        return published

    def _list_ready(self) -> list[str]:
        # Under the lock, a listed token means every smaller one is listed too.
        with self.arrival.ordered(), os.scandir(self.depot_dir) as entries:
            names = [e.name for e in entries if e.name.endswith(depotfiles.READY_SUFFIX)]
        names.sort(key=depotfiles.arrival_key)
        return names

    def _plan(
        self, names: list[str], announced: dict[str, bus.InstanceStored], read_back: bool
    ) -> tuple[list[Pending], int, bool]:
        """The next batch from `names`: (plans, names used, stopped at an unannounced one)."""
        plans: list[Pending] = []
        now = time.monotonic()
        for i, name in enumerate(names):
            if not self.repeats.due(name):
                continue  # failed lately: tried again after its backoff
            info = announced.pop(name, None)
            if info is None:
                first_seen = self._unannounced.setdefault(name, now)
                if not read_back and now - first_seen < DESCRIBE_GRACE_S:
                    return plans, i, True  # its InstanceStored is probably on its way
            self._unannounced.pop(name, None)
            plan = self._plan_one(name, info)
            if plan is not None:
                plans.append(plan)
            elif name not in self.repeats.failing:
                self.repeats.forget(name)  # set aside or gone: nothing to retry
        return plans, len(names), False

    def _mark_replacements(self, plans: list[Pending]) -> None:
        """A second copy of a UID in one batch replaces the first, which is not there yet."""
        seen: set[str] = set()
        for plan in plans:
            if plan.destination in seen:
                plan.fields["replaced"] = True
            seen.add(plan.destination)

    def _plan_one(self, name: str, info: bus.InstanceStored | None) -> Pending | None:
        """Where a ready file goes, or None if it was set aside (with an ERROR)."""
        src = self._depot + name
        uid = depotfiles.uid_of_ready(name)
        try:
            if uid is None:
                raise UIDError(f"{name} is not a ready file name")
            ready_ctime = os.stat(src).st_ctime
            if info is None or info.depot_name != name:
                info = describe(Path(src), name, uid)
            dst = self._destination(uid, info)
        except UIDError as exc:
            self._set_aside(Path(src), QUARANTINE_SUFFIX, "depot file quarantined", str(exc))
            return None
        except FileNotFoundError:
            return None  # gone since the listing
        except OSError as exc:
            self._failed(name, exc)
            return None
        token = name.split("_", 1)[0] if parse_token(name) else ""
        replaced = os.path.lexists(dst)
        # Only a file already in place can be newer than this one: ask the history then.
        newest = self.history.newest_token(uid) if replaced else None
        if newest is not None and _later(newest, token):
            # A newer copy of this UID is stored already: this one must not overwrite it.
            self._set_aside(
                Path(src),
                SUPERSEDED_SUFFIX,
                "older copy set aside",
                f"a copy of {uid} that arrived later (token {newest}) is already stored",
            )
            return None
        fields = {
            "path": dst,
            "sop_class_uid": info.sop_class_uid,
            "sop_instance_uid": uid,
            "study_instance_uid": info.study_instance_uid,
            "series_instance_uid": info.series_instance_uid,
            "modality": info.modality,
            "transfer_syntax_uid": info.transfer_syntax_uid,
            "bytes": info.size_bytes,
            "calling_ae": info.calling_ae,
            "replaced": replaced,
        }
        self._ready_ctime[name] = ready_ctime
        return Pending(name, token, dst, fields)

    def _destination(self, uid: str, info: bus.InstanceStored) -> str:
        """The final path; with layout = "study" its directories exist durably."""
        ext = self.config.extension
        if self.config.layout != "study":
            return storage_file(self._storage, uid, ext)
        dst = study_path(
            self.storage_dir, uid, ext, info.study_instance_uid, info.series_instance_uid
        )
        self._make_dirs(dst.parent)
        return str(dst)

    def _make_dirs(self, series_dir: Path) -> None:
        """Create `<Study>/<Series>/`, fsyncing each parent that got a new entry."""
        if series_dir in self._known_dirs:
            return
        mode = int(self.config.dir_mode)
        for directory in (series_dir.parent, series_dir):
            try:
                os.mkdir(directory, mode)
            except FileExistsError:
                continue
            os.chmod(directory, mode)  # exactly dir_mode, whatever the umask
            _fsync_dir(directory.parent)
        self._known_dirs.add(series_dir)

    def _commit(self, plans: list[Pending]) -> list[bus.InstanceCommitted]:
        stamp = bus.now_iso()
        for plan in plans:
            plan.fields["time"] = stamp  # in the record: recovery says the same
        # 2. The write-ahead record: after a crash, recovery knows what may have moved.
        self.history.record_pending(plans)
        done: list[Pending] = []
        for plan in plans:
            try:
                self._rename(plan)
            except OSError as exc:
                self._failed(plan.ready_name, exc)
                continue
            done.append(plan)
        # 3. One fsync per destination directory makes the renames durable.
        fsync_destinations(done, self.storage_dir, self.storage_fd)
        for plan in done:
            self.repeats.succeeded(plan.ready_name)
        if done:
            self.repeats.retry_all_now()  # whatever failed may work now
        # 4. The feed rows, with the open studies they change, in one transaction.
        messages = self.record(done)
        self.committed_total += len(messages)
        now = time.time()
        self.counter.committed(
            [
                Visible(
                    msg.replaced,
                    self._ready_ctime.pop(plan.ready_name, now),
                    msg.calling_ae,
                    msg.bytes,
                )
                for plan, msg in zip(done, messages, strict=True)
            ]
        )
        for plan in plans:
            self._ready_ctime.pop(plan.ready_name, None)  # failed ones too
        return messages

    def record(self, done: list[Pending], durable: bool = False) -> list[bus.InstanceCommitted]:
        """Append committed renames to the history with their studies; clears `pending`."""
        boot, tick = self.arrival.now()
        for plan in done:
            fields = plan.fields
            self.studies.add(
                fields["study_instance_uid"],
                fields["series_instance_uid"],
                fields["calling_ae"],
                fields["time"],
                boot,
                tick,
            )
        return self.history.append(done, self.studies.take_dirty_rows(), durable=durable)

    def _rename(self, plan: Pending) -> None:
        src, dst = self._depot + plan.ready_name, plan.destination
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            if self.config.layout != "study" or not os.path.exists(src):
                raise
            # The study or series directory was removed since we made it: make it again.
            series_dir = Path(dst).parent
            self._known_dirs.discard(series_dir)
            self._make_dirs(series_dir)
            os.replace(src, dst)

    # -- setting aside ------------------------------------------------------------

    def _set_aside(self, src: Path, suffix: str, what: str, reason: str) -> None:
        """Rename a ready file we must not commit (never a silent unlink), and say so."""
        try:
            os.rename(src, src.with_name(src.name + suffix))
        except FileNotFoundError:
            return
        self.outbox.event(bus.EventType.ERROR, what=what, depot_file=src.name, reason=reason)

    def _failed(self, name: str, exc: OSError) -> None:
        """The first failure of a file is said at once; repeats at a bounded rate."""
        if self.repeats.failed(name, str(exc)):
            self.outbox.event(
                bus.EventType.ERROR, what="commit failed", depot_file=name, reason=str(exc)
            )

    def _remind(self) -> None:
        """'Still failing since ...' for files that keep failing, at a bounded rate."""
        reminder = self.repeats.reminder()
        if reminder is not None:
            self.outbox.event(
                bus.EventType.ERROR,
                what="commit failed",
                depot_file=reminder.key,
                **still_failing_fields(reminder),
            )


def _later(stored_token: str, token: str) -> bool:
    """Whether the stored copy's arrival token is later than `token`'s."""
    return _key(stored_token) > _key(token)


def _key(token: str) -> tuple[int, int]:
    return parse_token(token) or (-1, 0)


def fsync_destinations(done: list[Pending], storage_dir: Path, storage_fd: int) -> None:
    """fsync every directory that received a rename (the storage directory by its open fd)."""
    dirs = {os.path.dirname(plan.destination) for plan in done}
    storage = os.fspath(storage_dir)
    for directory in sorted(dirs):
        if directory == storage:
            os.fsync(storage_fd)
        else:
            _fsync_dir(directory)


def _fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
