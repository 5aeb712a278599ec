"""Storage Commitment end to end: a real service, pynetdicom playing the modality.

Given a service that lets the AE MODALITY ask for Storage Commitment,
When the modality stores instances and asks for them (and for some it never
sent, or sent with another SOP Class),
Then the report lists every stored one as committed and names each failure
with its reason, on a new association to the modality's configured port, or
on the association that asked while it is held open; a request survives a
modality that is down and a kill -9 of the process that owns it; refusals
have a standard status and an ERROR line.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from support import dicomfiles as df
from support.modality import Modality, ReceivedReport, action_information, free_port
from support.scu import echoscu, pynetdicom_store
from support.service import Service, poll_for, running_service, short_tempdir

NO_SUCH_OBJECT = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
DUPLICATE_TRANSACTION = 0x0131
PROCESSING_FAILURE = 0x0110


def remote(port: int, ae_title: str = "MODALITY") -> dict[str, object]:
    return {
        "name": f"{ae_title} test modality",
        "ae_title": ae_title,
        "host": "127.0.0.1",
        "port": port,
        "storage_commitment": True,
    }


# path -> SOP Instance UID of every image the tests made
UIDS: dict[Path, str] = {}


class Corpus:
    """Small CT images, each made once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seed = 0

    def images(self, count: int, sop_class: str = df.CT) -> list[tuple[Path, str, str]]:
        out = []
        for _ in range(count):
            self.seed += 1
            path = self.root / f"i{self.seed}.dcm"
            UIDS[path] = df.make_image(path, sop_class, seed=self.seed, rows=8, columns=8)
            out.append((path, sop_class, ExplicitVRLittleEndian))
        return out


def refs_of(files: list[tuple[Path, str, str]]) -> list[tuple[str, str]]:
    return [(cls, UIDS[path]) for path, cls, _ in files]


