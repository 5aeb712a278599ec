"""PartFile and the committer's rules, on real files in tmp_path."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from storscp import depotfiles
from storscp.arrival import Arrival, parse_token
from storscp.committer.recover import remove_orphaned_parts
from storscp.receiver.depot import PartFile, PartPool, create_locked_part, file_meta_bytes
from storscp.receiver.sopuids import from_file as read_sop_uids
from support import dicomfiles as df


@pytest.fixture
def arrival(tmp_path: Path) -> Iterator[Arrival]:
    state = tmp_path / "state"
    state.mkdir()
    clock = Arrival(state)
    yield clock
    clock.close()


def receive(
    depot: Path, source: Path, uid: str, arrival: Arrival, chunk: int = 1000
) -> tuple[PartFile, str]:
    """Stream a source file's dataset into a part file, as the DUL thread would."""
    data = df.dataset_bytes(source)
    meta = file_meta_bytes(df.CT, uid, "1.2.840.10008.1.2.1", "SCU")
    part = PartFile(*create_locked_part(depot, 0o640), meta, arrival)
    for i in range(0, len(data), chunk):
        part.write(memoryview(data)[i : i + chunk])
    part.flush()
    return part, df.CT


def test_part_is_locked_and_becomes_a_durable_ready_file(tmp_path: Path, arrival: Arrival) -> None:
    src = tmp_path / "src.dcm"
    uid = df.make_image(src, df.CT, seed=1)
    depot = tmp_path / "depot"
    depot.mkdir()
    part, _ = receive(depot, src, uid, arrival)
    with open(part.path, "rb") as fh, pytest.raises(BlockingIOError):
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    found = read_sop_uids(part.path, part.dataset_offset, "1.2.840.10008.1.2.1")
    assert found.sop_class_uid and found.sop_class_uid.rstrip("\x00") == df.CT
    assert found.sop_instance_uid and found.sop_instance_uid.rstrip("\x00") == uid
    dirfd = os.open(depot, os.O_RDONLY)
    name = part.make_ready(uid, dirfd)
    os.close(dirfd)
    assert depotfiles.uid_of_ready(name) == uid
    assert parse_token(name) is not None
    assert os.listdir(depot) == [name]
    assert df.dataset_bytes(depot / name) == df.dataset_bytes(src)
    part.discard()  # a ready file belongs to the committer now
    assert os.listdir(depot) == [name]


def test_discard_removes_the_part(tmp_path: Path, arrival: Arrival) -> None:
    depot = tmp_path / "depot"
    depot.mkdir()
    meta = file_meta_bytes(df.CT, "1.2", "1.2.840.10008.1.2", "")
    part = PartFile(*create_locked_part(depot, 0o640), meta, arrival)
    part.write(b"abc")
    part.discard()
    assert os.listdir(depot) == []


def test_sop_uids_of_big_endian_and_deflated(tmp_path: Path) -> None:
    src = tmp_path / "be.dcm"
    uid = df.make_image(src, df.MR, seed=3, transfer_syntax=ExplicitVRBigEndian)
    found = read_sop_uids(src, df.dataset_offset(src), ExplicitVRBigEndian)
    assert found.sop_instance_uid and found.sop_instance_uid.rstrip("\x00") == uid

    le = tmp_path / "le.dcm"
    uid = df.make_image(le, df.MR, seed=4)
    body = df.dataset_bytes(le)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = tmp_path / "deflated.raw"
    deflated.write_bytes(deflater.compress(body) + deflater.flush())
    found = read_sop_uids(deflated, 0, DeflatedExplicitVRLittleEndian)
    assert found.sop_instance_uid and found.sop_instance_uid.rstrip("\x00") == uid


@pytest.mark.parametrize(
    ("data", "syntax"),
    [
        (b"\x08\x00\x16", "1.2.840.10008.1.2.1"),
        (b"\x08\x00\x16\x00UI\x20\x00" + b"1.2" * 3, "1.2.840.10008.1.2.1"),
        (b"\x08\x00\x16\x00\x10\x00\x00", "1.2.840.10008.1.2"),
        (b"\xff\x00garbage-not-deflate", "1.2.840.10008.1.2.1.99"),
    ],
)
def test_truncated_or_garbage_dataset_yields_no_uid_pair(
    tmp_path: Path, data: bytes, syntax: str
) -> None:
    """Either a ValueError or no (class, instance) pair: the store then fails."""
    junk = tmp_path / "junk"
    junk.write_bytes(data)
    try:
        found = read_sop_uids(junk, 0, syntax)
    except ValueError:
        return
    assert found.sop_instance_uid is None


