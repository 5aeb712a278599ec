"""TLS: DCMTK storescu +tls against the [tls] port, with and without client certificates."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from support import dicomfiles as df
from support import rawscu
from support.prometheus import http_get
from support.scu import DCMTK_ENV
from support.service import STORSCP, Service, poll_for
from support.users import interpreter_for_others, temporary_user, uid_of


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
    # `storscp echo` speaks TLS with the [tls] table's options, and checks the chain.
    echo = [STORSCP, "echo", "127.0.0.1", str(svc.tls_port), "--aec", "STORSCP", "--tls"]
    trusted = subprocess.run(
        [*echo, "--ca-file", str(pki / "ca.pem")], capture_output=True, text=True, timeout=60
    )
    assert (trusted.returncode, trusted.stdout) == (0, "I: Received Echo Response (Success)\n")
    untrusted = subprocess.run(echo, capture_output=True, text=True, timeout=60)
    assert untrusted.returncode == 1 and len(untrusted.stderr.splitlines()) == 1
    assert untrusted.stderr.startswith("F: "), untrusted.stderr


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


def test_issue_10_a_key_only_root_can_read_stops_the_receiver_alone(
    service_factory: type[Service], pki: Path, short_tmp: Path
) -> None:
    with temporary_user() as account:
        interpreter = interpreter_for_others(account)
        # Given a service whose components run as `user`, with a key that account can read
        keys = short_tmp / "keys"
        keys.mkdir()
        for name in ("server.pem", "server.key"):
            shutil.copy(pki / name, keys / name)
        key = keys / "server.key"
        os.chown(key, uid_of(account), -1)
        key.chmod(0o600)
        svc = service_factory(
            user=account,
            cli=interpreter.storscp,
            env={**os.environ, **interpreter.env},
            tls={"port": 0, "certificate": str(keys / "server.pem"), "private_key": str(key)},
            receivers=1,
        )
        for path in (short_tmp, keys, svc.root):
            path.chmod(0o755)
        svc.storage_dir.mkdir()
        os.chown(svc.storage_dir, uid_of(account), -1)
        try:
            check_only_the_receiver_needs_the_key(svc, account, key)
        finally:
            svc.stop()  # before the account goes away


def check_only_the_receiver_needs_the_key(svc: Service, account: str, key: Path) -> None:
    svc.start_daemon()
    old = {e["pid"] for e in svc.events("START")}

    # When the key becomes root's alone and every component restarts
    os.chown(key, 0, -1)
    svc.supervisorctl("restart", "all")

    # Then the logger and the committer start as before: they never read the key
    def started_anew(proc: str) -> bool:
        return any(e["pid"] not in old for e in svc.events("START", proc=proc))

    for proc in ("listener", "logger", "committer"):
        poll_for(lambda proc=proc: started_anew(proc), 60, f"{proc} START again")
    # and the receiver refuses, saying which file it cannot read, as whom
    reason = f"[tls] private_key {key} cannot be read by uid {uid_of(account)}: Permission denied"
    assert svc.wait_event("ERROR", 60, what="receiver cannot start")[-1]["reason"] == reason
    poll_for(
        lambda: all(p.state == "FATAL" for p in svc.program_processes("receiver")),
        60,
        "the receiver FATAL (it fails within startsecs, so it is not restarted for ever)",
    )
    assert not started_anew("receiver")
    status = svc.command("status")
    assert status.stdout.splitlines()[0] == "service degraded", status.stdout
    # The program lines of the receivers (not the health line, which names it too)
    receiver_lines = [
        line for line in status.stdout.splitlines() if line.split()[:1] == ["receiver"]
    ]
    assert receiver_lines and all(f"exit status 78: {reason}" in line for line in receiver_lines)

    # And a fresh start is refused before anything runs, naming key, file and account
    assert svc.command("stop").returncode == 0
    result = svc.command("start")
    assert "Traceback" not in result.stderr
    assert (result.returncode, result.stderr.strip()) == (
        78,
        f"start failed: invalid configuration: {svc.config_path}: [tls] key 'private_key':"
        f" {key} is not readable by user {account} (uid {uid_of(account)})",
    )
    assert not svc.is_up()


# -- issue 10.6: a stop aborts TLS associations from their own threads ----------------


def tls_association(port: int, pki: Path, rcvbuf: int | None = None) -> rawscu.RawAssociation:
    """A raw association over TLS (Verification), its bytes the test's to choose."""
    raw = socket.socket()
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(30)
    raw.connect(("127.0.0.1", port))
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    assoc = rawscu.RawAssociation.__new__(rawscu.RawAssociation)
    assoc.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    assoc.contexts, assoc._message_id = {}, 0
    return assoc.associate()


def stop_and_time(svc: Service) -> float:
    """SIGTERM to `storscp run` (supervisord); seconds until it has exited."""
    assert svc.proc is not None
    started = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    svc.proc.wait(120)
    return time.monotonic() - started


def assert_receiver_aborted_by_itself(svc: Service) -> None:
    """The receiver drained, aborted the association and exited, never SIGKILLed."""
    event = svc.wait_event("ASSOCIATION", state="aborted", calling_ae="RAWSCU")[0]
    assert event["reason"] == "service stopping: drain timeout reached"
    assert event["tls"] == "true"
    error = svc.wait_event("ERROR", what="associations aborted at stop")[0]
    assert error["count"] == "1"
    supervisord_log = (svc.run_dir / "supervisord.log").read_text()
    assert "stopped: receiver (exit status 0)" in supervisord_log, supervisord_log[-2000:]


def test_issue_10_a_stop_sends_a_tls_association_a_readable_a_abort(
    service_factory: type[Service], pki: Path
) -> None:
    # Given a TLS association in flight, idle between two requests
    svc = service_factory(tls=tls_table(pki), drain_timeout_s=1, receivers=1).start()
    with tls_association(svc.tls_port, pki) as assoc:
        assert assoc.c_echo() == 0x0000
        # When the service stops and the drain timeout passes
        stop_and_time(svc)
        # Then the A-ABORT arrives intact over TLS, and the connection closes
        pdu_type, body = assoc.recv_pdu()
        assert (pdu_type, len(body)) == (0x07, 4)  # A-ABORT
        assert assoc.closed_by_peer()
    assert_receiver_aborted_by_itself(svc)


def test_issue_10_a_stop_aborts_a_tls_peer_that_does_not_read(
    service_factory: type[Service], pki: Path
) -> None:
    # Given a TLS peer that sends C-ECHOs without reading a single answer, until
    # the receiver's thread is stuck sending it answers (and stops reading)
    svc = service_factory(tls=tls_table(pki), drain_timeout_s=1, receivers=1).start()
    with tls_association(svc.tls_port, pki, rcvbuf=4096) as assoc:
        assoc.sock.settimeout(2)
        echoes = rawscu.p_data(1, 0x03, rawscu.echo_rq(7)) * 64
        with pytest.raises(TimeoutError):
            for _ in range(100_000):
                assoc.sock.sendall(echoes)
        # When the service stops
        seconds = stop_and_time(svc)
    # Then the receiver cuts it off and exits by itself, well within stopwaitsecs
    assert_receiver_aborted_by_itself(svc)
    assert seconds < 1 + 10, seconds
