"""The feed's durable history: one SQLite database in `<state_dir>/feed/`.

The committer is its only writer; the feed process (replay) and lookups read
it. SQLite in WAL mode with `synchronous=FULL`: a committed transaction is on
disk, and readers never block the writer. Tables:

- `feed`: every message ever published, by `seq`, with its JSON exactly as
  sent; the only rows a reader ever sees. Old rows are deleted whole, oldest
  first, beyond `feed_max_bytes` or `feed_max_age_s`.
- `pending`: the write-ahead record of the one batch in flight: which ready
  file goes where, written and fsynced before the first rename. After a crash
  it says which renames may have happened without their `feed` rows.
- `open_study`: studies with instances since their last study_complete,
  updated in the same transaction as the instances' rows.
- `meta`: `last_seq` (so a seq never repeats, even when every row is pruned)
  and `history_id` (a consumer can tell a new history from the old one).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storscp import bus
from storscp.errors import StorscpError

FEED_DIR_NAME = "feed"
DB_NAME = "history.sqlite3"
SCHEMA_VERSION = 1
# Keep the WAL from growing past this after a checkpoint.
JOURNAL_LIMIT_BYTES = 8 * 1024 * 1024
# The feed process checkpoints every second (HistoryReader.checkpoint), so the
# committer's commits never pay for copying the WAL into the database; this is
# the committer's own fallback, for when the feed process is not running.
COMMITTER_AUTOCHECKPOINT_PAGES = 10_000
BUSY_TIMEOUT_MS = 5000
# Prune down to this share of feed_max_bytes, so pruning is not done on every batch.
PRUNE_TO = 0.9
PRUNE_CHUNK_ROWS = 5000
PRUNE_PASSES = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feed (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    token TEXT,
    sop_instance_uid TEXT,
    committed_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS feed_by_uid ON feed (sop_instance_uid)
    WHERE sop_instance_uid IS NOT NULL;
CREATE TABLE IF NOT EXISTS pending (
    ready_name TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    destination TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS open_study (
    study_instance_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class HistoryError(StorscpError):
    """The history database cannot be opened, read or written."""


def history_path(state_dir: Path) -> Path:
    return state_dir / FEED_DIR_NAME / DB_NAME


@dataclass(frozen=True, slots=True)
class Pending:
    """A rename the committer is about to make (or made just before a crash)."""

    ready_name: str
    token: str
    destination: str
    # InstanceCommitted fields but seq (time: when its batch committed;
    # replaced: the destination existed).
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Bounds:
    """What the history holds: seqs history_start..last_seq (empty if start > last)."""

    history_start: int
    last_seq: int
    history_id: str


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    try:
        conn = sqlite3.connect(
            f"file:{path}?mode={mode}", uri=True, isolation_level=None, check_same_thread=True
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot open {path}: {exc}") from exc
    return conn


class History:
    """The committer's handle: the only writer."""

    def __init__(self, state_dir: Path, file_mode: int = 0o640, dir_mode: int = 0o750) -> None:
        feed_dir = state_dir / FEED_DIR_NAME
        self.path = feed_dir / DB_NAME
        try:
            feed_dir.mkdir(mode=dir_mode, parents=True, exist_ok=True)
            # SQLite gives its -wal and -shm files the database's mode: make it ours first.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, file_mode)
            os.close(fd)
        except OSError as exc:
            raise HistoryError(f"cannot create {self.path}: {exc.strerror}") from exc
        self.conn = _connect(self.path, create=True)
        try:
            self.conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_LIMIT_BYTES}")
            self.conn.execute(f"PRAGMA wal_autocheckpoint = {COMMITTER_AUTOCHECKPOINT_PAGES}")
            with self.transaction():
                # Not executescript(): it would COMMIT the transaction first.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('last_seq', '0'),"
                    " ('history_id', ?)",
                    (str(SCHEMA_VERSION), uuid.uuid4().hex),
                )
            self.last_seq = int(self._meta("last_seq"))
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot initialise {self.path}: {exc}") from exc

    def close(self) -> None:
        self.conn.close()

    def transaction(self) -> _Transaction:
        return _Transaction(self.conn)

    def _meta(self, key: str) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise HistoryError(f"{self.path}: meta {key!r} is missing")
        return str(row[0])

    # -- the write-ahead record ------------------------------------------------

    def record_pending(self, items: Iterable[Pending]) -> None:
        """Durably note the renames about to happen (one fsync)."""
        with self.transaction():
            self.conn.execute("DELETE FROM pending")
            self.conn.executemany(
                "INSERT INTO pending VALUES (?, ?, ?, ?)",
                [(p.ready_name, p.token, p.destination, json.dumps(p.fields)) for p in items],
            )

    def pending(self) -> list[Pending]:
        """The batch a crash interrupted, in arrival order (empty after a clean batch)."""
        rows = self.conn.execute(
            "SELECT ready_name, token, destination, fields FROM pending ORDER BY token"
        ).fetchall()
        return [Pending(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    # -- facts --------------------------------------------------------------------

    def append(
        self, committed: list[Pending], studies: dict[str, str], *, durable: bool = False
    ) -> list[bus.InstanceCommitted]:
        """Give each committed rename its seq and row; clear `pending`.

        `studies` are the open-study rows to write in the same transaction.
        Returns the messages, safe to publish once this has returned.

        Without `durable` the transaction is not fsynced (synchronous=NORMAL):
        the rows are a pure function of the `pending` rows (fsynced before the
        renames, they hold every field, time and `replaced` included) and of
        `last_seq`, so if a power cut takes them, recovery writes the very
        same messages again with the very same seqs. The next batch's
        `record_pending` fsync makes them durable in passing (the WAL is
        written in order). That saves one fsync per batch.
        """
        now = time.time()
        messages: list[bus.InstanceCommitted] = []
        rows = []
        seq = self.last_seq
        for item in committed:
            seq += 1
            msg = bus.InstanceCommitted(**item.fields, seq=seq)
            messages.append(msg)
            body = bus.encode(msg)[1]
            rows.append((seq, "instance", item.token, msg.sop_instance_uid, now, body))
        if not durable:
            self.conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with self.transaction():
                self.conn.executemany("INSERT INTO feed VALUES (?, ?, ?, ?, ?, ?)", rows)
                self.conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(seq),))
                self._write_studies(studies)
                self.conn.execute("DELETE FROM pending")
        finally:
            if not durable:
                self.conn.execute("PRAGMA synchronous = FULL")
        self.last_seq = seq
        return messages

    def append_study_complete(self, fields: dict[str, Any]) -> bus.StudyComplete:
        """Write a study_complete (StudyComplete fields but seq and time) and close the study.

        One transaction: the study is never completed twice, nor forgotten.
        """
        seq = self.last_seq + 1
        msg = bus.StudyComplete(**fields, seq=seq, time=bus.now_iso())
        study_uid = msg.study_instance_uid
        with self.transaction():
            self.conn.execute(
                "INSERT INTO feed VALUES (?, 'study_complete', NULL, NULL, ?, ?)",
                (seq, time.time(), bus.encode(msg)[1]),
            )
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(seq),))
            self.conn.execute("DELETE FROM open_study WHERE study_instance_uid = ?", (study_uid,))
        self.last_seq = seq
        return msg

    def _write_studies(self, studies: dict[str, str]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO open_study VALUES (?, ?)", list(studies.items())
        )

    def open_studies(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT study_instance_uid, state FROM open_study"))

    def newest_token(self, sop_instance_uid: str) -> str | None:
        """The arrival token of the newest committed copy of a UID still in the history."""
        row = self.conn.execute(
            "SELECT token FROM feed WHERE sop_instance_uid = ? ORDER BY seq DESC LIMIT 1",
            (sop_instance_uid,),
        ).fetchone()
        return None if row is None else str(row[0])

    # -- retention ----------------------------------------------------------------

    def prune(self, max_bytes: int, max_age_s: float) -> int:
        """Delete the oldest rows beyond the bounds, whole; returns how many."""
        removed = 0
        if max_age_s > 0:
            cutoff = time.time() - max_age_s
            row = self.conn.execute(
                "SELECT max(seq) FROM (SELECT seq, committed_at FROM feed ORDER BY seq LIMIT ?)"
                " WHERE committed_at < ?",
                (PRUNE_CHUNK_ROWS, cutoff),
            ).fetchone()
            if row[0] is not None:
                removed += self._delete_through(int(row[0]))
        # Freed rows leave partly used pages: measure again after each cut.
        for _ in range(PRUNE_PASSES):
            used = self.used_bytes()
            if max_bytes <= 0 or used <= max_bytes:
                break
            # Seqs are contiguous: the count without a full scan.
            first, last = self.conn.execute("SELECT min(seq), max(seq) FROM feed").fetchone()
            if first is None:
                break
            count = last - first + 1
            drop = max(1, int(count * (1 - PRUNE_TO * max_bytes / used)))
            row = self.conn.execute(
                "SELECT seq FROM feed ORDER BY seq LIMIT 1 OFFSET ?",
                (min(drop, count, PRUNE_CHUNK_ROWS) - 1,),
            ).fetchone()
            removed += self._delete_through(int(row[0]))
        return removed

    def _delete_through(self, seq: int) -> int:
        with self.transaction():
            cursor = self.conn.execute("DELETE FROM feed WHERE seq <= ?", (seq,))
        return cursor.rowcount

    def used_bytes(self) -> int:
        """Pages in use by the database (free pages left by pruning do not count)."""
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on an exception)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