@pytest.fixture(scope="module")
def corpus() -> Iterator[Corpus]:
    root = short_tempdir("sccorp")
    yield Corpus(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def modality() -> Iterator[Modality]:
    """A modality that accepts reports in Implicit VR Little Endian only, as some do."""
    made = Modality(syntaxes=[ImplicitVRLittleEndian])
    made.listen()
    yield made
    made.stop_listening()


@pytest.fixture(scope="module")
def service(modality: Modality) -> Iterator[Service]:
    with running_service(
        receivers=1,
        commitment_retry_s=0.2,
        commitment_retry_max_s=1.0,
        remote_ae=[remote(modality.port)],
    ) as svc:
        yield svc


def tx(name: str) -> str:
    return df.uid_for(f"transaction-{name}-{os.getpid()}")


def test_report_on_a_new_association_lists_successes_and_each_failure(
    service: Service, modality: Modality, corpus: Corpus
) -> None:
    # Given: 50 instances stored, and one more stored as CT ...
    stored = corpus.images(51)
    assert pynetdicom_store(service.port, stored, calling_ae="MODALITY") == [0] * 51
    service.wait_stored(uid for _, uid in refs_of(stored))
    refs = refs_of(stored[:50])
    conflict = (df.MR, refs_of(stored[50:])[0][1])  # ... asked for as MR
    missing = [(df.CT, df.uid_for(f"never-sent-{i}")) for i in range(2)]
    transaction = tx("new")

    # When: the modality asks and releases at once.
    status, _ = modality.request(service.port, transaction, [*refs, *missing, conflict])

    # Then: Success now, the report later on a new association, in Implicit VR.
    assert status == 0x0000
    report = modality.wait_report(transaction)
    assert not report.same_association and report.transfer_syntax == ImplicitVRLittleEndian
    assert report.event_type == 2
    assert sorted(report.committed) == sorted(refs)
    assert sorted(report.failed) == sorted(
        [(c, u, NO_SUCH_OBJECT) for c, u in missing] + [(*conflict, CLASS_INSTANCE_CONFLICT)]
    )
    requested = service.wait_event(
        "ASSOCIATION", state="commitment_requested", transaction_uid=transaction
    )
    assert requested[0]["references"] == "53" and requested[0]["calling_ae"] == "MODALITY"
    reported = service.wait_event(
        "ASSOCIATION", state="commitment_reported", transaction_uid=transaction
    )
    assert (reported[0]["via"], reported[0]["committed"], reported[0]["failed"]) == (
        "new",
        "50",
        "3",
    )
    assert modality.reports_for(transaction) == [report]


def test_report_on_the_association_held_open(
    service: Service, modality: Modality, corpus: Corpus
) -> None:
    stored = corpus.images(10)
    assert pynetdicom_store(service.port, stored, calling_ae="MODALITY") == [0] * 10
    transaction = tx("same")
    status, _ = modality.request(service.port, transaction, refs_of(stored), hold_s=30)
    assert status == 0x0000
    report = modality.wait_report(transaction)
    assert report.same_association and report.event_type == 1
    assert sorted(report.committed) == sorted(refs_of(stored)) and report.failed == []
    reported = service.wait_event(
        "ASSOCIATION", state="commitment_reported", transaction_uid=transaction
    )
    assert reported[0]["via"] == "same"
    assert len(modality.reports_for(transaction)) == 1


def test_an_instance_acknowledged_before_the_request_is_committed_not_missing(
    service: Service, modality: Modality, corpus: Corpus
) -> None:
    # Given: the committer is stopped, so the acknowledged instance waits in the depot.
    assert "stopped" in service.supervisorctl("stop", "committer").stdout
    try:
        stored = corpus.images(1)
        assert pynetdicom_store(service.port, stored, calling_ae="MODALITY") == [0]
        assert service.depot_entries()
        transaction = tx("depot")
        status, _ = modality.request(service.port, transaction, refs_of(stored))
        assert status == 0x0000
    finally:
        # When: the committer comes back within commitment_wait_s.
        assert "started" in service.supervisorctl("start", "committer").stdout
    # Then: reported as committed, not 0x0112.
    report = modality.wait_report(transaction)
    assert report.committed == refs_of(stored) and report.failed == []


def test_a_transaction_uid_in_use_fails_with_0131(
    service: Service, modality: Modality, corpus: Corpus
) -> None:
    stored = corpus.images(2)
    assert pynetdicom_store(service.port, stored, calling_ae="MODALITY") == [0, 0]
    transaction = tx("dup")
    refs = refs_of(stored)
    assert modality.request(service.port, transaction, refs)[0] == 0x0000
    modality.wait_report(transaction)
    assert modality.request(service.port, transaction, refs)[0] == 0x0000
    poll_for(lambda: len(modality.reports_for(transaction)) == 2, 30, "the duplicate's report")
    second = modality.reports_for(transaction)[1]
    assert second.event_type == 2 and second.committed == []
    assert second.failed == [(c, u, DUPLICATE_TRANSACTION) for c, u in refs]
    dup = service.wait_event(
        "ASSOCIATION", state="commitment_requested", transaction_uid=transaction, duplicate="true"
    )
    assert dup


def bad_dataset(kind: str) -> Dataset:
    refs = [(df.CT, "1.2.3.4")]
    if kind == "no transaction":
        ds = action_information(tx("x"), refs)
        del ds.TransactionUID
    elif kind == "empty sequence":
        ds = action_information(tx("empty"), [])
    elif kind == "invalid uid":
        ds = action_information(tx("inv"), [(df.CT, "1.2.03.4")])
    else:
        ds = action_information(tx("big"), [(df.CT, f"1.2.3.{i}") for i in range(1, 5001)])
    return ds


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("no transaction", 0x0115),
        ("empty sequence", 0x0115),
        ("invalid uid", 0x0115),
        ("5000 references", 0x0213),
    ],
)
def test_malformed_requests_are_refused_and_logged(
    service: Service, modality: Modality, kind: str, status: int
) -> None:
    before = len(service.events("ERROR", what="commitment request refused"))
    got, _ = modality.request(service.port, "", [], dataset=bad_dataset(kind))
    assert got == status
    errors = service.wait_event("ERROR", count=before + 1, what="commitment request refused")
    assert errors[-1]["status"] == f"0x{status:04X}" and errors[-1]["calling_ae"] == "MODALITY"
    # The service keeps serving.
    assert echoscu(service.port).returncode == 0


@pytest.mark.parametrize(
    ("ae_title", "action_type", "instance", "status"),
    [
        ("INTRUDER", 1, "1.2.840.10008.1.20.1.1", 0x0124),
        ("MODALITY", 2, "1.2.840.10008.1.20.1.1", 0x0123),
        ("MODALITY", 1, "1.2.840.10008.1.20.1.2", 0x0112),
    ],
)
def test_who_and_what_may_not_ask_is_refused(
    service: Service, ae_title: str, action_type: int, instance: str, status: int
) -> None:
    asker = Modality(ae_title=ae_title)
    before = len(service.events("ERROR", what="commitment request refused"))
    transaction = tx(f"refused-{ae_title}-{action_type}")
    got, _ = asker.request(
        service.port,
        transaction,
        [(df.CT, "1.2.3.4")],
        action_type=action_type,
        instance_uid=instance,
    )
    assert got == status
    error = service.wait_event("ERROR", count=before + 1, what="commitment request refused")[-1]
    assert error["status"] == f"0x{status:04X}" and error["calling_ae"] == ae_title
    assert not service.events(
        "ASSOCIATION", state="commitment_requested", transaction_uid=transaction
    )


