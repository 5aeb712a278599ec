"""Hostile input over real sockets: refused clearly, logged, and the service keeps serving."""

from __future__ import annotations

import os
import shutil
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import dicomfiles as df
from support.rawscu import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    VERIFICATION,
    RawAssociation,
    associate_rq,
    minimal_dataset,
    p_data,
    store_rq,
)
from support.service import Service, poll_for, short_tempdir

CT = df.CT.encode()


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def receiver_pids(svc: Service) -> set[int]:
    return {int(e["pid"]) for e in svc.events("START", proc="receiver")}


def assert_still_serving(svc: Service, pids_before: set[int]) -> None:
    """A fresh association still stores an instance, served by the same processes."""
    uid = df.uid_for(f"after-{len(svc.events('WRITE'))}-{os.getpid()}")
    with RawAssociation(svc.port) as assoc:
        assoc.associate(contexts=[(df.CT, [EXPLICIT_LE])])
        cid = assoc.context_for(df.CT)
        rsp = assoc.c_store(cid, CT, uid.encode(), minimal_dataset(CT, uid.encode()))
        assert rsp.status == 0x0000, rsp
        assoc.release()
    svc.wait_stored([uid])
    assert receiver_pids(svc) == pids_before, "a receiver restarted"


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    """One service for the whole module: every attack below hits the same processes."""
    # storage/../../x would land in `outer`, which only this test uses.
    outer = short_tempdir("hostile")
    (outer / "s").mkdir()
    # One receiver so that "the same process" is meaningful.
    service = Service(outer / "s", receivers=1).start()
    yield service
    service.stop()
    shutil.rmtree(outer, ignore_errors=True)


BAD_UIDS = [
    b"../../x",
    b"1.2/../3",
    b"/etc/passwd",
    b"1.2.3\x004",
    b"1." + b"2" * 63,
    b"1..2",
    b".1.2",
    b"1.2.",
    b"1.02.3",
    b"",
    b"1.2.3\\4",
    b"1.2.3 x",
]


@pytest.mark.parametrize("bad_uid", BAD_UIDS, ids=[repr(u) for u in BAD_UIDS])
def test_invalid_sop_instance_uid_is_refused_and_nothing_written(
    svc: Service, bad_uid: bytes
) -> None:
    before = all_files(svc.root.parent)
    pids = receiver_pids(svc)
    with RawAssociation(svc.port) as assoc:
        assoc.associate(contexts=[(df.CT, [EXPLICIT_LE]), (VERIFICATION, [IMPLICIT_LE])])
        cid = assoc.context_for(df.CT)
        rsp = assoc.c_store(cid, CT, bad_uid, minimal_dataset(CT, bad_uid))
        # Then: a failure status in the "cannot understand" range, with a reason.
        assert 0xC000 <= rsp.status <= 0xCFFF, hex(rsp.status)
        assert "UID" in rsp.comment
        # And the association is still usable.
        assert assoc.c_echo() == 0
        assoc.release()
    shown = bad_uid.decode("ascii", "replace")
    svc.wait_event("ERROR", what="C-STORE failed", status="0xC001", sop_instance_uid=shown)
    assert svc.depot_entries() == []
    after = all_files(svc.root.parent) - before
    written = {f for f in after if "/storage/" in f and "/depot/" not in f}
    assert not written, written
    assert not (svc.root.parent / "x").exists() and not (svc.root / "x").exists()
    assert_still_serving(svc, pids)


def test_dataset_uid_differing_from_request_is_a900(svc: Service) -> None:
    pids = receiver_pids(svc)
    with RawAssociation(svc.port) as assoc:
        assoc.associate(contexts=[(df.CT, [EXPLICIT_LE])])
        cid = assoc.context_for(df.CT)
        rsp = assoc.c_store(cid, CT, b"1.2.3.4", minimal_dataset(CT, b"1.2.3.5"))
        assert rsp.status == 0xA900
        rsp = assoc.c_store(
            cid, CT, b"1.2.3.4", minimal_dataset(b"1.2.840.10008.5.1.4.1.1.4", b"1.2.3.4")
        )
        assert rsp.status == 0xA900
        assoc.release()
    svc.wait_event("ERROR", what="C-STORE failed", status="0xA900", count=2)
    assert not svc.stored_path("1.2.3.4").exists()
    assert_still_serving(svc, pids)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x09\x00\x00\x00\x00\x04abcd",
        b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03",
        b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16,
        b"\x00",
    ],
)
def test_garbage_before_association_is_dropped(svc: Service, garbage: bytes) -> None:
    pids = receiver_pids(svc)
    with RawAssociation(svc.port) as assoc:
        assoc.send(garbage)
        assoc.sock.shutdown(socket.SHUT_WR)
        assert assoc.closed_by_peer()
    assert_still_serving(svc, pids)


