"""Several gateways behind a real HAProxy, sharing one storage, seeing the real modality.

Given two storscp nodes (`node` a and b: own run and log dirs, one storage
dir, `proxy_protocol` with HAProxy on 127.0.0.1 trusted) behind Debian's
HAProxy (`mode tcp`, `balance leastconn`, `send-proxy-v2`, the association
health check of deploy/haproxy.cfg), and senders bound to 127.0.0.2-5:
every instance is stored once, both nodes serve, each node's log names the
modality's address (`peer=`) and the balancer's (`proxy=`), `[[remote_ae]]
host` holds through the balancer, hostile PROXY headers are refused
without harm, and a node killed with -9 mid-load loses nothing that was
acknowledged: `storscp recover --node` hands its depot to a live node.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import dicomfiles as df
from support.haproxy import Backend, HAProxy
from support.rawscu import (
    EXPLICIT_LE,
    VERIFICATION,
    RawAssociation,
    Rejected,
    associate_rq,
    minimal_dataset,
)
from support.senders import Instance, SenderPool, make_instances
from support.service import Service, poll_for, short_tempdir

SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
PER_SENDER = 200
BALANCER = "127.0.0.1"
UNTRUSTED = "127.0.0.9"
CT = df.CT.encode()
REMOTE_AES = [
    *({"name": f"sender {i}", "ae_title": f"CRASHSCU{i}"} for i in range(len(SOURCES))),
    {"name": "CT room 3", "ae_title": "CT_ROOM3", "host": "127.0.0.3"},
    {"name": "balancer health check", "ae_title": "HAPROXY-CHECK", "host": BALANCER},
]


@dataclass
class Cluster:
    root: Path
    nodes: dict[str, Service]
    haproxy: HAProxy

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def stop(self) -> None:
        """Stop everything, even when one node's checks fail (then say which)."""
        self.haproxy.stop()
        errors = []
        for name, node in self.nodes.items():
            try:
                node.stop()
            except AssertionError as exc:
                errors.append(f"node {name}: {exc}")
        assert not errors, errors


def start_cluster(root: Path) -> Cluster:
    storage = root / "storage"
    storage.mkdir()
    nodes: dict[str, Service] = {}
    haproxy = HAProxy(root, [])
    try:
        for name in ("a", "b"):
            (root / name).mkdir()
            node = Service(
                root / name,
                storage_dir=storage,
                node=name,
                receivers=1,
                proxy_protocol=True,
                trusted_proxies=[BALANCER],
                accept_any=False,
                remote_ae=REMOTE_AES,
                acse_timeout_s=2,
            )
            nodes[name] = node
            node.launch()
        for node in nodes.values():
            node.wait_started(set())
        haproxy.backends = [Backend(n, "127.0.0.1", s.port) for n, s in nodes.items()]
        haproxy.start()
        for name in nodes:
            haproxy.wait_status(name, "UP")
    except BaseException:
        Cluster(root, nodes, haproxy).stop()
        raise
    return Cluster(root, nodes, haproxy)


@pytest.fixture(scope="module")
def batches() -> Iterator[list[list[Instance]]]:
    root = short_tempdir("sob")
    yield make_instances(root, len(SOURCES), PER_SENDER, seed=140000)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = short_tempdir("so")
    made = start_cluster(root)
    try:
        yield made
    finally:
        made.stop()
        shutil.rmtree(root, ignore_errors=True)


def accepted_peers(node: Service) -> list[tuple[str, str, str]]:
    """(calling AE, peer host, proxy host) of each accepted association."""
    return [
        (e["calling_ae"], e["peer"].rsplit(":", 1)[0], (e.get("proxy") or "").rsplit(":", 1)[0])
        for e in node.events("ASSOCIATION", state="accepted")
    ]


def check_stored(cluster: Cluster, pool: SenderPool) -> tuple[int, int, int]:
    """Acknowledged ⊆ stored, byte for byte; returns (sent, acknowledged, found)."""
    acknowledged = pool.acknowledged()
    for node in cluster.nodes.values():
        poll_for(lambda n=node: n.depot_entries() == [], 60, f"depot of {node.keys['node']}")
    found = {uid for uid in pool.instances if (cluster.storage / f"{uid}.dcm").exists()}
    lost = acknowledged - found
    assert not lost, f"{len(lost)} acknowledged instances missing, e.g. {sorted(lost)[:3]}"
    for uid in found:
        stored = df.dataset_bytes(cluster.storage / f"{uid}.dcm")
        assert stored == df.dataset_bytes(pool.instances[uid].path), f"{uid}: bytes differ"
    return pool.sent(), len(acknowledged), len(found)


