"""Reading a peer's stream wherever it is cut: SocketReader, and PDVs through a real Connection.

A modality's TCP segments, PDUs and PDV fragments fall anywhere: a command
set in several PDVs, a dataset in many, several PDVs in one PDU, a PDU
split across reads. Whatever the cuts, the receiver must see the same bytes
and store the same file. Real sockets (socketpair), a real Connection and
depot, a real outbox; no mocks.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storscp import bus, depotfiles
from storscp.arrival import Arrival
from storscp.config import load
from storscp.outbox import Outbox
from storscp.receiver.acse import Negotiator
from storscp.receiver.commitment_requests import CommitmentRequests
from storscp.receiver.connection import Connection, ConnectionServices
from storscp.receiver.counting import ReceiverCounter
from storscp.receiver.depot import PartPool
from storscp.receiver.reader import PeerClosed, SocketReader
from storscp.receiver.store import StoreLimits
from support import dicomfiles as df
from support import rawscu

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def send_in_chunks(sock: socket.socket, data: bytes, sizes: list[int]) -> None:
    """Send `data` cut at the given sizes (cycled), then close the writing side."""
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        sock.sendall(data[pos : pos + size])
        pos += size
        i += 1
    sock.shutdown(socket.SHUT_WR)


# -- SocketReader ---------------------------------------------------------------------


@given(
    data=st.binary(max_size=4000),
    sent=st.lists(st.integers(1, 700), min_size=1, max_size=8),
    reads=st.lists(st.tuples(st.booleans(), st.integers(0, 1200)), min_size=1, max_size=30),
    buffer_bytes=st.integers(8, 600),
)
@settings(max_examples=150, deadline=None)
def test_socket_reader_returns_the_stream_whatever_the_cuts(
    data: bytes, sent: list[int], reads: list[tuple[bool, int]], buffer_bytes: int
) -> None:
    ours, peer = socket.socketpair()
    writer = threading.Thread(target=send_in_chunks, args=(peer, data, sent))
    writer.start()
    try:
        reader = SocketReader(ours, size=buffer_bytes)
        reader.set_wait(10.0)
        got = bytearray()
        left = len(data)
        for use_stream, wanted in reads:
            n = min(wanted, left)
            if use_stream:
                reader.stream(n, got.extend)
            else:
                got += reader.read(n)  # n may exceed the buffer: read in parts
            left -= n
        got += reader.read(left)
        assert bytes(got) == data
        with pytest.raises(PeerClosed):
            reader.read(1)
    finally:
        writer.join(10)
        ours.close()
        peer.close()


# -- PDV reassembly through a Connection ---------------------------------------------


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    path = tmp_path_factory.mktemp("src") / "ct.dcm"
    uid = df.make_image(path, df.CT, seed=8800, rows=24, columns=24)
    return uid, df.dataset_bytes(path)


@pytest.fixture(scope="module")
def receiver_side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectionServices]:
    """What the Receiver shares with its connections, over a real depot and bus."""
    root = tmp_path_factory.mktemp("svc")
    config = load(
        None,
        {"storage_dir": str(root / "storage"), "run_dir": str(root / "run"), "metrics": ""},
    )
    config.depot_dir.mkdir(parents=True)
    config.bus_dir.mkdir(parents=True)
    context = zmq.Context()
    pulls = []
    for endpoint, kind in (
        (bus.logger_endpoint(config.run_dir), zmq.ROUTER),  # the logger's side of its route
        (bus.committer_endpoint(config.run_dir), zmq.PULL),
    ):
        pull = context.socket(kind)
        pull.setsockopt(zmq.LINGER, 0)
        pull.bind(endpoint)
        pulls.append(pull)
    outbox = Outbox(
        "receiver",
        {
            "logger": bus.logger_endpoint(config.run_dir),
            "committer": bus.committer_endpoint(config.run_dir),
        },
    )
    outbox.start()
    depot_fd = os.open(config.depot_dir, os.O_RDONLY | os.O_DIRECTORY)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    arrival = Arrival(config.state_dir)
    parts = PartPool(config.depot_dir, 0o640, arrival)
    try:
        yield ConnectionServices(
            config=config,
            outbox=outbox,
            negotiator=Negotiator(config.max_pdu_bytes),
            parts=parts,
            limits=StoreLimits(),
            depot_dir_fd=depot_fd,
            admit=lambda assoc, host: (None, 0),
            association_ended=lambda slot: None,
            counter=ReceiverCounter(config),
            commitment=CommitmentRequests(config, outbox, []),
            mailboxes=None,
        )
    finally:
        parts.close()
        arrival.close()
        os.close(depot_fd)
        outbox.close()
        for pull in pulls:
            pull.close()
        context.term()


def pdvs(context_id: int, data: bytes, cuts: list[int], command: bool) -> list[bytes]:
    """`data` as PDV items cut at `cuts` (offsets), the last one marked last."""
    bounds = sorted({c % (len(data) + 1) for c in cuts} - {0, len(data)})
    pieces = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    items = []
    for i, piece in enumerate(pieces):
        control = (0x01 if command else 0x00) | (0x02 if i == len(pieces) - 1 else 0x00)
        items.append(struct.pack(">LBB", len(piece) + 2, context_id, control) + piece)
    return items


def p_data_tfs(items: list[bytes], per_pdu: int) -> bytes:
    """PDV items packed `per_pdu` to a P-DATA-TF."""
    out = b""
    for i in range(0, len(items), per_pdu):
        body = b"".join(items[i : i + per_pdu])
        out += struct.pack(">BxL", 0x04, len(body)) + body
    return out


@given(
    command_cuts=st.lists(st.integers(0, 200), max_size=4),
    dataset_cuts=st.lists(st.integers(0, 2000), max_size=12),
    per_pdu=st.integers(1, 5),
    sent=st.lists(st.integers(1, 500), min_size=1, max_size=6),
)
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_a_c_store_cut_anywhere_is_stored_whole(
    receiver_side: ConnectionServices,
    instance: tuple[str, bytes],
    command_cuts: list[int],
    dataset_cuts: list[int],
    per_pdu: int,
    sent: list[int],
) -> None:
    uid, dataset = instance
    ours, peer = socket.socketpair()
    connection = Connection(ours, ("127.0.0.1", 4242), receiver_side)
    serving = threading.Thread(target=connection.serve)
    serving.start()
    assoc = rawscu.RawAssociation.__new__(rawscu.RawAssociation)
    assoc.sock, assoc.contexts, assoc._message_id = peer, {}, 0
    try:
        peer.settimeout(10)
        assoc.associate(contexts=[(df.CT, [EXPLICIT_LE])])
        # Given one C-STORE: command in fragments, dataset in fragments, PDUs of
        # several PDVs, and the bytes sent in chunks that cut through all of them
        command = rawscu.store_rq(7, df.CT.encode(), uid.encode())
        items = pdvs(1, command, command_cuts, command=True)
        items += pdvs(1, dataset, dataset_cuts, command=False)
        stream = p_data_tfs(items, per_pdu)
        pos, i = 0, 0
        while pos < len(stream):
            peer.sendall(stream[pos : pos + sent[i % len(sent)]])
            pos += sent[i % len(sent)]
            i += 1
        # When it is answered, then with Success, and the depot holds the dataset as sent
        assert assoc.read_response().status == 0x0000
        assoc.release()
    finally:
        serving.join(10)
        peer.close()
    depot = receiver_side.config.depot_dir
    ready = [name for name in os.listdir(depot) if name.endswith(depotfiles.READY_SUFFIX)]
    assert len(ready) == 1
    assert df.dataset_bytes(depot / ready[0]) == dataset
    os.unlink(depot / ready[0])