def _pdu_announcing_4gb(assoc: RawAssociation) -> None:
    assoc.send(struct.pack(">BxL", 0x04, 0xFFFFFFFF) + b"\x00" * 100)


def _associate_rq_announcing_4gb(assoc: RawAssociation) -> None:
    assoc.send(struct.pack(">BxL", 0x01, 0xFFFFFFFF) + b"\x00" * 100)


def _pdv_item_overflowing_its_pdu(assoc: RawAssociation) -> None:
    command = store_rq(1, CT, b"1.2.3")
    good = p_data(assoc.context_for(df.CT), 0x03, command)
    # Item length says 1000 bytes more than the PDU holds.
    assoc.send(good[:6] + struct.pack(">L", len(command) + 2 + 1000) + good[10:])


def _message_on_unaccepted_context(assoc: RawAssociation) -> None:
    assoc.send(p_data(99, 0x03, store_rq(1, CT, b"1.2.3")))


def _dataset_before_command(assoc: RawAssociation) -> None:
    assoc.send(p_data(assoc.context_for(df.CT), 0x02, minimal_dataset(CT, b"1.2.3")))


# (attack, whether it comes after an accepted association)
PROTOCOL_ATTACKS = {
    "P-DATA announcing 4 GB": (_pdu_announcing_4gb, True),
    "A-ASSOCIATE-RQ announcing 4 GB": (_associate_rq_announcing_4gb, False),
    "PDV item length past its PDU": (_pdv_item_overflowing_its_pdu, True),
    "message on an unaccepted context": (_message_on_unaccepted_context, True),
    "dataset before its command": (_dataset_before_command, True),
}


@pytest.mark.parametrize("name", PROTOCOL_ATTACKS)
def test_protocol_violation_is_aborted_and_logged(svc: Service, name: str) -> None:
    attack, after_association = PROTOCOL_ATTACKS[name]
    pids = receiver_pids(svc)
    errors_before = len(svc.events("ERROR", what="protocol error"))
    with RawAssociation(svc.port) as assoc:
        if after_association:
            assoc.associate(contexts=[(df.CT, [EXPLICIT_LE])])
        attack(assoc)
        assert assoc.closed_by_peer()
    svc.wait_event("ERROR", what="protocol error", count=errors_before + 1)
    assert_still_serving(svc, pids)


def test_abort_mid_dataset_leaves_no_partial_file(svc: Service) -> None:
    pids = receiver_pids(svc)
    with RawAssociation(svc.port) as assoc:
        assoc.associate(contexts=[(df.CT, [EXPLICIT_LE])])
        cid = assoc.context_for(df.CT)
        assoc.send(p_data(cid, 0x03, store_rq(1, CT, b"1.2.3.77")))
        # More than the receiver buffers, so part of it is on disk.
        assoc.send(p_data(cid, 0x00, minimal_dataset(CT, b"1.2.3.77", b"x" * 600_000)))
        poll_for(lambda: svc.depot_entries(), 10, "the partial file to exist")
        assoc.send(struct.pack(">BxL", 0x07, 4) + b"\x00\x00\x00\x00")
    poll_for(lambda: svc.depot_entries() == [], 10, "the partial file to go")
    assert not svc.stored_path("1.2.3.77").exists()
    svc.wait_event("ASSOCIATION", state="aborted")
    assert_still_serving(svc, pids)


