"""The PROXY header parser against the `proxy-protocol` package's encoder, and hostile bytes.

HAProxy itself is the producer in tests/system/test_scaleout.py; here every
header the library packs must parse to the same addresses, the reader must
leave the bytes after the header in the socket, and nothing a peer sends may
raise anything but ProxyHeaderError.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proxyprotocol.result import ProxyResultIPv4, ProxyResultIPv6, ProxyResultLocal
from proxyprotocol.v1 import ProxyProtocolV1
from proxyprotocol.v2 import ProxyProtocolV2

from storscp.receiver.proxyproto import (
    V1_MAX_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    parse_v1,
    parse_v2,
    read_header,
)

SIG = V2_SIGNATURE
ASSOCIATE_RQ_START = b"\x01\x00\x00\x00\x00\xcc\x00\x01"


def v2(command: int, family_protocol: int, body: bytes) -> bytes:
    return SIG + struct.pack("!BBH", 0x20 | command, family_protocol, len(body)) + body


def parse(data: bytes) -> ProxyHeader:
    """Parse a whole header through the socket reader, as a connection would."""
    left, right = socket.socketpair()
    with left, right:
        left.sendall(data)
        left.shutdown(socket.SHUT_WR)
        return read_header(right, 2.0)


@pytest.mark.parametrize(
    ("source", "dest"),
    [
        (("192.0.2.7", 40123), ("10.1.2.3", 104)),
        (("127.0.0.3", 0), ("127.0.0.1", 65535)),
        (("2001:db8::15", 11112), ("::1", 104)),
        (("fe80::1", 1), ("2001:db8::1", 2)),
    ],
)
@pytest.mark.parametrize("protocol", [socket.SOCK_STREAM, None])
@pytest.mark.parametrize("version", [1, 2])
def test_headers_packed_by_the_library_parse_to_the_same_addresses(
    version: int, protocol: socket.SocketKind | None, source: tuple[str, int], dest: tuple[str, int]
) -> None:
    """v2 with protocol STREAM (HAProxy) or UNSPEC (the library's default): addresses count."""
    if ":" in source[0]:
        result: ProxyResultIPv4 | ProxyResultIPv6 = ProxyResultIPv6(
            (IPv6Address(source[0]), source[1]), (IPv6Address(dest[0]), dest[1]), protocol=protocol
        )
    else:
        result = ProxyResultIPv4(
            (IPv4Address(source[0]), source[1]), (IPv4Address(dest[0]), dest[1]), protocol=protocol
        )
    packer = ProxyProtocolV1() if version == 1 else ProxyProtocolV2()
    header = parse(packer.pack(result))
    assert header == ProxyHeader(version, False, source, dest)


def test_ipv4_mapped_sources_are_ipv4() -> None:
    """One peer, one spelling: allow-lists and logs see 10.0.0.5 either way."""
    assert parse(b"PROXY TCP6 ::ffff:10.0.0.5 ::1 1 2\r\n").source == ("10.0.0.5", 1)
    mapped = IPv6Address("::ffff:10.0.0.5").packed + IPv6Address("::1").packed
    assert parse(v2(1, 0x21, mapped + struct.pack("!HH", 1, 2))).source == ("10.0.0.5", 1)


def test_v2_local_from_the_library_is_a_local_header() -> None:
    assert parse(ProxyProtocolV2().pack(ProxyResultLocal())) == ProxyHeader(2, True, None, None)


def test_haproxy_health_check_local_header_as_sent() -> None:
    # Captured from HAProxy 2.6 `tcp-check connect default` with send-proxy-v2.
    assert parse(SIG + b" \x00\x00\x00") == ProxyHeader(2, True, None, None)


def test_v2_tlvs_after_the_addresses_are_ignored() -> None:
    addresses = struct.pack("!4s4sHH", bytes([10, 0, 0, 9]), bytes([10, 0, 0, 1]), 5000, 104)
    tlvs = b"\x05\x00\x04abcd" + b"\x04\x00\x00"  # unique id, then a NOOP
    header = parse(v2(1, 0x11, addresses + tlvs))
    assert header.source == ("10.0.0.9", 5000)


def test_v1_unknown_and_v2_unspec_mean_the_connection_itself() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(1, False, None, None)
    assert parse(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n").source is None
    assert parse(v2(1, 0x00, b"")) == ProxyHeader(2, False, None, None)


def test_reader_leaves_what_follows_the_header_in_the_socket() -> None:
    """A TLS ClientHello or an A-ASSOCIATE-RQ right behind the header is not eaten."""
    for header in (
        b"PROXY TCP4 127.0.0.3 127.0.0.1 5000 104\r\n",
        ProxyProtocolV2().pack(
            ProxyResultIPv4((IPv4Address("127.0.0.3"), 5000), (IPv4Address("127.0.0.1"), 104))
        ),
    ):
        left, right = socket.socketpair()
        with left, right:
            left.sendall(header + ASSOCIATE_RQ_START)
            assert read_header(right, 2.0).source == ("127.0.0.3", 5000)
            assert right.recv(100) == ASSOCIATE_RQ_START


def test_v1_header_arriving_a_byte_at_a_time_is_read_whole() -> None:
    line = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 104\r\n"
    left, right = socket.socketpair()

    def drip() -> None:
        for i in range(len(line)):
            left.sendall(line[i : i + 1])
        left.sendall(b"NEXT")

    with left, right:
        thread = threading.Thread(target=drip)
        thread.start()
        assert read_header(right, 5.0).source == ("2001:db8::1", 65535)
        thread.join()
        assert right.recv(4, socket.MSG_WAITALL) == b"NEXT"


HOSTILE = {
    "no header (an A-ASSOCIATE-RQ)": ASSOCIATE_RQ_START + b"\x00" * 8,
    "v1 of 200 bytes": b"PROXY TCP4 " + b"1" * 187 + b"\r\n",
    "v1 without CRLF": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    "v1 port with a sign": b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 104\r\n",
    "v1 port with an underscore": b"PROXY TCP4 1.2.3.4 5.6.7.8 8_0 104\r\n",
    "v1 port with a leading zero": b"PROXY TCP4 1.2.3.4 5.6.7.8 080 104\r\n",
    "v1 port too large": b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 104\r\n",
    "v1 IPv6 zone id": b"PROXY TCP6 fe80::1%eth0 ::1 80 104\r\n",
    "v1 IPv6 under TCP4": b"PROXY TCP4 ::1 ::1 80 104\r\n",
    "v1 octal-looking IPv4": b"PROXY TCP4 010.0.0.1 10.0.0.2 80 104\r\n",
    "v1 double space": b"PROXY TCP4  1.2.3.4 5.6.7.8 80 104\r\n",
    "v1 non-ASCII": b"PROXY TCP4 \xff.2.3.4 5.6.7.8 80 104\r\n",
    "v1 unknown family": b"PROXY UDP4 1.2.3.4 5.6.7.8 80 104\r\n",
    "v2 version 1": SIG + b"\x11\x11\x00\x0c" + bytes(12),
    "v2 command 5": v2(5, 0x11, bytes(12)),
    "v2 UDP": v2(1, 0x12, bytes(12)),
    "v2 protocol 0xF": v2(1, 0x1F, bytes(12)),
    "v2 family 0x4": v2(1, 0x41, bytes(12)),
    "v2 IPv4 block too short": v2(1, 0x11, bytes(4)),
    "v2 IPv6 block too short": v2(1, 0x21, bytes(12)),
    "v2 AF_UNIX block too short": v2(1, 0x31, bytes(12)),
    "v2 announcing 65535 bytes": SIG + b"\x21\x11\xff\xff" + bytes(64),
    "v2 wrong signature": b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + bytes(12),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_headers_are_refused(name: str) -> None:
    with pytest.raises((ProxyHeaderError, ConnectionError)):
        parse(HOSTILE[name])


def test_v1_longest_valid_line_is_accepted_and_one_more_byte_is_not() -> None:
    """The spec's worst case: UNKNOWN with both optional addresses, 107 bytes."""
    address = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    longest = f"PROXY UNKNOWN {address} {address} 65535 65535\r\n".encode()
    assert len(longest) == V1_MAX_BYTES
    assert parse(longest) == ProxyHeader(1, False, None, None)
    with pytest.raises(ProxyHeaderError):
        parse(longest[:-2] + b" \r\n")


def test_silence_times_out() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"PROXY TCP4 1.2")
        with pytest.raises(TimeoutError):
            read_header(right, 0.2)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_a_v2_head_raise_only_header_errors(body: bytes) -> None:
    for family_protocol in (0x11, 0x21, 0x31, 0x00, 0x12):
        head = SIG + struct.pack("!BBH", 0x21, family_protocol, len(body))
        with contextlib.suppress(ProxyHeaderError):
            parse_v2(head, body)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_v1_lines_raise_only_header_errors(tail: bytes) -> None:
    try:
        header = parse_v1(b"PROXY " + tail + b"\r\n")
    except ProxyHeaderError:
        return
    if header.source is not None:  # whatever passed is a plain address and port
        assert "%" not in header.source[0] and 0 <= header.source[1] <= 65535