class HistoryReader:
    """A read-only view for replay and lookups (the feed process, storage commitment)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = history_path(state_dir)
        self.conn = _connect(self.path, create=False)

    def close(self) -> None:
        self.conn.close()

    def bounds(self) -> Bounds:
        last, start, history_id = self.conn.execute(
            "SELECT (SELECT value FROM meta WHERE key = 'last_seq'),"
            " (SELECT min(seq) FROM feed),"
            " (SELECT value FROM meta WHERE key = 'history_id')"
        ).fetchone()
        last_seq = int(last)
        return Bounds(int(start) if start is not None else last_seq + 1, last_seq, str(history_id))

    def page(self, after: int, limit: int) -> tuple[bus.ReplayPage, list[list[bytes]]]:
        """The messages after `after` (at most `limit`), as frames, with their page header."""
        self.conn.execute("BEGIN")  # one snapshot for the bounds and the rows
        try:
            last, start = self.conn.execute(
                "SELECT (SELECT value FROM meta WHERE key = 'last_seq'),"
                " (SELECT min(seq) FROM feed)"
            ).fetchone()
            last_seq = int(last)
            history_start = int(start) if start is not None else last_seq + 1
            if after < history_start - 1:
                error = f"history starts at {history_start}"
                return bus.ReplayPage(after, history_start, last_seq, 0, error), []
            if after > last_seq:
                # A consumer ahead of us: this history is not the one it followed.
                error = f"history ends at {last_seq}"
                return bus.ReplayPage(after, history_start, last_seq, 0, error), []
            rows = self.conn.execute(
                "SELECT kind, body FROM feed WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        finally:
            self.conn.execute("COMMIT")
        frames = [[str(kind).encode("ascii"), bytes(body)] for kind, body in rows]
        return bus.ReplayPage(after, history_start, last_seq, len(frames)), frames

    def checkpoint(self) -> None:
        """Copy the WAL into the database without waiting for anyone (PASSIVE).

        Done here, in the feed process, so that the committer's commits stay
        short; SQLite lets a checkpoint run beside the writer.
        """
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def newest_instance(self, sop_instance_uid: str) -> bus.InstanceCommitted | None:
        """The last feed message that committed this UID, if the history still has it."""
        row = self.conn.execute(
            "SELECT body FROM feed WHERE sop_instance_uid = ? ORDER BY seq DESC LIMIT 1",
            (sop_instance_uid,),
        ).fetchone()
        if row is None:
            return None
        msg = bus.decode([bus.InstanceCommitted.KIND, bytes(row[0])])
        return msg if isinstance(msg, bus.InstanceCommitted) else None
