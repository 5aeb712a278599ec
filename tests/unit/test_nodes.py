"""Nodes sharing one storage: the node lock, and handing a dead node's depot over.

Real files and real flocks in tmp_path; the committer that commits the
handed-over files is the real Committer with its sweep.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storscp import bus, depotfiles, nodelock
from storscp.committer.commit import Committer
from storscp.committer.main import sweep
from storscp.committer.takeover import take_over
from storscp.config import load
from support import dicomfiles as df


class RecordingOutbox:
    def __init__(self) -> None:
        self.events: list[tuple[bus.EventType, dict[str, bus.FieldValue]]] = []

    def event(self, type_: bus.EventType, **fields: bus.FieldValue) -> None:
        self.events.append((type_, fields))


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


def ready_file(depot: Path, source: Path, uid: str) -> str:
    name = depotfiles.ready_name(uid)
    (depot / name).write_bytes(source.read_bytes())
    return name


def test_a_dead_nodes_ready_files_are_committed_by_the_live_nodes_committer(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    live = load(None, {"storage_dir": str(storage), "node": "b"}, base_dir=tmp_path)
    dead = load(None, {"storage_dir": str(storage), "node": "a"}, base_dir=tmp_path)
    for config in (live, dead):
        config.depot_dir.mkdir(parents=True)
    uids = []
    for seed in range(3):
        src = tmp_path / f"{seed}.dcm"
        uids.append(df.make_image(src, df.CT, seed=seed))
        ready_file(dead.depot_dir, src, uids[-1])
    (dead.depot_dir / "123-4-5.part").write_bytes(b"half an instance")
    (dead.depot_dir / "1_2.3.ready.bad").write_bytes(b"set aside")

    # Given the live node's committer: it never looks into depot/a ...
    committer = Committer(live, RecordingOutbox())  # type: ignore[arg-type]
    assert sweep(committer) == 0
    assert len(os.listdir(dead.depot_dir)) == 5
    # ... when recovery hands depot/a over under a's exclusive lock,
    lock = nodelock.take_exclusive(dead.depot_dir)
    done = take_over(dead.depot_dir, live.depot_dir)
    os.close(lock)
    # then its sweep commits them, and only the operator's .bad file stays.
    assert len(done.moved) == 3 and [n for n, _ in done.parts_removed] == ["123-4-5.part"]
    assert done.quarantined == ["1_2.3.ready.bad"]
    assert sweep(committer) == 3
    committer.close()
    for uid in uids:
        assert (storage / f"{uid}.dcm").is_file()
    assert sorted(os.listdir(dead.depot_dir)) == [".node.lock", "1_2.3.ready.bad"]