def test_non_ascii_ae_title_leaves_no_traceback_in_receiver_log(svc: Service) -> None:
    """Found by fuzzing: pynetdicom logged a traceback for every non-ASCII AE title.

    Any client could fill the receiver's stderr log with them; the refusal is
    already an ERROR event of ours.
    """
    # Given: the receiver's stderr log as it is now.
    pids = receiver_pids(svc)
    log_path = svc.run_dir / "receiver.out.log"
    logged_before = log_path.stat().st_size
    errors_before = len(svc.events("ERROR", what="protocol error"))
    # When: a request arrives whose Called AE Title is not ASCII.
    rq = bytearray(associate_rq("RAWSCU", "STORSCP", [(VERIFICATION, [IMPLICIT_LE])]))
    rq[10:26] = b"\x9cSTORSCP\xff       "
    with RawAssociation(svc.port) as assoc:
        assoc.send(bytes(rq))
        assert assoc.closed_by_peer()
    # Then: it is refused and reported as an event ...
    svc.wait_event("ERROR", what="protocol error", count=errors_before + 1)
    assert_still_serving(svc, pids)
    # ... and nothing about it went to the receiver's stderr log.
    with open(log_path, "rb") as fh:
        fh.seek(logged_before)
        added = fh.read().decode(errors="replace")
    assert "Traceback" not in added and "pynetdicom" not in added, added


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def test_large_value_in_a_sequence_before_sop_uids_is_not_read_into_memory(svc: Service) -> None:
    """Found while fuzzing: parsing a dataset's head read a sequence's values whole.

    When the SOP UIDs follow an undefined-length sequence, the receiver asks
    pydicom for them, and pydicom reads values inside sequence items in full:
    a 2 GB value there cost 2 GB of memory per association.
    """
    # Given: the receiver's peak memory reset to what it uses now.
    pids = receiver_pids(svc)
    (pid,) = pids
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM
    baseline = peak_rss_bytes(pid)
    # When: a C-STORE whose dataset starts with a sequence holding a 64 MB value.
    value_bytes = 64 * 1024 * 1024
    item = struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<L", value_bytes)
    item += b"\0" * value_bytes
    sequence = struct.pack("<HH", 0x0008, 0x0006) + b"SQ\0\0" + struct.pack("<L", 0xFFFFFFFF)
    sequence += struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + item
    sequence += struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    uid = b"1.2.3.4.88"
    with RawAssociation(svc.port) as assoc:
        assoc.associate(contexts=[(df.CT, [EXPLICIT_LE])])
        cid = assoc.context_for(df.CT)
        dataset = sequence + minimal_dataset(CT, uid)
        rsp = assoc.c_store(cid, CT, uid, dataset, fragment_bytes=1 << 20)
        assoc.release()
    # Then: it is refused as not understood, without holding the value in memory.
    assert rsp.status == 0xC000, (hex(rsp.status), rsp.comment)
    grown = peak_rss_bytes(pid) - baseline
    assert grown < value_bytes // 4, f"peak memory grew by {grown} bytes"
    assert not svc.stored_path(uid.decode()).exists()
    poll_for(lambda: svc.depot_entries() == [], 10, "the refused part to go")
    assert_still_serving(svc, pids)


def test_invalid_uids_in_associate_rq_leave_receiver_log_quiet(svc: Service) -> None:
    """Found by fuzzing: pydicom logged and warned about each invalid UID in a request.

    pynetdicom checks the request's UIDs with pydicom, which wrote several
    lines quoting the peer's bytes for each: any client could write to the
    receiver's stderr log at will.
    """
    # Given: the receiver's stderr log as it is now.
    pids = receiver_pids(svc)
    log_path = svc.run_dir / "receiver.out.log"
    logged_before = log_path.stat().st_size
    # When: requests arrive with a '/' in their UIDs (one bit away from '.').
    rq = associate_rq("RAWSCU", "STORSCP", [(VERIFICATION, [IMPLICIT_LE]), (df.CT, [IMPLICIT_LE])])
    for uid in (VERIFICATION, IMPLICIT_LE, "1.2.840.10008.3.1.1.1"):
        bad = uid.encode().replace(b".", b"/", 1)
        with RawAssociation(svc.port) as assoc:
            assoc.send(rq.replace(uid.encode(), bad, 1))
            # Then: each is refused or answered without the bad part ...
            assert assoc.recv_pdu()[0] in (0x02, 0x03, 0x07)
    assert_still_serving(svc, pids)
    # ... and nothing about them went to the receiver's stderr log.
    with open(log_path, "rb") as fh:
        fh.seek(logged_before)
        added = fh.read().decode(errors="replace")
    assert added == "", added
