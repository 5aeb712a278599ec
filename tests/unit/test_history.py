"""The feed history: seqs never go back, retention drops whole rows, replay pages, lookups."""

from __future__ import annotations

from pathlib import Path

import pytest

from storscp import bus
from storscp.config import load
from storscp.history import History, HistoryReader, Pending
from storscp.lookup import Locator
from storscp.uids import UIDError
from support import dicomfiles as df


def pending(i: int, directory: Path) -> Pending:
    uid = f"1.2.3.{i}"
    fields = {
        "path": str(directory / f"{uid}.dcm"),
        "sop_class_uid": df.CT,
        "sop_instance_uid": uid,
        "study_instance_uid": "1.2.9",
        "series_instance_uid": "1.2.9.1",
        "modality": "CT",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "bytes": 1000 + i,
        "calling_ae": "AE",
        "replaced": False,
        "time": "2026-11-30T10:00:00.000+00:00",
    }
    return Pending(f"t{i}_{uid}.ready", f"000001.{i:020d}", fields["path"], fields)


def fill(history: History, start: int, count: int, directory: Path) -> None:
    batch = [pending(i, directory) for i in range(start, start + count)]
    history.record_pending(batch)
    history.append(batch, {})


def test_a_small_bound_drops_old_history_whole_and_says_where_it_starts(tmp_path: Path) -> None:
    history = History(tmp_path)
    for start in range(0, 2000, 100):
        fill(history, start, 100, tmp_path)
        history.prune(64 * 1024, 0)
    reader = HistoryReader(tmp_path)
    bounds = reader.bounds()
    assert bounds.last_seq == 2000 and bounds.history_start > 1
    assert history.used_bytes() <= 64 * 1024 * 1.2
    # Asking for what is gone is an explicit answer, not silence
    page, frames = reader.page(0, 10)
    assert (page.error, page.count, frames) == (f"history starts at {bounds.history_start}", 0, [])
    # Asking from just before the start gives whole, contiguous messages
    page, frames = reader.page(bounds.history_start - 1, 10)
    seqs = [bus.decode(f).seq for f in frames]  # type: ignore[union-attr]
    assert page.error == "" and seqs == list(range(bounds.history_start, bounds.history_start + 10))
    reader.close()
    history.close()


def test_seq_never_goes_back_even_when_every_row_has_aged_out(tmp_path: Path) -> None:
    history = History(tmp_path)
    fill(history, 0, 5, tmp_path)
    history.prune(0, 1e-9)  # everything is older than that
    history.close()
    reopened = History(tmp_path)
    fill(reopened, 5, 1, tmp_path)
    reader = HistoryReader(tmp_path)
    assert (reader.bounds().history_start, reader.bounds().last_seq) == (6, 6)
    page, _ = reader.page(6, 10)
    assert (page.count, page.error) == (0, "")
    reader.close()
    reopened.close()


def test_study_complete_closes_the_study_in_the_same_transaction(tmp_path: Path) -> None:
    history = History(tmp_path)
    batch = [pending(1, tmp_path)]
    history.record_pending(batch)
    history.append(batch, {"1.2.9": '{"first_time": "a", "last_time": "b"}'})
    assert list(history.open_studies()) == ["1.2.9"]
    fields = {
        "study_instance_uid": "1.2.9",
        "calling_aes": ("AE",),
        "series": 1,
        "instances": 1,
        "first_time": "a",
        "last_time": "b",
    }
    msg = history.append_study_complete(fields)
    assert msg.seq == 2 and history.open_studies() == {}
    history.close()


def test_the_locator_finds_study_layout_paths_in_every_nodes_history(tmp_path: Path) -> None:
    storage = tmp_path / "s"
    keys = {"storage_dir": str(storage), "layout": "study", "node": "a"}
    node_a = load(None, keys, base_dir=tmp_path)
    node_b = load(None, {**keys, "node": "b"}, base_dir=tmp_path)
    storage.mkdir()
    series = storage / "1.2.9" / "1.2.9.1"
    series.mkdir(parents=True)
    # Node b committed 1.2.3.1, node a nothing yet
    history = History(node_b.state_dir)
    item = pending(1, series)
    Path(item.destination).write_bytes(b"x")
    history.record_pending([item])
    history.append([item], {})
    with Locator(node_a) as locator:
        assert locator.path("1.2.3.1") == series / "1.2.3.1.dcm"
        with pytest.raises(FileNotFoundError):
            locator.path("1.2.404")
        with pytest.raises(UIDError):
            locator.path("../etc")
    history.close()
    # The flat layout needs no history
    flat = load(None, {"storage_dir": str(storage)}, base_dir=tmp_path)
    with Locator(flat) as locator:
        assert locator.path("1.2.404") == storage / "1.2.404.dcm"


def test_a_consumer_ahead_of_the_history_is_told_so(tmp_path: Path) -> None:
    history = History(tmp_path)
    fill(history, 0, 3, tmp_path)
    reader = HistoryReader(tmp_path)
    page, frames = reader.page(7, 10)  # a consumer of a history that was deleted
    assert (page.error, frames) == ("history ends at 3", [])
    assert reader.page(3, 10)[0].error == ""  # up to date is fine
    reader.close()
    history.close()