def test_four_senders_through_haproxy_reach_both_nodes_as_themselves(
    cluster: Cluster, batches: list[list[Instance]]
) -> None:
    pool = SenderPool(batches, port=lambda: cluster.haproxy.port, sources=SOURCES).start()
    pool.join(240)
    sent, acknowledged, found = check_stored(cluster, pool)
    assert sent == acknowledged == found == len(SOURCES) * PER_SENDER

    # Stored once: one WRITE per instance over both nodes' committers.
    writes = Counter(
        e["sop_instance_uid"] for node in cluster.nodes.values() for e in node.events("WRITE")
    )
    assert set(writes) >= set(pool.instances)
    assert max(writes[uid] for uid in pool.instances) == 1
    # Both nodes served; each saw the modalities' own addresses, via the balancer.
    seen: set[str] = set()
    for name, node in cluster.nodes.items():
        peers = [p for p in accepted_peers(node) if p[0].startswith("CRASHSCU")]
        assert peers, f"node {name} served no sender"
        assert {proxy for _, _, proxy in peers} == {BALANCER}
        seen |= {host for _, host, _ in peers}
        # Health checks (v2 LOCAL) are served quietly: no ASSOCIATION lines.
        assert not node.events("ASSOCIATION", calling_ae="HAPROXY-CHECK"), name
    assert seen == set(SOURCES)
    assert all(cluster.haproxy.status(n) == "UP" for n in cluster.nodes)


def test_remote_ae_host_holds_through_the_balancer(cluster: Cluster) -> None:
    with RawAssociation(cluster.haproxy.port, source="127.0.0.3") as allowed:
        assert allowed.associate(calling_ae="CT_ROOM3").c_echo() == 0
        allowed.release()
    with (
        RawAssociation(cluster.haproxy.port, source="127.0.0.4") as elsewhere,
        pytest.raises(Rejected) as info,
    ):
        elsewhere.associate(calling_ae="CT_ROOM3")
    assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 3)
    reasons = poll_for(
        lambda: [
            e["reason"]
            for node in cluster.nodes.values()
            for e in node.events("ASSOCIATION", state="rejected", calling_ae="CT_ROOM3")
        ],
        15,
        "the rejection in a node's log",
    )
    assert reasons == ["calling AE title not allowed from 127.0.0.4"]


def v2_header(source: str, port: int) -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1")
    return (
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11"
        + struct.pack("!H", 12)
        + addresses
        + struct.pack("!HH", port, 104)
    )


HOSTILE = {
    # name: (source address, first bytes, the ERROR's `what`)
    "forged header from an untrusted address": (
        UNTRUSTED,
        b"PROXY TCP4 127.0.0.3 127.0.0.1 5000 104\r\n",
        "connection refused",
    ),
    "no header from the trusted proxy": (
        BALANCER,
        associate_rq("CRASHSCU0", "STORSCP", [(VERIFICATION, [EXPLICIT_LE])]),
        "PROXY header refused",
    ),
    "v1 header of 200 bytes": (
        BALANCER,
        b"PROXY TCP4 " + b"1" * 187 + b"\r\n",
        "PROXY header refused",
    ),
    "garbage": (BALANCER, bytes(range(256)) * 4, "PROXY header refused"),
    "v2 announcing 64 KiB": (
        BALANCER,
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff" + bytes(100),
        "PROXY header refused",
    ),
    "v1 header that never ends": (BALANCER, b"PROXY TCP4 127.0", "PROXY header refused"),
}


def test_hostile_proxy_headers_are_refused_without_harm(cluster: Cluster) -> None:
    node = cluster.nodes["a"]
    receivers = node.running_pids("receiver")
    for name, (source, data, what) in HOSTILE.items():
        before = len(node.events("ERROR", what=what))
        with RawAssociation(node.port, source=source) as conn:
            conn.send(data)
            assert conn.closed_by_peer(), name  # within acse_timeout_s (2 s)
        errors = node.wait_event("ERROR", count=before + 1, what=what)
        assert errors[-1]["peer"].startswith(source + ":"), (name, errors[-1].fields)
    # No association was attempted, nothing died, and the balancer still serves.
    assert not [e for e in node.events("ASSOCIATION") if e["peer"].startswith(UNTRUSTED)]
    assert node.running_pids("receiver") == receivers
    with RawAssociation(cluster.haproxy.port, source="127.0.0.5") as fine:
        assert fine.associate(calling_ae="CRASHSCU3").c_echo() == 0
        fine.release()


def test_two_nodes_receiving_one_uid_leave_the_later_copy_whole(cluster: Cluster) -> None:
    uid = df.uid_for("scaleout-same-uid")
    copies = [minimal_dataset(CT, uid.encode(), payload=bytes([n]) * 5000) for n in (1, 2, 3)]
    for copy, name in zip(copies, ("a", "b", "a"), strict=True):
        with RawAssociation(cluster.nodes[name].port) as conn:
            conn.send(v2_header("127.0.0.2", 40000))
            conn.associate(calling_ae="CRASHSCU0", contexts=((df.CT, (EXPLICIT_LE,)),))
            assert conn.c_store(conn.context_for(df.CT), CT, uid.encode(), copy).status == 0
            conn.release()
        path = cluster.storage / f"{uid}.dcm"
        poll_for(lambda p=path, c=copy: p.exists() and df.dataset_bytes(p) == c, 30, "the copy")