def test_an_n_action_on_a_storage_context_is_refused_and_the_association_goes_on(
    service: Service, corpus: Corpus
) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(df.CT, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", service.port, ae_title="STORSCP")
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(
            action_information(tx("ctx"), [(df.CT, "1.2.3.4")]), 1, df.CT, "1.2.3.4"
        )
        assert int(status.Status) == 0x0211
        # The association is still there: a C-STORE on it succeeds.
        path = corpus.images(1)[0][0]
        assert int(assoc.send_c_store(path).Status) == 0x0000
    finally:
        assoc.release()


# -- faults: a modality that is down, a process killed -------------------------


def test_report_survives_a_modality_down_and_a_kill_9_of_commitment(
    service_factory: type[Service], corpus: Corpus
) -> None:
    # Given: the modality's port is known but nothing listens there yet.
    modality = Modality()
    port = free_port()
    svc = service_factory(
        receivers=1,
        commitment_retry_s=0.2,
        commitment_retry_max_s=1.0,
        remote_ae=[remote(port)],
    ).start()
    stored = corpus.images(3)
    assert pynetdicom_store(svc.port, stored, calling_ae="MODALITY") == [0] * 3
    transaction = tx("down")
    assert modality.request(svc.port, transaction, refs_of(stored))[0] == 0x0000
    svc.wait_event("ASSOCIATION", state="commitment_report_failed", transaction_uid=transaction)

    # When: the process owning delivery is killed, and the modality comes up meanwhile.
    victim = svc.pid_of("commitment")
    os.kill(victim, signal.SIGKILL)
    svc.wait_running_again("commitment", victim, 15)
    modality.listen(port)
    try:
        # Then: the report arrives after the restart, on the retry schedule.
        report = modality.wait_report(transaction, timeout_s=30)
        assert sorted(report.committed) == sorted(refs_of(stored)) and report.event_type == 1
        reported = svc.wait_event(
            "ASSOCIATION", state="commitment_reported", transaction_uid=transaction
        )
        assert int(reported[0]["attempts"]) >= 1
    finally:
        modality.stop_listening()


def test_kill_9_of_the_receiver_holding_the_association_falls_back_to_a_new_one(
    service_factory: type[Service], corpus: Corpus
) -> None:
    modality = Modality()
    port = modality.listen()
    svc = service_factory(receivers=1, remote_ae=[remote(port)]).start()
    try:
        # Given: the committer is stopped, so the check waits and the report is late.
        assert "stopped" in svc.supervisorctl("stop", "committer").stdout
        stored = corpus.images(2)
        assert pynetdicom_store(svc.port, stored, calling_ae="MODALITY") == [0, 0]
        transaction = tx("rkill")
        result: list[int | None] = []
        holder = threading.Thread(
            target=lambda: result.append(
                modality.request(svc.port, transaction, refs_of(stored), hold_s=60)[0]
            )
        )
        holder.start()
        svc.wait_event("ASSOCIATION", state="commitment_requested", transaction_uid=transaction)

        # When: the receiver holding the association dies, then the committer comes back.
        victim = svc.pid_of("receiver")
        os.kill(victim, signal.SIGKILL)
        holder.join(60)
        assert "started" in svc.supervisorctl("start", "committer").stdout

        # Then: the report comes on a new association, all committed.
        report: ReceivedReport = modality.wait_report(transaction, timeout_s=30)
        assert result == [0x0000]
        assert not report.same_association and report.event_type == 1
        assert sorted(report.committed) == sorted(refs_of(stored))
        svc.wait_running_again("receiver", victim, 15)
        # The killed receiver's spare parts are the committer's sweep's to remove
        poll_for(lambda: svc.depot_entries() == [], 60, "the dead receiver's spares swept")
    finally:
        modality.stop_listening()


def test_a_report_never_delivered_is_an_error_naming_the_transaction(
    service_factory: type[Service], corpus: Corpus
) -> None:
    svc = service_factory(
        receivers=1,
        commitment_retry_s=0.2,
        commitment_retry_max_s=0.5,
        commitment_deadline_s=2,
        remote_ae=[remote(free_port())],
    ).start()
    transaction = tx("never")
    assert Modality().request(svc.port, transaction, [(df.CT, "1.2.3.4")])[0] == 0x0000
    error = svc.wait_event(
        "ERROR", 30, what="commitment report not delivered", transaction_uid=transaction
    )
    assert int(error[0]["attempts"]) >= 2 and error[0]["calling_ae"] == "MODALITY"
    assert not list((svc.storage_dir / ".storscp" / "commitment").glob("*.request"))
