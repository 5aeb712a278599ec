"""Who may talk to us, and how much: AE titles, association limit, timeouts, sizes, modes."""

from __future__ import annotations

import os
import stat
import struct
import time
from pathlib import Path

import pytest

from support import dicomfiles as df
from support.rawscu import (
    EXPLICIT_LE,
    RawAssociation,
    Rejected,
    minimal_dataset,
)
from support.scu import echoscu, storescu
from support.service import Service, poll_for

CT = df.CT.encode()


def test_called_ae_title_must_be_ours(service: Service) -> None:
    with RawAssociation(service.port) as assoc, pytest.raises(Rejected) as info:
        assoc.associate(called_ae="ANY-SCP")
    assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 7)
    assert echoscu(service.port, called_ae="ANY-SCP").returncode != 0
    rejected = service.wait_event("ASSOCIATION", state="rejected", called_ae="ANY-SCP")
    assert rejected[0]["reason"] == "called AE title not recognised"
    assert echoscu(service.port).returncode == 0


def test_require_called_aet_false_accepts_any_called_title(
    service_factory: type[Service],
) -> None:
    svc = service_factory(require_called_aet=False).start()
    assert echoscu(svc.port, called_ae="ANY-SCP").returncode == 0


def test_accept_any_false_admits_only_listed_peers(service_factory: type[Service]) -> None:
    svc = service_factory(
        accept_any=False,
        remote_ae=[
            {"name": "ct", "ae_title": "GOODSCU", "host": "127.0.0.1", "port": 104},
            {"name": "far", "ae_title": "FARSCU", "host": "192.0.2.1"},
        ],
    ).start()
    with RawAssociation(svc.port) as assoc:
        assoc.associate(calling_ae="GOODSCU").release()
    for calling in ("BADSCU", "FARSCU"):
        with RawAssociation(svc.port) as assoc, pytest.raises(Rejected) as info:
            assoc.associate(calling_ae=calling)
        assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 3)
    reasons = {
        e["calling_ae"]: e["reason"]
        for e in svc.wait_event("ASSOCIATION", state="rejected", count=2)
    }
    assert reasons["BADSCU"] == "calling AE title not recognised"
    assert reasons["FARSCU"] == "calling AE title not allowed from 127.0.0.1"


def test_association_limit_holds_across_receiver_processes(
    service_factory: type[Service],
) -> None:
    svc = service_factory(receivers=2, max_associations=2).start()
    first, second = RawAssociation(svc.port), RawAssociation(svc.port)
    try:
        first.associate()
        second.associate()
        for _ in range(4):  # whichever receiver the kernel picks
            with RawAssociation(svc.port) as extra, pytest.raises(Rejected) as info:
                extra.associate()
            assert (info.value.result, info.value.source, info.value.reason) == (2, 3, 2)
        svc.wait_event("ASSOCIATION", state="rejected", reason="local limit exceeded")
        first.release()
        poll_for(lambda: svc.events("ASSOCIATION", state="released"), 10, "the release")
        with RawAssociation(svc.port) as again:
            again.associate()
            assert again.c_echo() == 0
            again.release()
    finally:
        first.close()
        second.close()


def test_idle_and_silent_connections_are_dropped(service_factory: type[Service]) -> None:
    svc = service_factory(acse_timeout_s=1, network_timeout_s=1, dimse_timeout_s=2).start()
    started = time.monotonic()
    with RawAssociation(svc.port) as silent:  # never sends A-ASSOCIATE-RQ
        assert silent.closed_by_peer()
    with RawAssociation(svc.port) as idle:
        idle.associate()
        assert idle.closed_by_peer()
    assert time.monotonic() - started < 10
    svc.wait_event("ASSOCIATION", state="aborted", reason="timed out waiting for the peer")


