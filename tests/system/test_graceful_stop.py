"""Graceful stop: associations in flight finish, what is ready is committed, logs drain.

The receiver is a black box here: only what an SCU sees, what lands in the
storage directory and what the log says.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.presentation import build_context

from support import dicomfiles as df
from support.senders import Instance, SenderPool, make_instances
from support.service import Service, poll_for, short_tempdir

DRAIN_S = 30  # long enough for the whole batch on a slow machine


@pytest.fixture(scope="module")
def batch() -> Iterator[list[Instance]]:
    root = short_tempdir("drain")
    yield make_instances(root, 1, 150, seed=81000)[0]
    shutil.rmtree(root, ignore_errors=True)


def shutdown_began(svc: Service) -> bool:
    log = (svc.run_dir / "supervisord.log").read_text()
    return any("waiting for" in line and "receiver" in line for line in log.splitlines())


def test_association_in_flight_completes_during_stop(
    service_factory: type[Service], batch: list[Instance]
) -> None:
    svc = service_factory(drain_timeout_s=DRAIN_S).start_daemon()
    # A sender that must not need to reconnect: one association for all of them.
    pool = SenderPool([batch], port=svc.current_port, reconnect_timeout_s=2).start()
    poll_for(lambda: pool.acknowledged_count() >= 20, 60, "20 acknowledged", interval_s=0.01)

    # When: the service is told to stop mid-association.
    results: list[subprocess.CompletedProcess[str]] = []
    stopper = threading.Thread(target=lambda: results.append(svc.command("stop", timeout_s=180)))
    stopper.start()
    # (While shutting down, supervisord answers no status; its log says it is waiting.)
    poll_for(lambda: shutdown_began(svc), 30, "supervisord to begin stopping the receiver")
    in_flight = len(batch) - pool.acknowledged_count()
    print(f"instances still to send when the stop began: {in_flight}")
    stopper.join(180)

    # Then: the association finished normally and every instance was acknowledged.
    assert in_flight > 0, "the association ended before the stop began; use a bigger batch"
    [stop] = results
    assert (stop.returncode, stop.stdout) == (0, "stop request issued\n"), stop.stderr
    pool.join(30)
    assert pool.associations() == 1
    assert pool.acknowledged() == {inst.uid for inst in batch}
    for inst in batch:
        stored = svc.stored_path(inst.uid)
        assert df.dataset_bytes(stored) == df.dataset_bytes(inst.path)
    # The committer committed what was ready before it went; nothing partial anywhere.
    assert svc.depot_entries() == []
    assert sorted(p.name for p in svc.storage_dir.iterdir()) == sorted(
        [svc.stored_path(inst.uid).name for inst in batch] + ["depot", ".storscp"]
    )
    # The logger stopped last and wrote what the others said on their way out.
    released = svc.events("ASSOCIATION", state="released", calling_ae="CRASHSCU0")
    assert released and released[-1]["instances"] == str(len(batch))
    assert len(svc.events("WRITE")) == len(batch)


def test_drain_timeout_aborts_what_remains(service_factory: type[Service], short_tmp: Path) -> None:
    svc = service_factory(drain_timeout_s=2).start_daemon()
    path = short_tmp / "idle.dcm"
    uid = df.make_image(path, df.CT, seed=8200, rows=16, columns=16)
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="IDLESCU")
    ae.requested_contexts = [build_context(df.CT, [ExplicitVRLittleEndian])]
    ae.network_timeout = 120
    assoc = ae.associate("127.0.0.1", svc.port, ae_title="STORSCP")
    try:
        assert assoc.is_established
        assert assoc.send_c_store(path).Status == 0
        # Given an association that stays open and idle, when the service stops:
        started = time.monotonic()
        stop = svc.command("stop", timeout_s=120)
        took = time.monotonic() - started
        assert (stop.returncode, stop.stdout) == (0, "stop request issued\n"), stop.stderr
        # Then it was aborted after the drain timeout, well before stopwaitsecs (2 + 10).
        poll_for(lambda: not assoc.is_established, 10, "the association to end")
        assert assoc.is_aborted
        assert took < 12, f"stop took {took:.1f}s"
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()
    aborted = svc.events("ERROR", proc="receiver", what="associations aborted at stop")
    assert aborted and aborted[-1]["count"] == "1"
    assert df.dataset_bytes(svc.stored_path(uid)) == df.dataset_bytes(path)
    assert svc.depot_entries() == []


def test_sigterm_to_storscp_run_drains_too(
    service_factory: type[Service], batch: list[Instance]
) -> None:
    svc = service_factory(drain_timeout_s=DRAIN_S).start()
    pool = SenderPool([batch[:60]], port=svc.current_port, reconnect_timeout_s=2).start()
    poll_for(lambda: pool.acknowledged_count() >= 10, 60, "10 acknowledged", interval_s=0.01)
    stopper = threading.Thread(target=svc.stop)  # SIGTERM to the foreground supervisord
    stopper.start()
    stopper.join(180)
    assert not stopper.is_alive()
    pool.join(30)
    assert pool.acknowledged() == {inst.uid for inst in batch[:60]}
    assert all(svc.stored_path(inst.uid).exists() for inst in batch[:60])
    assert svc.depot_entries() == []
