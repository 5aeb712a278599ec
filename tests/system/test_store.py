"""C-ECHO and C-STORE end to end: real service, real DCMTK and pynetdicom clients."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from support import dicomfiles as df
from support.scu import echoscu, pynetdicom_store, storescu
from support.service import Service, poll_for, short_tempdir


@pytest.fixture(scope="module")
def corpus() -> Iterator[dict[str, tuple[Path, str, str]]]:
    """60 instances: CT, MR, SC, Encapsulated PDF and multi-frame; uid -> (path, class, ts)."""
    root = short_tempdir("corpus")
    files: dict[str, tuple[Path, str, str]] = {}
    plan = [(df.CT, 20), (df.MR, 15), (df.SECONDARY_CAPTURE, 10)]
    seed = 0
    for sop_class, count in plan:
        for _ in range(count):
            seed += 1
            path = root / f"img{seed}.dcm"
            uid = df.make_image(path, sop_class, seed=seed, rows=64, columns=48)
            files[uid] = (path, sop_class, ExplicitVRLittleEndian)
    for _ in range(10):
        seed += 1
        path = root / f"pdf{seed}.dcm"
        files[df.make_pdf(path, seed=seed)] = (path, df.ENCAPSULATED_PDF, ExplicitVRLittleEndian)
    for _ in range(5):
        seed += 1
        path = root / f"mf{seed}.dcm"
        uid = df.make_image(path, df.MULTIFRAME_WORD_SC, seed=seed, rows=32, columns=32, frames=8)
        files[uid] = (path, df.MULTIFRAME_WORD_SC, ExplicitVRLittleEndian)
    yield files
    shutil.rmtree(root, ignore_errors=True)


def assert_stored_as_sent(svc: Service, uid: str, source: Path, transfer_syntax: str) -> None:
    """The stored file: our meta for this UID and syntax, then the sent dataset bytes."""
    stored = svc.stored_path(uid)
    meta = pydicom.dcmread(stored, stop_before_pixels=True)
    assert meta.file_meta.MediaStorageSOPInstanceUID == uid
    assert meta.file_meta.TransferSyntaxUID == transfer_syntax
    assert meta.file_meta.ImplementationClassUID.startswith("1.2.826.0.1.3680043.10.1426")
    assert meta.SOPInstanceUID == uid
    assert df.dataset_bytes(stored) == df.dataset_bytes(source), f"{uid}: dataset bytes differ"


def test_echo_with_echoscu(service: Service) -> None:
    result = echoscu(service.port)
    assert result.returncode == 0, result.stderr
    accepted = service.wait_event("ASSOCIATION", state="accepted", calling_ae="ECHOSCU")
    assert accepted[0]["called_ae"] == "STORSCP"


def test_storescu_stores_sixty_instances_of_five_classes(
    service: Service, corpus: dict[str, tuple[Path, str, str]]
) -> None:
    paths = [path for path, _, _ in corpus.values()]
    result = storescu(service.port, paths)
    assert result.returncode == 0, result.stderr
    service.wait_stored(corpus)
    for uid, (path, _cls, ts) in corpus.items():
        assert_stored_as_sent(service, uid, path, ts)
    writes = service.wait_event("WRITE", count=len(corpus))
    assert {w["sop_instance_uid"] for w in writes} == set(corpus)
    poll_for(lambda: service.depot_entries() == [], 10, "an empty depot")


def test_pynetdicom_raw_bytes_are_stored_unchanged(
    service: Service, corpus: dict[str, tuple[Path, str, str]]
) -> None:
    chosen = list(corpus.items())[::6]
    statuses = pynetdicom_store(service.port, [entry for _, entry in chosen])
    assert statuses == [0] * len(chosen)
    service.wait_stored(uid for uid, _ in chosen)
    for uid, (path, _cls, ts) in chosen:
        assert_stored_as_sent(service, uid, path, ts)
        # Bit for bit: pynetdicom sent the file's own dataset bytes.
        assert df.dataset_bytes(service.stored_path(uid)) == df.dataset_bytes(path)


def test_implicit_vr_file_is_stored_in_implicit_vr(service: Service, short_tmp: Path) -> None:
    path = short_tmp / "implicit.dcm"
    uid = df.make_image(path, df.CT, seed=900, transfer_syntax=ImplicitVRLittleEndian)
    statuses = pynetdicom_store(service.port, [(path, df.CT, ImplicitVRLittleEndian)])
    assert statuses == [0]
    service.wait_stored([uid])
    assert_stored_as_sent(service, uid, path, ImplicitVRLittleEndian)


@pytest.mark.parametrize(
    ("tool", "tool_args", "storescu_flag", "syntax"),
    [
        ("dcmcrle", [], "-xr", RLELossless),
        ("dcmcjpls", [], "-xt", JPEGLSLossless),
    ],
)
def test_compressed_file_is_stored_unchanged(
    service: Service,
    short_tmp: Path,
    tool: str,
    tool_args: list[str],
    storescu_flag: str,
    syntax: str,
) -> None:
    raw = short_tmp / "raw.dcm"
    compressed = short_tmp / f"{tool}.dcm"
    uid = df.make_image(raw, df.MR, seed=1234, rows=128, columns=128)
    subprocess.run([tool, *tool_args, str(raw), str(compressed)], check=True, capture_output=True)
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == syntax
    result = storescu(service.port, [compressed], storescu_flag)
    assert result.returncode == 0, result.stderr
    service.wait_stored([uid])
    assert_stored_as_sent(service, uid, compressed, syntax)
    # And the same file sent by pynetdicom, byte for byte, overwrites it identically.
    assert pynetdicom_store(service.port, [(compressed, df.MR, syntax)]) == [0]
    service.wait_event("WRITE", count=2, sop_instance_uid=uid)
    assert_stored_as_sent(service, uid, compressed, syntax)


def test_duplicate_uid_overwrites_the_earlier_file(service: Service, short_tmp: Path) -> None:
    first, second = short_tmp / "first.dcm", short_tmp / "second.dcm"
    uid = df.uid_for("duplicate")
    df.make_image(first, df.CT, seed=1, uid=uid, patient_name="FIRST^SENT")
    df.make_image(second, df.CT, seed=2, uid=uid, patient_name="SECOND^SENT")
    assert storescu(service.port, [first]).returncode == 0
    service.wait_event("WRITE", sop_instance_uid=uid, replaced="false")
    assert storescu(service.port, [second]).returncode == 0
    service.wait_event("WRITE", sop_instance_uid=uid, replaced="true")
    assert str(pydicom.dcmread(service.stored_path(uid)).PatientName) == "SECOND^SENT"
    assert_stored_as_sent(service, uid, second, ExplicitVRLittleEndian)
    assert [p.name for p in service.storage_dir.iterdir() if p.is_file()] == [f"{uid}.dcm"]


def test_extension_img(service_factory: type[Service], short_tmp: Path) -> None:
    svc = service_factory(extension=".img").start()
    path = short_tmp / "ext.dcm"
    uid = df.make_image(path, df.CT, seed=77)
    assert storescu(svc.port, [path]).returncode == 0
    svc.wait_stored([uid])
    assert (svc.storage_dir / f"{uid}.img").is_file()
    assert not (svc.storage_dir / f"{uid}.dcm").exists()


def test_four_storescu_in_parallel(service: Service, short_tmp: Path) -> None:
    batches: list[list[Path]] = [[] for _ in range(4)]
    uids: list[str] = []
    for i in range(80):
        path = short_tmp / f"par{i}.dcm"
        uids.append(df.make_image(path, df.CT, seed=5000 + i, rows=128, columns=128))
        batches[i % 4].append(path)
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(target=lambda b=b: results.append(storescu(service.port, b)))
        for b in batches
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
    service.wait_stored(uids)
    for i, uid in enumerate(uids):
        assert df.dataset_bytes(service.stored_path(uid)) == df.dataset_bytes(
            short_tmp / f"par{i}.dcm"
        )
    poll_for(lambda: service.depot_entries() == [], 10, "an empty depot")


def test_graceful_stop_leaves_an_empty_depot(
    service_factory: type[Service], short_tmp: Path
) -> None:
    svc = service_factory().start()
    path = short_tmp / "one.dcm"
    uid = df.make_image(path, df.CT, seed=4242)
    assert storescu(svc.port, [path]).returncode == 0
    svc.stop()
    assert svc.stored_path(uid).is_file()
    assert os.listdir(svc.depot_dir) == []


# -- issue 10.8: private and unknown SOP classes ------------------------------------

SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"  # private: neither pydicom nor pynetdicom knows it
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"


def dcmtk_profile(path: Path, sop_class: str) -> Path:
    """A storescu configuration file whose profile `Private` proposes `sop_class`.

    storescu proposes only the storage classes DCMTK knows unless told so.
    """
    path.write_text(
        "[[TransferSyntaxes]]\n[Uncompressed]\n"
        f"TransferSyntax1 = {ExplicitVRLittleEndian}\nTransferSyntax2 = {ImplicitVRLittleEndian}\n"
        "[[PresentationContexts]]\n[PrivateStorage]\n"
        f"PresentationContext1 = {sop_class}\\Uncompressed\n"
        "[[Profiles]]\n[Private]\nPresentationContexts = PrivateStorage\n"
    )
    return path


def test_issue_10_private_sop_classes_are_stored_like_any_other(
    service: Service, short_tmp: Path
) -> None:
    # Given instances of a private storage class (accept_unknown_sop_classes: default true)
    sent = short_tmp / "csa.dcm"
    uid = df.make_image(sent, SIEMENS_CSA_NON_IMAGE, seed=810, rows=8, columns=8)
    # When pynetdicom proposes it beside a known non-storage class
    ae = AE(ae_title="PRIVSCU")
    ae.add_requested_context(SIEMENS_CSA_NON_IMAGE, [ExplicitVRLittleEndian])
    ae.add_requested_context(PATIENT_ROOT_FIND, [ExplicitVRLittleEndian])
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", service.port, ae_title="STORSCP")
    try:
        assert assoc.is_established
        # Then the private class is accepted with the proposed syntax; the query is not
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        assert accepted == {(SIEMENS_CSA_NON_IMAGE, ExplicitVRLittleEndian)}
        assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [PATIENT_ROOT_FIND]
        assert assoc.send_c_store(sent).Status == 0x0000
    finally:
        assoc.release()
        ae.shutdown()
    # and stored as sent, with its WRITE
    service.wait_stored([uid])
    assert df.dataset_bytes(service.stored_path(uid)) == df.dataset_bytes(sent)
    write = service.wait_event("WRITE", sop_instance_uid=uid)[0]
    assert write["sop_class_uid"] == SIEMENS_CSA_NON_IMAGE

    # And DCMTK's storescu, told to propose the class, stores one too
    other = short_tmp / "csa2.dcm"
    uid2 = df.make_image(other, SIEMENS_CSA_NON_IMAGE, seed=811, rows=8, columns=8)
    profile = dcmtk_profile(short_tmp / "private.cfg", SIEMENS_CSA_NON_IMAGE)
    result = storescu(service.port, [other], "-xf", str(profile), "Private")
    assert result.returncode == 0, result.stderr
    service.wait_stored([uid2])
    assert pydicom.dcmread(service.stored_path(uid2)).SOPClassUID == SIEMENS_CSA_NON_IMAGE


def test_issue_10_private_sop_classes_are_refused_when_switched_off(
    service_factory: type[Service], short_tmp: Path
) -> None:
    svc = service_factory(accept_unknown_sop_classes=False).start()
    sent = short_tmp / "csa.dcm"
    df.make_image(sent, SIEMENS_CSA_NON_IMAGE, seed=812, rows=8, columns=8)
    ae = AE(ae_title="PRIVSCU")
    ae.add_requested_context(SIEMENS_CSA_NON_IMAGE, [ExplicitVRLittleEndian])
    ae.add_requested_context(df.CT, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", svc.port, ae_title="STORSCP")
    try:
        assert assoc.is_established
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [df.CT]
        assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [SIEMENS_CSA_NON_IMAGE]
    finally:
        assoc.release()
        ae.shutdown()
