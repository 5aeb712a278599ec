"""The check behind a Storage Commitment report, on real files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from storscp import depotfiles
from storscp.commitment.check import MetaError, check_references, stored_uids
from storscp.commitmentinfo import Failure, FailureReason
from storscp.config import Config, load
from storscp.receiver.depot import PREAMBLE, file_meta_bytes
from support import dicomfiles as df

CT, MR = df.CT, df.MR


@pytest.fixture
def config(tmp_path: Path) -> Config:
    made = load(None, base_dir=tmp_path)
    made.depot_dir.mkdir(parents=True)
    return made


def ready_file(uid: str) -> str:
    """A ready name as a receiver makes it (the token's value does not matter here)."""
    return depotfiles.ready_name("000001.00000000000000000001", uid)


def stored(config: Config, uid: str, sop_class: str = CT) -> Path:
    """A file as the receiver writes it: preamble, our meta, a dataset."""
    path = config.storage_dir / f"{uid}.dcm"
    path.write_bytes(PREAMBLE + file_meta_bytes(sop_class, uid, "1.2.840.10008.1.2", "AE") + b"x")
    return path


def test_stored_uids_reads_pydicoms_meta_and_ours(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.dcm"
    uid = df.make_image(theirs, MR, seed=5)
    assert stored_uids(theirs) == (MR, uid)
    ours = tmp_path / "ours.dcm"
    ours.write_bytes(PREAMBLE + file_meta_bytes(CT, "1.2.3", "1.2.840.10008.1.2", "A") + b"data")
    assert stored_uids(ours) == (CT, "1.2.3")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"x" * 200,
        PREAMBLE + b"\x02\x00\x00\x00UL\x04\x00",
        PREAMBLE + b"\x02\x00\x02\x00UI\xff\xff",
    ],
)
def test_a_damaged_file_is_a_meta_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    with pytest.raises(MetaError):
        stored_uids(path)


def test_each_reference_gets_its_reason(config: Config) -> None:
    stored(config, "1.2.1")
    stored(config, "1.2.2", MR)
    (config.storage_dir / "1.2.3.dcm").write_bytes(b"not dicom")
    refs = [(CT, "1.2.1"), (CT, "1.2.2"), (CT, "1.2.3"), (CT, "1.2.4"), ("1.2.99", "1.2.5")]
    result = check_references(config, refs, 0.0, frozenset({CT, MR}))
    assert result.committed == ((CT, "1.2.1"),)
    assert result.failed == (
        Failure(CT, "1.2.2", FailureReason.CLASS_INSTANCE_CONFLICT),
        Failure(CT, "1.2.3", FailureReason.PROCESSING_FAILURE),
        Failure(CT, "1.2.4", FailureReason.NO_SUCH_OBJECT_INSTANCE),
        Failure("1.2.99", "1.2.5", FailureReason.REFERENCED_SOP_CLASS_NOT_SUPPORTED),
    )


def test_an_instance_still_in_the_depot_is_waited_for(config: Config) -> None:
    ready = config.depot_dir / ready_file("1.2.7")
    ready.write_bytes(PREAMBLE + file_meta_bytes(CT, "1.2.7", "1.2.840.10008.1.2", "AE"))

    def commit() -> None:
        os.replace(ready, config.storage_dir / "1.2.7.dcm")

    timer = threading.Timer(0.3, commit)
    timer.start()
    try:
        result = check_references(config, [(CT, "1.2.7")], 10.0)
    finally:
        timer.join()
    assert result.committed == ((CT, "1.2.7"),) and result.failed == ()


def test_an_instance_left_in_the_depot_past_the_wait_is_a_processing_failure(
    config: Config,
) -> None:
    stored(config, "1.2.8")  # an older copy is in storage; the newer one must win
    (config.depot_dir / ready_file("1.2.8")).write_bytes(b"")
    result = check_references(config, [(CT, "1.2.8")], 0.2)
    assert result.failed == (Failure(CT, "1.2.8", FailureReason.PROCESSING_FAILURE),)


def test_socket_files_of_dead_receivers_are_removed(tmp_path: Path) -> None:
    from storscp.receiver.commitment_reports import remove_stale_endpoints

    dead = next(pid for pid in range(4_194_000, 4_194_304) if not Path(f"/proc/{pid}").exists())
    (tmp_path / f"receiver-{dead}.sock").touch()
    (tmp_path / f"receiver-{os.getpid()}.sock").touch()
    (tmp_path / "committer.sock").touch()
    assert remove_stale_endpoints(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "committer.sock",
        f"receiver-{os.getpid()}.sock",
    ]


def test_every_nodes_depot_is_looked_at(tmp_path: Path) -> None:
    config = load(None, {"node": "gw1"}, base_dir=tmp_path)
    other = config.depots_dir / "gw2"
    other.mkdir(parents=True)
    config.depot_dir.mkdir()
    (other / ready_file("1.2.9")).write_bytes(b"")
    (config.depot_dir / ready_file("1.2.8")).write_bytes(b"")
    from storscp.commitment.check import ready_uids

    assert ready_uids(config.depots_dir) == {"1.2.8", "1.2.9"}
