"""The durable store of pending Storage Commitment requests, on real files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from storscp import commitmentfiles
from storscp.commitmentfiles import CommitmentRequest, RequestFileError, RequestStore

CT = "1.2.840.10008.5.1.4.1.1.2"


def request(transaction: str = "1.2.3.4", n: int = 3) -> CommitmentRequest:
    return CommitmentRequest(
        transaction_uid=transaction,
        references=tuple((CT, f"1.2.9.{i}") for i in range(1, n + 1)),
        calling_ae="MODALITY",
        called_ae="STORSCP",
        peer="127.0.0.1:4000",
        received_unix=time.time(),
        reply_to="ipc:///run/bus/receiver-7.sock",
        association_id=12,
    )


@pytest.fixture
def store(tmp_path: Path) -> RequestStore:
    made = RequestStore(tmp_path / ".storscp" / "commitment")
    made.create_dirs()
    return made


def test_a_request_round_trips_and_leaves_no_temp_file(store: RequestStore) -> None:
    sent = request()
    name, duplicate = store.add(sent)
    assert (name, duplicate) == ("1.2.3.4.request", False)
    assert sorted(os.listdir(store.directory)) == ["1.2.3.4.request", "done"]
    assert store.load(name) == sent
    assert store.pending() == [name]


def test_a_transaction_in_use_is_a_duplicate_kept_apart(store: RequestStore) -> None:
    first, _ = store.add(request())
    second, duplicate = store.add(request(n=1))
    assert duplicate and second != first and commitmentfiles.is_duplicate_name(second)
    assert store.load(second).duplicate and not store.load(first).duplicate
    assert store.pending() == [first, second]


def test_a_transaction_reported_recently_is_a_duplicate_too(store: RequestStore) -> None:
    name, _ = store.add(request())
    store.finish(name)
    assert store.pending() == []
    assert (store.done_dir / name).exists()
    _, duplicate = store.add(request())
    assert duplicate


def test_prune_forgets_old_done_requests_and_stale_temp_files(store: RequestStore) -> None:
    name, _ = store.add(request())
    store.finish(name)
    stale = store.directory / ".tmp-crashed"
    stale.write_bytes(b"{")
    now = time.time()
    assert store.prune(now) == 0
    assert (store.done_dir / name).exists() and stale.exists()
    assert store.prune(now + commitmentfiles.DONE_KEEP_S + 1) == 1
    assert not (store.done_dir / name).exists() and not stale.exists()
    _, duplicate = store.add(request())
    assert not duplicate


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b'{"v": 2}',
        b'{"v": 1, "transaction_uid": "1.2", "references": []}',
        request().to_json().replace(b"1.2.9.1", b"1.2.9.x"),
        request().to_json().replace(b'"calling_ae": "MODALITY"', b'"calling_ae": 5'),
    ],
)
def test_an_unreadable_request_says_why(store: RequestStore, content: bytes) -> None:
    path = store.directory / "1.2.5.request"
    path.write_bytes(content)
    with pytest.raises(RequestFileError):
        store.load(path.name)


def test_request_files_have_the_configured_mode(tmp_path: Path) -> None:
    store = RequestStore(tmp_path / "c", file_mode=0o600, dir_mode=0o700)
    store.create_dirs()
    name, _ = store.add(request())
    assert (store.directory / name).stat().st_mode & 0o777 == 0o600
    assert store.directory.stat().st_mode & 0o777 == 0o700


def test_a_dead_nodes_pending_requests_are_adopted(tmp_path: Path) -> None:
    here = RequestStore(tmp_path / ".storscp" / "gw1" / "commitment")
    dead = RequestStore(tmp_path / ".storscp" / "gw2" / "commitment")
    for store in (here, dead):
        store.create_dirs()
    here.add(request("1.2.3.4"))
    dead.add(request("1.2.3.4"))  # the same transaction asked on both nodes
    dead.add(request("1.2.3.5"))
    adopted = here.adopt(dead)
    assert dead.pending() == []
    assert len(adopted) == 2 and "1.2.3.5.request" in adopted
    clash = next(name for name in adopted if name != "1.2.3.5.request")
    assert commitmentfiles.is_duplicate_name(clash) and here.load(clash).duplicate
    assert len(here.pending()) == 3
