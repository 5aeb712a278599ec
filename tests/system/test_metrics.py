"""Metrics as a real Prometheus sees them: exact counts, valid exposition, bounded series.

Given a service with the endpoint on and Debian's Prometheus scraping it
every second, when four pynetdicom senders store 200 instances each (one
refused because its dataset's SOP Instance UID is not the request's, one
because it is larger than max_instance_bytes) and one association asks for
the wrong called AE title, then Prometheus's HTTP API returns the exact
counts; after kill -9 of the committer, a receiver and the metrics process
itself they are still the same, with no counter reset; `promtool check
metrics` accepts the exposition.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import string
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from storscp.ae_labels import MAX_OTHER_AE_TITLES
from support import dicomfiles as df
from support.prometheus import PrometheusServer, http_get, promtool
from support.rawscu import IMPLICIT_LE, VERIFICATION, RawAssociation, associate_rq
from support.scu import echoscu
from support.senders import Instance, SenderPool, make_instances
from support.service import Service, poll_for, short_tempdir

SENDERS = 4
PER_SENDER = 200
MAX_INSTANCE_BYTES = 4096  # the senders' 16x16 CT images are about 1 KB
A900_AT = (1, 57)  # (sender, index) of the instance whose dataset UID differs
A700_AT = (2, 123)  # and of the one that is too large


@pytest.fixture(scope="module")
def batches() -> Iterator[list[list[Instance]]]:
    root = short_tempdir("metrics")
    batches = make_instances(root, SENDERS, PER_SENDER, seed=130000)
    # A file whose meta (hence the request) says one UID and whose dataset another.
    sender, index = A900_AT
    mismatched = batches[sender][index]
    other = root / "other.dcm"
    df.make_image(other, df.CT, seed=139999, rows=16, columns=16)
    data = mismatched.path.read_bytes()
    mismatched.path.write_bytes(
        data[: df.dataset_offset(mismatched.path)] + df.dataset_bytes(other)
    )
    # A file larger than max_instance_bytes.
    sender, index = A700_AT
    big = batches[sender][index]
    big_uid = df.make_image(big.path, df.CT, seed=139998, rows=64, columns=64)
    batches[sender][index] = Instance(big.path, big_uid)
    yield batches
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def prometheus_root() -> Iterator[Path]:
    root = short_tempdir("prom")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def start_prometheus(svc: Service, root: Path) -> PrometheusServer:
    return PrometheusServer(root, f"127.0.0.1:{svc.metrics_port}", interval_s=1.0).start()


def exposition(svc: Service) -> str:
    status, text = http_get(f"http://127.0.0.1:{svc.metrics_port}/metrics")
    assert status == 200
    return text


def test_prometheus_counts_exactly_what_was_stored_and_refused(
    service_factory: type[Service], batches: list[list[Instance]], prometheus_root: Path
) -> None:
    svc = service_factory(
        max_instance_bytes=MAX_INSTANCE_BYTES,
        remote_ae=[{"name": "first sender", "ae_title": "CRASHSCU0"}],
    ).start()
    prom = start_prometheus(svc, prometheus_root)
    try:
        # When one association asks for another called AE title, and four senders store
        assert echoscu(svc.port, called_ae="NOT_STORSCP").returncode != 0
        pool = SenderPool(batches, port=svc.current_port).start()
        pool.join(240)
        statuses = list(pool.statuses().values())
        assert (statuses.count(0), statuses.count(0xA900), statuses.count(0xA700)) == (798, 1, 1)
        poll_for(lambda: svc.depot_entries() == [], 60, "the depot to drain")

        # Then Prometheus has the exact counts
        prom.wait_value("sum(storscp_instances_stored_total)", 798)
        check_counts(svc, prom, pool.associations())
        text = exposition(svc)
        result = promtool("check", "metrics", stdin=text)
        assert result.returncode == 0, result.stdout + result.stderr

        # When the committer, a receiver and the metrics process itself are killed
        for program in ("committer", "receiver", "metrics"):
            victim = svc.running_pids(program)[0]
            os.kill(victim, signal.SIGKILL)
            svc.wait_running_again(program, victim, 15)
        svc.wait_event("START", proc="committer", count=2)
        restarted = time.time()
        prom.wait_scraped_after(restarted + 1)
        # Then no counter went backwards: the same counts, and no reset Prometheus could see
        check_counts(svc, prom, pool.associations())
        assert prom.value("sum(resets(storscp_instances_stored_total[5m]))") == 0
        assert prom.value("sum(resets(storscp_stored_bytes_total[5m]))") == 0
        assert prom.value("sum(resets(storscp_associations_total[5m]))") == 0
        exits = prom.by_label('storscp_component_exits_total{expected="false"}', "program")
        assert exits == {"committer": 1, "receiver": 1, "metrics": 1}
        restarts = prom.by_label("storscp_component_restarts_total", "program")
        assert restarts == {"committer": 1, "receiver": 1, "metrics": 1}
    finally:
        prom.stop()


def check_counts(svc: Service, prom: PrometheusServer, associations: int) -> None:
    stored = prom.by_label("storscp_instances_stored_total", "calling_ae")
    assert stored == {"CRASHSCU0": 200, "CRASHSCU1": 199, "CRASHSCU2": 199, "CRASHSCU3": 200}
    on_disk = sum(p.stat().st_size for p in svc.storage_dir.glob(f"*{svc.extension}"))
    assert prom.value("sum(storscp_stored_bytes_total)") == on_disk
    failures = prom.by_label("sum by (status) (storscp_cstore_failures_total)", "status")
    assert failures == {"0xA900": 1, "0xA700": 1}
    outcomes = prom.query("sum by (outcome, reason) (storscp_associations_total)")
    by_outcome = {
        (r["metric"]["outcome"], r["metric"].get("reason", "")): float(r["value"][1])
        for r in outcomes
    }
    assert by_outcome == {
        ("rejected", "called_ae_title_not_recognised"): 1,
        ("accepted", ""): associations,
        ("released", ""): associations,
    }
    assert prom.value("storscp_associations_open") == 0
    assert prom.value("sum(storscp_cstore_receive_seconds_count)") == 798
    assert prom.value("sum(storscp_success_to_visible_seconds_count)") == 798
    assert prom.value("storscp_instances_replaced_total") == 0
    assert prom.value("storscp_depot_ready_files") == 0
    assert prom.value("min(storscp_healthy)") == 1


# -- bounded label values -------------------------------------------------------------

# Any printable ASCII but the backslash (DICOM forbids it in AE titles; pynetdicom too).
RANDOM_AE_CHARS = string.ascii_uppercase + string.digits + " _-.!\"'="


def random_titles(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    titles = set()
    while len(titles) < count:
        title = "".join(rng.choice(RANDOM_AE_CHARS) for _ in range(rng.randint(1, 16))).strip()
        if title:
            titles.add(title)
    return sorted(titles)


def associate_and_release(port: int, titles: list[str]) -> None:
    """One association per title: A-ASSOCIATE-RQ, A-RELEASE-RQ, nothing else."""
    for title in titles:
        with RawAssociation(port) as raw:
            raw.send(associate_rq(title, "STORSCP", [(VERIFICATION, [IMPLICIT_LE])]))
            pdu_type, _ = raw.recv_pdu()
            assert pdu_type == 0x02, f"{title!r}: PDU type {pdu_type:#x}"
            raw.send(struct.pack(">BxL", 0x05, 4) + b"\x00" * 4)
            assert raw.recv_pdu()[0] == 0x06


def association_series(svc: Service) -> dict[tuple[str, str, str], float]:
    """(calling_ae, outcome, reason) -> value, parsed by prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(exposition(svc)):
        if family.name == "storscp_associations":
            for sample in family.samples:
                labels = sample.labels
                out[(labels["calling_ae"], labels["outcome"], labels["reason"])] = sample.value
    return out