def test_orphaned_part_is_removed_only_when_unlocked_and_old(
    tmp_path: Path, arrival: Arrival
) -> None:
    meta = file_meta_bytes(df.CT, "1.2", "1.2.840.10008.1.2", "")
    held = PartFile(*create_locked_part(tmp_path, 0o640), meta, arrival)
    orphan = tmp_path / depotfiles.part_name(depotfiles.unique_name())
    orphan.write_bytes(b"partial")
    young = tmp_path / depotfiles.part_name(depotfiles.unique_name())
    young.write_bytes(b"partial")
    for p in (held.path, orphan):
        os.utime(p, (1, 1))
    assert remove_orphaned_parts(tmp_path, grace_s=5) == [(orphan.name, 7)]
    assert os.path.exists(held.path) and young.exists()
    held.discard()


def test_file_meta_matches_pydicoms_encoding(tmp_path: Path) -> None:
    """Our hand-encoded group 0002 reads back as pydicom writes it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_file_meta_info
    from pydicom.filewriter import write_file_meta_info

    from storscp import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
    from storscp.receiver.depot import PREAMBLE

    ours = file_meta_bytes(df.CT, "1.2.3", "1.2.840.10008.1.2.4.50", "MODALITY 1")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = df.CT
    meta.MediaStorageSOPInstanceUID = "1.2.3"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    meta.SourceApplicationEntityTitle = "MODALITY 1"
    theirs = DicomBytesIO()
    write_file_meta_info(theirs, meta, enforce_standard=True)
    assert ours == theirs.getvalue()
    path = tmp_path / "meta.dcm"
    path.write_bytes(PREAMBLE + ours)
    assert read_file_meta_info(path).MediaStorageSOPInstanceUID == "1.2.3"


def test_part_pool_hands_out_locked_parts_and_cleans_up(tmp_path: Path, arrival: Arrival) -> None:
    tmp_path = tmp_path / "depot"
    tmp_path.mkdir()
    pool = PartPool(tmp_path, 0o640, arrival, size=2)
    fd, path = pool.take()  # nothing spare yet: made on the spot
    os.close(fd)
    os.unlink(path)
    pool.refill()
    spares = sorted(os.listdir(tmp_path))
    assert len(spares) == 2 and all(n.endswith(".part") for n in spares)
    fd, path = pool.take()
    assert os.path.basename(path) in spares
    with open(path, "rb") as fh, pytest.raises(BlockingIOError):
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o640
    os.close(fd)
    os.unlink(path)
    pool.close()  # the other spare goes too
    assert os.listdir(tmp_path) == []


def test_part_pool_refill_leaves_a_failure_to_take(tmp_path: Path, arrival: Arrival) -> None:
    pool = PartPool(tmp_path / "missing", 0o640, arrival)
    pool.refill()  # no directory: nothing made, nothing raised
    with pytest.raises(FileNotFoundError):
        pool.take()
    pool.close()


@pytest.mark.parametrize(("umask", "chmods"), [(0o022, False), (0o077, True), (0o000, False)])
def test_a_part_has_exactly_the_file_mode_and_fchmod_only_where_the_umask_strips_bits(
    tmp_path: Path, arrival: Arrival, umask: int, chmods: bool
) -> None:
    # Given the process umask (read by the pool once, from /proc/self/status)
    old = os.umask(umask)
    try:
        pool = PartPool(tmp_path, 0o640, arrival, size=1)
        fd, _path = pool.take()
    finally:
        os.umask(old)
    # Then the part has the configured mode either way; fchmod only when needed
    try:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o640
        assert pool._chmod is chmods
    finally:
        os.close(fd)
        pool.close()


def test_threads_refilling_at_once_never_overfill_the_pool(
    tmp_path: Path, arrival: Arrival
) -> None:
    depot = tmp_path / "depot"
    depot.mkdir()
    pool = PartPool(depot, 0o640, arrival, size=4)
    start = threading.Barrier(8)

    def refill() -> None:
        start.wait()
        pool.refill()

    for _ in range(20):
        threads = [threading.Thread(target=refill) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(os.listdir(depot)) == 4
        for _ in range(3):  # three stores take their parts
            fd, path = pool.take()
            os.close(fd)
            os.unlink(path)
    pool.close()
    assert os.listdir(depot) == []
