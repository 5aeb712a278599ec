"""A DICOM SCU over a plain socket, where every byte is the test's to choose.

Real clients refuse to send a SOP Instance UID of `../../x` or a PDU that
announces 4 GB; this one does. The A-ASSOCIATE-RQ is built with pynetdicom's
PDU classes (a well-formed request unless the test says otherwise); command
sets and P-DATA are encoded here so that any value can be sent.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


class Rejected(Exception):
    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"A-ASSOCIATE-RJ result={result} source={source} reason={reason}")
        self.result, self.source, self.reason = result, source, reason


class Aborted(Exception):
    """The service sent A-ABORT or closed the connection."""


def associate_rq(
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
    max_pdu: int = 65536,
    implementation_uid: str = "1.2.826.0.1.3680043.10.1426.99",
) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    for i, (abstract, syntaxes) in enumerate(contexts):
        cx = build_context(abstract, list(syntaxes))
        cx.context_id = 2 * i + 1
        primitive.presentation_context_definition_list.append(cx)
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = implementation_uid
    primitive.user_information = [max_length, impl]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def element(element_no: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0x0000, element_no, len(value)) + value


def command_set(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return element(0x0000, struct.pack("<L", len(body))) + body


def pad_uid(uid: bytes) -> bytes:
    return uid + b"\x00" if len(uid) % 2 else uid


def store_rq(message_id: int, sop_class: bytes, sop_instance: bytes) -> bytes:
    return command_set(
        [
            element(0x0002, pad_uid(sop_class)),
            element(0x0100, struct.pack("<H", 0x0001)),
            element(0x0110, struct.pack("<H", message_id)),
            element(0x0700, struct.pack("<H", 0)),
            element(0x0800, struct.pack("<H", 0x0000)),
            element(0x1000, pad_uid(sop_instance)),
        ]
    )


def echo_rq(message_id: int) -> bytes:
    return command_set(
        [
            element(0x0002, pad_uid(VERIFICATION.encode())),
            element(0x0100, struct.pack("<H", 0x0030)),
            element(0x0110, struct.pack("<H", message_id)),
            element(0x0800, struct.pack("<H", 0x0101)),
        ]
    )


def p_data(context_id: int, control: int, data: bytes) -> bytes:
    item = struct.pack(">LBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BxL", 0x04, len(item)) + item


@dataclass
class Response:
    status: int
    comment: str
    elements: dict[int, bytes]


def parse_command(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        _group, elem, length = struct.unpack_from("<HHL", data, pos)
        out[elem] = data[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return out


class RawAssociation:
    """One association whose bytes the test controls."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        timeout_s: float = 30.0,
        source: str | None = None,
    ) -> None:
        """`source`: the local address to connect from (127.0.0.9 ...)."""
        self.sock = socket.create_connection(
            (host, port), timeout=timeout_s, source_address=(source, 0) if source else None
        )
        self.contexts: dict[int, tuple[str, str]] = {}
        self._message_id = 0

    @classmethod
    def over(cls, sock: socket.socket) -> RawAssociation:
        """An association on a socket the test already set up (TLS, a PROXY header)."""
        self = cls.__new__(cls)
        self.sock, self.contexts, self._message_id = sock, {}, 0
        return self

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawAssociation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw PDUs -----------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            data = self.sock.recv(n)
            if not data:
                raise Aborted("connection closed by the service")
            chunks.append(data)
            n -= len(data)
        return b"".join(chunks)

    def recv_pdu(self) -> tuple[int, bytes]:
        header = self.recv_exact(6)
        pdu_type, length = struct.unpack(">BxL", header)
        return pdu_type, self.recv_exact(length)

    def closed_by_peer(self) -> bool:
        """True if the service closed the connection (after any A-ABORT)."""
        try:
            while True:
                pdu_type, _ = self.recv_pdu()
                if pdu_type != 0x07:
                    return False
        except (Aborted, ConnectionResetError):
            return True

    def closed_by_peer_nowait(self) -> bool:
        """True if the service has already closed the connection (no waiting)."""
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(timeout)
        return data == b"" or data[:1] == b"\x07"

    # -- association --------------------------------------------------------

    def associate(
        self,
        calling_ae: str = "RAWSCU",
        called_ae: str = "STORSCP",
        contexts: Sequence[tuple[str, Sequence[str]]] = ((VERIFICATION, (IMPLICIT_LE,)),),
    ) -> RawAssociation:
        self.send(associate_rq(calling_ae, called_ae, contexts))
        pdu_type, body = self.recv_pdu()
        if pdu_type == 0x03:
            raise Rejected(body[1], body[2], body[3])
        if pdu_type != 0x02:
            raise Aborted(f"expected A-ASSOCIATE-AC, got PDU type {pdu_type:#x}")
        ac = A_ASSOCIATE_AC()
        ac.decode(struct.pack(">BxL", 0x02, len(body)) + body)
        for cx in ac.to_primitive().presentation_context_definition_results_list:
            if cx.result == 0 and cx.context_id is not None:
                proposed = contexts[(cx.context_id - 1) // 2][0]
                self.contexts[cx.context_id] = (proposed, str(cx.transfer_syntax[0]))
        return self

    def context_for(self, abstract: str) -> int:
        for cid, (ab, _ts) in self.contexts.items():
            if ab == abstract:
                return cid
        raise KeyError(abstract)

    def release(self) -> None:
        self.send(struct.pack(">BxL", 0x05, 4) + b"\x00" * 4)
        pdu_type, _ = self.recv_pdu()
        assert pdu_type == 0x06, f"expected A-RELEASE-RP, got {pdu_type:#x}"

    # -- DIMSE --------------------------------------------------------------

    def next_message_id(self) -> int:
        self._message_id += 1
        return self._message_id

    def read_response(self) -> Response:
        command = b""
        while True:
            pdu_type, body = self.recv_pdu()
            if pdu_type == 0x07:
                raise Aborted("service sent A-ABORT")
            if pdu_type != 0x04:
                raise Aborted(f"expected P-DATA-TF, got {pdu_type:#x}")
            pos = 0
            while pos < len(body):
                length, _cid, control = struct.unpack_from(">LBB", body, pos)
                command += body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 0x03 == 0x03:
                    elements = parse_command(command)
                    status = struct.unpack("<H", elements[0x0900])[0]
                    comment = elements.get(0x0902, b"").decode("ascii", "replace").strip()
                    return Response(status, comment, elements)

    def c_echo(self) -> int:
        cid = self.context_for(VERIFICATION)
        self.send(p_data(cid, 0x03, echo_rq(self.next_message_id())))
        return self.read_response().status

    def c_store(
        self,
        context_id: int,
        sop_class: bytes,
        sop_instance: bytes,
        dataset: bytes,
        fragment_bytes: int = 16000,
    ) -> Response:
        """Send a C-STORE whose request says `sop_class`/`sop_instance`, with `dataset`."""
        self.send(
            p_data(context_id, 0x03, store_rq(self.next_message_id(), sop_class, sop_instance))
        )
        chunks = [dataset[i : i + fragment_bytes] for i in range(0, len(dataset), fragment_bytes)]
        chunks = chunks or [b""]
        for i, chunk in enumerate(chunks):
            self.send(p_data(context_id, 0x02 if i == len(chunks) - 1 else 0x00, chunk))
        return self.read_response()


def explicit_element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return (
            struct.pack("<HH", group, elem)
            + vr
            + b"\x00\x00"
            + struct.pack("<L", len(value))
            + value
        )
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def minimal_dataset(sop_class: bytes, sop_instance: bytes, payload: bytes = b"") -> bytes:
    """An explicit VR little endian dataset carrying the given SOP UIDs."""
    data = explicit_element(0x0008, 0x0016, b"UI", pad_uid(sop_class))
    data += explicit_element(0x0008, 0x0018, b"UI", pad_uid(sop_instance))
    data += explicit_element(0x0010, 0x0010, b"PN", b"HOSTILE^TEST")
    if payload:
        data += explicit_element(0x7FE0, 0x0010, b"OB", payload + b"\x00" * (len(payload) % 2))
    return data
