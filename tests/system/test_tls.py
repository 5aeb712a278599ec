"""TLS: DCMTK storescu +tls against the [tls] port, with and without client certificates."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from support import dicomfiles as df
from support.prometheus import http_get
from support.scu import DCMTK_ENV
from support.service import Service


def tls_storescu(
    port: int,
    pki: Path,
    files: list[Path],
    client_cert: bool = True,
) -> subprocess.CompletedProcess[str]:
    identity = (
        ["+tls", str(pki / "client.key"), str(pki / "client.pem")] if client_cert else ["+tla"]
    )
    return subprocess.run(
        [
            "storescu",
            *identity,
            "+cf",
            str(pki / "ca.pem"),
            "-aec",
            "STORSCP",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=DCMTK_ENV,
    )


def tls_table(pki: Path, **extra: object) -> dict[str, object]:
    return {
        "port": 0,
        "certificate": str(pki / "server.pem"),
        "private_key": str(pki / "server.key"),
        **extra,
    }


def test_storescu_over_tls(service_factory: type[Service], pki: Path, short_tmp: Path) -> None:
    svc = service_factory(tls=tls_table(pki)).start()
    assert svc.tls_port and svc.tls_port != svc.port
    path = short_tmp / "tls.dcm"
    uid = df.make_image(path, df.CT, seed=31)
    result = tls_storescu(svc.tls_port, pki, [path])
    assert result.returncode == 0, result.stderr
    svc.wait_stored([uid])
    assert df.dataset_bytes(svc.stored_path(uid)) == df.dataset_bytes(path)
    accepted = svc.wait_event("ASSOCIATION", state="accepted", tls="true")
    assert accepted[0]["calling_ae"] == "STORESCU"
    # The plain port still serves plain DICOM.
    plain = subprocess.run(
        ["echoscu", "-aec", "STORSCP", "127.0.0.1", str(svc.port)],
        capture_output=True,
        env=DCMTK_ENV,
    )
    assert plain.returncode == 0


def test_client_certificate_required_with_ca_file(
    service_factory: type[Service], pki: Path, short_tmp: Path
) -> None:
    svc = service_factory(tls=tls_table(pki, ca_file=str(pki / "ca.pem"))).start()
    path = short_tmp / "mtls.dcm"
    uid = df.make_image(path, df.CT, seed=32)
    anonymous = tls_storescu(svc.tls_port, pki, [path], client_cert=False)
    assert anonymous.returncode != 0
    svc.wait_event("ERROR", what="TLS handshake failed")
    assert not svc.stored_path(uid).exists()
    # The failed handshake is counted for Prometheus too
    status, text = http_get(f"http://127.0.0.1:{svc.metrics_port}/metrics")
    assert status == 200 and "\nstorscp_tls_handshake_failures_total 1.0\n" in text
    result = tls_storescu(svc.tls_port, pki, [path])
    assert result.returncode == 0, result.stderr
    svc.wait_stored([uid])
    accepted = svc.wait_event("ASSOCIATION", state="accepted", tls="true")
    assert "storscp test client" in (accepted[-1].get("tls_subject") or "")


def test_silent_tls_client_does_not_block_others(
    service_factory: type[Service], pki: Path, short_tmp: Path
) -> None:
    svc = service_factory(tls=tls_table(pki), acse_timeout_s=60).start()
    path = short_tmp / "slow.dcm"
    uid = df.make_image(path, df.CT, seed=33)
    # Given three connections that never start their handshake ...
    silent = [socket.create_connection(("127.0.0.1", svc.tls_port)) for _ in range(3)]
    try:
        started = time.monotonic()
        # ... a real client is served at once.
        result = tls_storescu(svc.tls_port, pki, [path])
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 15
        svc.wait_stored([uid])
    finally:
        for sock in silent:
            sock.close()


def test_min_version_13_refuses_a_tls12_client(service_factory: type[Service], pki: Path) -> None:
    svc = service_factory(tls=tls_table(pki, min_version="1.3")).start()
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", svc.tls_port)) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1")
    context13 = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with (
        socket.create_connection(("127.0.0.1", svc.tls_port)) as raw,
        context13.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.3"