def test_slow_drip_pdu_is_dropped(service_factory: type[Service]) -> None:
    svc = service_factory(network_timeout_s=5, dimse_timeout_s=2).start()
    with RawAssociation(svc.port) as drip:
        drip.associate()
        drip.send(struct.pack(">BxL", 0x04, 1000))
        started = time.monotonic()
        with pytest.raises(OSError):  # the service resets or closes the connection
            for _ in range(40):
                drip.send(b"\x00")
                time.sleep(0.25)
                if drip.closed_by_peer_nowait():
                    raise ConnectionResetError
        assert time.monotonic() - started < 8
    svc.wait_event("ASSOCIATION", state="aborted")


def test_max_instance_bytes_refuses_with_a700(service_factory: type[Service]) -> None:
    svc = service_factory(max_instance_bytes=100_000).start()
    with RawAssociation(svc.port) as assoc:
        assoc.associate(contexts=[(df.CT, [EXPLICIT_LE])])
        cid = assoc.context_for(df.CT)
        big = assoc.c_store(
            cid, CT, b"1.2.3.100", minimal_dataset(CT, b"1.2.3.100", b"x" * 300_000)
        )
        assert big.status == 0xA700 and "max_instance_bytes" in big.comment
        small = assoc.c_store(cid, CT, b"1.2.3.101", minimal_dataset(CT, b"1.2.3.101", b"x" * 1000))
        assert small.status == 0
        assoc.release()
    svc.wait_stored(["1.2.3.101"])
    assert not svc.stored_path("1.2.3.100").exists()
    svc.wait_event("ERROR", what="C-STORE failed", status="0xA700")
    assert svc.depot_entries() == []


def test_file_and_directory_modes(service_factory: type[Service], short_tmp: Path) -> None:
    svc = service_factory(file_mode="0600").start()
    path = short_tmp / "mode.dcm"
    uid = df.make_image(path, df.CT, seed=61)
    assert storescu(svc.port, [path]).returncode == 0
    svc.wait_stored([uid])
    assert stat.S_IMODE(os.stat(svc.stored_path(uid)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(svc.depot_dir).st_mode) == 0o750
    for name in ("storscp1.log",):
        assert not stat.S_IMODE(os.stat(svc.log_dir / name).st_mode) & 0o007


def test_dir_mode_applies_to_the_directories_storscp_creates(
    service_factory: type[Service],
) -> None:
    # 0770 survives the usual umask 022: storscp sets the mode exactly.
    svc = service_factory(dir_mode="0770")
    svc.start()
    for path in (svc.depot_dir, svc.log_dir):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o770, path


def test_remote_ae_limit_holds_across_receiver_processes(
    service_factory: type[Service],
) -> None:
    # Given a modality limited to 3 associations, two receiver processes
    svc = service_factory(
        receivers=2,
        remote_ae=[{"name": "busy modality", "ae_title": "LIMITED", "max_associations": 3}],
    ).start()
    held = [RawAssociation(svc.port) for _ in range(3)]
    try:
        for conn in held:
            conn.associate(calling_ae="LIMITED")
        # When it asks for a fourth (whichever receiver the kernel picks)
        for _ in range(4):
            with RawAssociation(svc.port) as extra, pytest.raises(Rejected) as info:
                extra.associate(calling_ae="LIMITED")
            # Then: A-ASSOCIATE-RJ transient, service-provider (presentation), local limit
            assert (info.value.result, info.value.source, info.value.reason) == (2, 3, 2)
        rejected = svc.wait_event("ASSOCIATION", state="rejected", calling_ae="LIMITED")
        assert rejected[0]["reason"].startswith("local limit exceeded")
        # and other AEs are unaffected,
        with RawAssociation(svc.port) as other:
            assert other.associate(calling_ae="OTHER").c_echo() == 0
            other.release()
        # and a released slot is the modality's again.
        held[0].release()
        poll_for(
            lambda: svc.events("ASSOCIATION", state="released", calling_ae="LIMITED"), 10, "release"
        )
        with RawAssociation(svc.port) as again:
            assert again.associate(calling_ae="LIMITED").c_echo() == 0
            again.release()
    finally:
        for conn in held:
            conn.close()