def series_after_random_titles(
    svc: Service, count: int, clients: int = 4
) -> dict[tuple[str, str, str], float]:
    """Run `count` associations with random calling AE titles; the association series after."""
    titles = random_titles(count, seed=count)
    errors: list[str] = []

    def client(share: list[str]) -> None:
        try:
            associate_and_release(svc.port, share)
        except Exception as exc:  # reported below, with the others'
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(titles[i::clients],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(1200)
    assert not errors, errors
    series: dict[tuple[str, str, str], float] = {}

    def all_released() -> bool:
        series.clear()
        series.update(association_series(svc))
        return sum(v for k, v in series.items() if k[1] == "released") == count

    poll_for(all_released, 60, f"{count} released associations counted", interval_s=0.5)
    return series


def test_random_calling_ae_titles_leave_the_series_bounded(service_factory: type[Service]) -> None:
    # Given a service accepting any calling AE title, with one configured
    svc = service_factory(remote_ae=[{"name": "CT", "ae_title": "CT_ROOM3"}]).start()
    # When 300 associations come with 300 different calling AE titles
    series = series_after_random_titles(svc, 300)
    # Then only the first 20 of them have a label value of their own; the rest are `other`
    values = {calling_ae for calling_ae, _, _ in series}
    assert len(values) == MAX_OTHER_AE_TITLES + 1 and "other" in values, sorted(values)
    assert series[("other", "released", "")] == 300 - MAX_OTHER_AE_TITLES
    assert len(series) == 2 * len(values)  # accepted and released, per value


@pytest.mark.slow
def test_ten_thousand_random_calling_ae_titles_leave_the_series_bounded(
    service_factory: type[Service],
) -> None:
    svc = service_factory().start()
    series = series_after_random_titles(svc, 10_000)
    assert len({calling_ae for calling_ae, _, _ in series}) == MAX_OTHER_AE_TITLES + 1
    assert len(series) == 2 * (MAX_OTHER_AE_TITLES + 1)