def test_recovery_waits_for_a_dead_node_and_never_touches_a_live_one(cluster: Cluster) -> None:
    live, dead_depot = cluster.nodes["b"], cluster.storage / "depot" / "c"
    # A live node's depot is refused, with the reason.
    refused = live.command("recover", "--node", "a")
    assert refused.returncode == 69, refused.stdout + refused.stderr
    assert "still holds" in refused.stderr
    # Node c died with an acknowledged instance in its depot: no committer touches it ...
    dead_depot.mkdir()
    src = cluster.root / "c.dcm"
    uid = df.make_image(src, df.CT, seed=141000)
    shutil.copy(src, dead_depot / f"{time.time_ns():019d}-1-0_{uid}.ready")
    time.sleep(3 * float(str(live.keys["depot_scan_interval_s"])))  # several sweeps of a and b
    assert len(os.listdir(dead_depot)) == 1
    # ... until `storscp recover --node c` hands it to b, whose committer commits it.
    result = live.command("recover", "--node", "c")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 acknowledged instance" in result.stdout
    assert df.dataset_bytes(cluster.storage / f"{uid}.dcm") == df.dataset_bytes(src)
    assert [e["proc"] for e in live.events("WRITE", sop_instance_uid=uid)] == ["committer"]


def test_tls_listener_reads_the_proxy_header_before_the_handshake(
    pki: Path, short_tmp: Path
) -> None:
    tls = {
        "port": 0,
        "certificate": str(pki / "server.pem"),
        "private_key": str(pki / "server.key"),
    }
    node = Service(short_tmp, node="t", proxy_protocol=True, trusted_proxies=[BALANCER], tls=tls)
    haproxy = HAProxy(short_tmp, [], health_check=False)
    try:
        node.start()
        haproxy.backends = [Backend("t", "127.0.0.1", node.tls_port)]
        haproxy.start()
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        raw = socket.create_connection(("127.0.0.1", haproxy.port), source_address=("127.0.0.7", 0))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock:
            conn = RawAssociation.over(tls_sock)
            assert conn.associate(calling_ae="TLSSCU").c_echo() == 0
            conn.release()
        accepted = node.wait_event("ASSOCIATION", state="accepted", calling_ae="TLSSCU")[0]
        assert accepted["peer"].startswith("127.0.0.7:") and accepted["tls"] == "true"
        assert accepted["proxy"].startswith(BALANCER + ":")
    finally:
        haproxy.stop()
        node.stop()


def kill_node(node: Service) -> int:
    """kill -9 a node mid-load: supervisord and committer first, the rest once the
    draining receivers have left an acknowledged instance nobody will commit.

    Returns how many ready files the dead node left in its depot.
    """
    pids = {p: node.running_pids(p) for p in ("committer", "receiver", "logger", "listener")}
    os.kill(node.supervisord_pid(), signal.SIGKILL)
    for pid in pids["committer"]:
        os.kill(pid, signal.SIGKILL)
    poll_for(
        lambda: any(n.endswith(".ready") for n in os.listdir(node.depot_dir)),
        10,
        "a ready file left without a committer",
        interval_s=0.005,
    )
    for program in ("receiver", "logger", "listener"):
        for pid in pids[program]:
            os.kill(pid, signal.SIGKILL)
    return sum(1 for n in os.listdir(node.depot_dir) if n.endswith(".ready"))


def test_kill_9_of_a_node_mid_load_loses_no_acknowledged_instance(
    batches: list[list[Instance]], crash_report: list[str]
) -> None:
    root = short_tempdir("sof")
    cluster = start_cluster(root)
    try:
        pool = SenderPool(batches, port=lambda: cluster.haproxy.port, sources=SOURCES).start()
        poll_for(lambda: pool.acknowledged_count() >= 200, 120, "200 acknowledged", 0.01)
        poll_for(lambda: accepted_peers(cluster.nodes["a"]), 10, "node a serving")
        left = kill_node(cluster.nodes["a"])
        killed_at = time.monotonic()
        cluster.haproxy.wait_status("a", "DOWN")
        down_s = time.monotonic() - killed_at
        pool.join(240)
        # The dead node's acknowledged instances: handed to b, committed there.
        result = cluster.nodes["b"].command("recover", "--node", "a")
        assert result.returncode == 0, result.stdout + result.stderr
        sent, acknowledged, found = check_stored(cluster, pool)
        assert sent == len(SOURCES) * PER_SENDER
        line = (
            f"kill -9 node a    sent={sent} acknowledged={acknowledged} found={found}"
            f" left_in_dead_depot={left} (committed by recover) haproxy_down_after={down_s:.1f}s"
            f" associations={pool.associations()}"
        )
        print(line)
        crash_report.append(line)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
