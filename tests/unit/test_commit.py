"""The committer's rules on real files in tmp_path: arrival order, the history, recovery."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storscp import bus
from storscp.arrival import format_token
from storscp.committer.commit import QUARANTINE_SUFFIX, SUPERSEDED_SUFFIX, Committer
from storscp.committer.recover import recover_pending
from storscp.config import load
from storscp.history import History, HistoryReader
from support import committers
from support import dicomfiles as df
from support.committers import close


def make_committer(tmp_path: Path, **keys: Any) -> Committer:
    config = load(None, {"storage_dir": str(tmp_path / "s"), **keys}, base_dir=tmp_path)
    return committers.make_committer(config)


@pytest.fixture
def committer(tmp_path: Path) -> Iterator[Committer]:
    c = make_committer(tmp_path)
    yield c
    close(c)


def put_ready(committer: Committer, source: Path, uid: str, token: str = "") -> str:
    return committers.put_ready(committer.arrival, committer.depot_dir, source, uid, token)


def image(tmp_path: Path, seed: int, uid: str | None = None, name: str = "x") -> tuple[Path, str]:
    path = tmp_path / f"{name}{seed}.dcm"
    return path, df.make_image(path, df.CT, seed=seed, uid=uid, rows=4, columns=4)


def test_two_copies_of_a_uid_are_both_committed_in_arrival_order_the_later_wins(
    committer: Committer, tmp_path: Path
) -> None:
    uid = df.uid_for("dup")
    (a, _), (b, _) = image(tmp_path, 1, uid, "a"), image(tmp_path, 2, uid, "b")
    put_ready(committer, a, uid)
    put_ready(committer, b, uid)
    # When both are committed (neither announced: read back from disk)
    messages = committer.commit_ready({}, read_back=True)
    # Then the later arrival is in place; both are in the feed, the second `replaced`
    assert committer.storage_dir.joinpath(f"{uid}.dcm").read_bytes() == b.read_bytes()
    assert [(m.seq, m.replaced) for m in messages] == [(1, False), (2, True)]
    assert messages[0].study_instance_uid == df.uid_for("study-0")
    assert messages[0].modality == "CT" and messages[0].sop_class_uid == df.CT
    assert os.listdir(committer.depot_dir) == []


def test_issue_10_stored_file_with_a_future_mtime_is_replaced(
    committer: Committer, tmp_path: Path
) -> None:
    # Given a stored file restored from a backup with an mtime an hour ahead
    (old, uid), (new, _) = image(tmp_path, 3), image(tmp_path, 4)
    stored = committer.storage_dir / f"{uid}.dcm"
    stored.write_bytes(old.read_bytes())
    ahead = time.time() + 3600
    os.utime(stored, (ahead, ahead))
    # When the same UID arrives again
    put_ready(committer, new, uid)
    [msg] = committer.commit_ready({}, read_back=True)
    # Then it replaces it, and says so
    assert stored.read_bytes() == new.read_bytes()
    assert msg.replaced
    assert committer.outbox.errors() == []  # type: ignore[attr-defined]


def test_an_older_copy_found_after_a_newer_was_committed_is_set_aside_with_an_event(
    committer: Committer, tmp_path: Path
) -> None:
    (a, uid), (b, _) = image(tmp_path, 5), image(tmp_path, 6)
    put_ready(committer, b, uid)
    committer.commit_ready({}, read_back=True)
    # Given a ready file of the same UID that arrived earlier (a commit that failed
    # and is retried, or a depot restored from a backup)
    older = put_ready(committer, a, uid, token=format_token(committer.arrival.boot, 1))
    # When the committer sees it, Then it keeps the newer copy and says why
    assert committer.commit_ready({}, read_back=True) == []
    assert committer.storage_dir.joinpath(f"{uid}.dcm").read_bytes() == b.read_bytes()
    assert os.listdir(committer.depot_dir) == [older + SUPERSEDED_SUFFIX]
    [error] = committers.recorded(committer).errors()
    assert error["what"] == "older copy set aside" and error["depot_file"] == older


def test_an_unannounced_ready_file_holds_back_the_later_ones_until_read_back(
    committer: Committer, tmp_path: Path
) -> None:
    (a, ua), (b, ub) = image(tmp_path, 7), image(tmp_path, 8)
    first = put_ready(committer, a, ua)
    second = put_ready(committer, b, ub)
    announced = {second: bus.InstanceStored(second, ub, df.CT, "1.2.840.10008.1.2.1", 9, "AE")}
    # The first one's InstanceStored is not here yet: nothing may overtake it.
    assert committer.commit_ready(announced) == []
    assert committer.waiting
    messages = committer.commit_ready(announced, read_back=True)
    assert [m.sop_instance_uid for m in messages] == [ua, ub]
    assert messages[1].calling_ae == "AE"  # what the receiver said is used
    assert not committer.waiting and first not in os.listdir(committer.depot_dir)


def test_a_bad_ready_name_is_quarantined_not_lost(committer: Committer) -> None:
    name = "000001.00000000000000000001_..%2Fetc.ready"
    (committer.depot_dir / name).write_bytes(b"x")
    assert committer.commit_ready({}, read_back=True) == []
    assert os.listdir(committer.depot_dir) == [name + QUARANTINE_SUFFIX]
    assert sorted(os.listdir(committer.storage_dir)) == [".storscp", "depot"]


class CrashingHistory(History):
    """A history whose next append never happens: the committer is killed before it."""

    def append(self, *args: Any, **kwargs: Any) -> list[bus.InstanceCommitted]:
        raise KeyboardInterrupt("kill -9 between the renames and the feed rows")


def test_renames_a_crash_left_unrecorded_get_their_rows_at_restart(tmp_path: Path) -> None:
    committer = make_committer(tmp_path)
    files = [image(tmp_path, 10 + i) for i in range(3)]
    for path, uid in files:
        put_ready(committer, path, uid)
    committer.commit_ready({}, read_back=True)  # seq 1-3, recorded
    for path, uid in [image(tmp_path, 20 + i) for i in range(2)]:
        put_ready(committer, path, uid)
    # Given the committer dies after its renames, before their feed rows
    committer.history.close()
    committer.history = CrashingHistory(committer.config.state_dir)
    with pytest.raises(KeyboardInterrupt):
        committer.commit_ready({}, read_back=True)
    close(committer)
    # When a new committer starts
    restarted = make_committer(tmp_path)
    recovered = recover_pending(restarted)
    # Then every file in storage has its row, with the next seqs, none twice
    assert [m.seq for m in recovered] == [4, 5]
    reader = HistoryReader(restarted.config.state_dir)
    page, frames = reader.page(0, 100)
    paths = [bus.decode(f).path for f in frames]  # type: ignore[union-attr]
    stored = sorted(str(p) for p in restarted.storage_dir.glob("*.dcm"))
    assert sorted(paths) == stored and len(stored) == 5
    assert (page.history_start, page.last_seq) == (1, 5)
    assert recover_pending(restarted) == []  # done once
    reader.close()
    close(restarted)


def test_layout_study_puts_files_under_study_and_series(tmp_path: Path) -> None:
    committer = make_committer(tmp_path, layout="study")
    path, uid = image(tmp_path, 30)
    put_ready(committer, path, uid)
    [msg] = committer.commit_ready({}, read_back=True)
    expected = committer.storage_dir / msg.study_instance_uid / msg.series_instance_uid
    assert msg.path == str(expected / f"{uid}.dcm") and Path(msg.path).exists()
    assert oct(expected.stat().st_mode & 0o777) == oct(0o750)
    close(committer)


@pytest.mark.parametrize("study", ["..", "1.2/../3", ""])
def test_layout_study_quarantines_what_has_no_usable_study_uid(tmp_path: Path, study: str) -> None:
    committer = make_committer(tmp_path, layout="study")
    path, uid = image(tmp_path, 31)
    name = put_ready(committer, path, uid)
    info = bus.InstanceStored(name, uid, df.CT, "1.2.840.10008.1.2.1", 9, "AE", study, "1.2", "CT")
    assert committer.commit_ready({name: info}) == []
    assert os.listdir(committer.depot_dir) == [name + QUARANTINE_SUFFIX]
    assert sorted(os.listdir(committer.storage_dir)) == [".storscp", "depot"]
    close(committer)


def test_an_open_study_survives_a_restart_and_completes_once(tmp_path: Path) -> None:
    committer = make_committer(tmp_path, study_quiet_s=0.2)
    for seed in (40, 41):
        path, uid = image(tmp_path, seed)
        put_ready(committer, path, uid)
    committer.commit_ready({}, read_back=True)
    boot, tick = committer.arrival.now()
    assert committer.studies.quiet(boot, tick) == []  # not quiet yet
    close(committer)  # the committer dies before the study is quiet

    # Given a new committer, once the quiet time has passed
    restarted = make_committer(tmp_path, study_quiet_s=0.2)
    time.sleep(0.25)
    boot, tick = restarted.arrival.now()
    [study] = restarted.studies.quiet(boot, tick)
    done = restarted.history.append_study_complete(restarted.studies.completion(study))
    restarted.studies.close(study)
    assert (done.study_instance_uid, done.instances, done.series, done.seq) == (
        df.uid_for("study-0"),
        2,
        1,
        3,
    )
    close(restarted)
    # And after another restart it is not completed again
    again = make_committer(tmp_path, study_quiet_s=0.2)
    time.sleep(0.25)
    assert again.studies.quiet(*again.arrival.now()) == []
    close(again)


class SnapshotHistory(History):
    """Copies the database files right after the write-ahead record is durable."""

    snapshot: dict[str, bytes] = {}

    def record_pending(self, items: Any) -> None:
        super().record_pending(items)
        base = str(self.path)
        type(self).snapshot = {
            suffix: Path(base + suffix).read_bytes()
            for suffix in ("", "-wal")
            if Path(base + suffix).exists()
        }


def test_feed_rows_lost_with_the_power_are_written_again_byte_for_byte(tmp_path: Path) -> None:
    committer = make_committer(tmp_path)
    committer.history.close()
    committer.history = SnapshotHistory(committer.config.state_dir)
    for seed in (50, 51, 52):
        path, uid = image(tmp_path, seed)
        put_ready(committer, path, uid)
    published = committer.commit_ready({}, read_back=True)
    db = committer.history.path
    close(committer)
    # Given a power cut that kept the fsynced write-ahead record and the renames,
    # but not the feed rows written after them without an fsync of their own
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    for suffix, data in SnapshotHistory.snapshot.items():
        Path(str(db) + suffix).write_bytes(data)
    # When the committer starts again, Then the very same messages are recorded
    restarted = make_committer(tmp_path)
    assert recover_pending(restarted) == published
    reader = HistoryReader(restarted.config.state_dir)
    _, frames = reader.page(0, 10)
    assert [bus.decode(f) for f in frames] == published
    reader.close()
    close(restarted)
