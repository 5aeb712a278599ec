"""Nodes sharing one storage: the node lock, and handing a dead node's depot over.

Real files and real flocks in tmp_path; the committer that commits the
handed-over files is the real Committer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storscp import nodelock
from storscp.committer.commit import SUPERSEDED_SUFFIX
from storscp.committer.takeover import take_over
from storscp.config import load
from support import dicomfiles as df
from support.committers import close, make_committer, put_ready, recorded


def test_recovery_is_refused_while_any_process_of_the_node_holds_its_lock(
    tmp_path: Path,
) -> None:
    receiver = nodelock.hold_shared(tmp_path)
    committer = nodelock.hold_shared(tmp_path)
    with pytest.raises(nodelock.NodeLockHeld, match="still holds"):
        nodelock.take_exclusive(tmp_path)
    os.close(receiver)
    with pytest.raises(nodelock.NodeLockHeld):
        nodelock.take_exclusive(tmp_path)
    os.close(committer)  # the last one dies: the kernel drops its lock
    os.close(nodelock.take_exclusive(tmp_path))


def test_a_node_cannot_start_while_its_depot_is_recovered(tmp_path: Path) -> None:
    recovery = nodelock.take_exclusive(tmp_path)
    with pytest.raises(nodelock.NodeLockHeld, match="being recovered"):
        nodelock.hold_shared(tmp_path, wait_s=0.1)
    os.close(recovery)
    os.close(nodelock.hold_shared(tmp_path, wait_s=0.1))


def test_a_dead_nodes_ready_files_are_committed_by_the_live_nodes_committer(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    live = load(None, {"storage_dir": str(storage), "node": "b"}, base_dir=tmp_path)
    dead = load(None, {"storage_dir": str(storage), "node": "a"}, base_dir=tmp_path)
    committer = make_committer(live)
    dead_committer = make_committer(dead)  # only for its depot and its arrival clock
    uids = []
    for seed in range(3):
        src = tmp_path / f"{seed}.dcm"
        uids.append(df.make_image(src, df.CT, seed=seed))
        put_ready(dead_committer.arrival, dead.depot_dir, src, uids[-1])
    close(dead_committer)
    (dead.depot_dir / "123-4-5.part").write_bytes(b"half an instance")
    (dead.depot_dir / "1_2.3.ready.bad").write_bytes(b"set aside")

    # Given the live node's committer: it never looks into depot/a ...
    assert committer.commit_ready({}, read_back=True) == []
    assert len(os.listdir(dead.depot_dir)) == 5
    # ... when recovery hands depot/a over under a's exclusive lock,
    lock = nodelock.take_exclusive(dead.depot_dir)
    done = take_over(dead.depot_dir, live.depot_dir)
    os.close(lock)
    # then its sweep commits them, and only the operator's .bad file stays.
    assert len(done.moved) == 3 and [n for n, _ in done.parts_removed] == ["123-4-5.part"]
    assert done.quarantined == ["1_2.3.ready.bad"]
    assert all(name.startswith("000000.") for name in done.moved)  # older than ours
    assert len(committer.commit_ready({}, read_back=True)) == 3
    for uid in uids:
        assert (storage / f"{uid}.dcm").is_file()
    assert sorted(os.listdir(dead.depot_dir)) == [".node.lock", "1_2.3.ready.bad"]
    close(committer)


def test_a_recovered_copy_never_replaces_this_nodes_own_copy_in_silence(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    live = load(None, {"storage_dir": str(storage), "node": "b"}, base_dir=tmp_path)
    dead = load(None, {"storage_dir": str(storage), "node": "a"}, base_dir=tmp_path)
    committer = make_committer(live)
    dead_committer = make_committer(dead)
    uid = df.uid_for("both nodes")
    theirs, ours = tmp_path / "theirs.dcm", tmp_path / "ours.dcm"
    df.make_image(theirs, df.CT, seed=1, uid=uid)
    df.make_image(ours, df.CT, seed=2, uid=uid)
    # Given node a acknowledged a copy and died; node b stored its own copy
    put_ready(dead_committer.arrival, dead.depot_dir, theirs, uid)
    close(dead_committer)
    put_ready(committer.arrival, live.depot_dir, ours, uid)
    assert len(committer.commit_ready({}, read_back=True)) == 1
    # When a's depot is recovered into b's
    lock = nodelock.take_exclusive(dead.depot_dir)
    [moved] = take_over(dead.depot_dir, live.depot_dir).moved
    os.close(lock)
    # Then b's copy stays, a's is kept aside, and an ERROR says so
    assert committer.commit_ready({}, read_back=True) == []
    assert df.dataset_bytes(storage / f"{uid}.dcm") == df.dataset_bytes(ours)
    assert os.listdir(live.depot_dir).count(moved + SUPERSEDED_SUFFIX) == 1
    [error] = recorded(committer).errors()
    assert error["what"] == "older copy set aside"
    close(committer)
