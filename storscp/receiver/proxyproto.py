"""The PROXY protocol header (v1 text, v2 binary) that a load balancer puts first.

HAProxy's `send-proxy` / `send-proxy-v2` write one header before the
client's bytes, naming the client's address; we read it from a connection
of a trusted proxy before anything else, TLS handshake included, and the
address in it becomes the peer. Spec: haproxy.org, doc/proxy-protocol.txt.

Hand-written rather than taken from the `proxy-protocol` package (PyPI,
0.11.3): that one is asyncio-shaped, reads an unbounded v1 line, accepts
"+80", "8_0" and IPv6 zone ids as ports and addresses, takes a UDP or
unknown-protocol v2 header as TCP, and raises struct.error on a short
address block. The unit tests check our parser against its encoder.

The reader never consumes a byte past the header: what follows (an
A-ASSOCIATE-RQ, a TLS ClientHello) stays in the socket for its own reader.
Whatever a peer sends, parsing raises only `ProxyHeaderError`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
import time
from dataclasses import dataclass

from storscp.errors import StorscpError

V1_PREFIX = b"PROXY "
# "PROXY TCP6 <39> <39> 65535 65535\r\n": the spec's longest line.
V1_MAX_BYTES = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEAD = struct.Struct("!12sBBH")
# Addresses (at most 216 bytes, AF_UNIX) plus TLVs; HAProxy's SSL and
# unique-id TLVs fit many times over. A longer header is refused.
V2_MAX_BODY_BYTES = 2048
SIGNATURE_BYTES = 8

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM, _UNSPEC_PROTOCOL = 0x1, 0x0
_V2_ADDRESSES = {_AF_INET: struct.Struct("!4s4sHH"), _AF_INET6: struct.Struct("!16s16sHH")}
_V2_UNIX_BYTES = 216
_PORT_RE = re.compile(rb"0|[1-9][0-9]{0,4}")


class ProxyHeaderError(StorscpError):
    """Not a valid PROXY header, or too long; the connection must be closed."""


class ClosedBeforeHeader(StorscpError):
    """The peer closed without sending a byte (a balancer's connect-only check)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What the balancer said about a connection.

    `source` is the client (address, port); None when the header gives none
    (v2 LOCAL, v1 UNKNOWN, v2 AF_UNSPEC or AF_UNIX): then the connection's
    own endpoints count, as the spec says. `local` marks v2 LOCAL: the
    proxy's own connection, a health check.
    """

    version: int
    local: bool
    source: tuple[str, int] | None
    destination: tuple[str, int] | None


# -- parsing (pure) ------------------------------------------------------------


def parse_v1(line: bytes) -> ProxyHeader:
    """A whole v1 line, CRLF included."""
    if len(line) > V1_MAX_BYTES:
        raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX_BYTES} bytes")
    if not line.startswith(V1_PREFIX) or not line.endswith(b"\r\n"):
        raise ProxyHeaderError("PROXY v1 header must start with 'PROXY ' and end with CRLF")
    fields = line[len(V1_PREFIX) : -2].split(b" ")
    if fields[0] == b"UNKNOWN":
        return ProxyHeader(1, False, None, None)  # the rest of the line is ignored
    if fields[0] not in (b"TCP4", b"TCP6") or len(fields) != 5:
        raise ProxyHeaderError("PROXY v1 header is not 'TCP4|TCP6 src dst sport dport'")
    version: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = (
        ipaddress.IPv4Address if fields[0] == b"TCP4" else ipaddress.IPv6Address
    )
    src, dst = (_v1_address(version, raw) for raw in fields[1:3])
    sport, dport = (_v1_port(raw) for raw in fields[3:5])
    return ProxyHeader(1, False, (src, sport), (dst, dport))


def _v1_address(kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address], raw: bytes) -> str:
    # No zone ids ("fe80::1%eth0"): they are not addresses of the spec's
    # grammar, and whatever is here ends up in logs and allow-lists.
    if not raw or not re.fullmatch(rb"[0-9A-Fa-f.:]+", raw):
        raise ProxyHeaderError(f"PROXY v1 header has an invalid address {raw[:40]!r}")
    try:
        return _text(kind(raw.decode("ascii")))
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 header has an invalid address {raw[:40]!r}") from None


def _v1_port(raw: bytes) -> int:
    if not _PORT_RE.fullmatch(raw) or int(raw) > 65535:
        raise ProxyHeaderError(f"PROXY v1 header has an invalid port {raw[:10]!r}")
    return int(raw)


def v2_body_length(head: bytes) -> int:
    """From the fixed 16 bytes of a v2 header, how many bytes follow them."""
    if len(head) != V2_HEAD.size:
        raise ProxyHeaderError("PROXY v2 header shorter than 16 bytes")
    signature, version_command, _family, length = V2_HEAD.unpack(head)
    if signature != V2_SIGNATURE:
        raise ProxyHeaderError("PROXY v2 header has a wrong signature")
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header has version {version_command >> 4}, not 2")
    if length > V2_MAX_BODY_BYTES:
        raise ProxyHeaderError(
            f"PROXY v2 header announces {length} bytes, more than {V2_MAX_BODY_BYTES}"
        )
    return int(length)


def parse_v2(head: bytes, body: bytes) -> ProxyHeader:
    """The 16 fixed bytes and the `v2_body_length(head)` bytes after them."""
    if len(body) != v2_body_length(head):
        raise ProxyHeaderError("PROXY v2 header is shorter than its length field")
    _signature, version_command, family_protocol, _length = V2_HEAD.unpack(head)
    command = version_command & 0x0F
    if command == _V2_LOCAL:
        # The proxy's own connection: family and addresses are to be ignored.
        return ProxyHeader(2, True, None, None)
    if command != _V2_PROXY:
        raise ProxyHeaderError(f"PROXY v2 header has an unknown command 0x{command:X}")
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if protocol not in (_STREAM, _UNSPEC_PROTOCOL) or family > _AF_UNIX:
        raise ProxyHeaderError(
            f"PROXY v2 header is not for a TCP connection (0x{family_protocol:02X})"
        )
    if family == _AF_UNSPEC:
        return ProxyHeader(2, False, None, None)  # unknown: the connection's own address
    if family == _AF_UNIX:
        if len(body) < _V2_UNIX_BYTES:
            raise ProxyHeaderError("PROXY v2 header too short for its AF_UNIX addresses")
        return ProxyHeader(2, False, None, None)
    layout = _V2_ADDRESSES[family]
    if len(body) < layout.size:
        raise ProxyHeaderError(
            f"PROXY v2 header too short for its addresses ({len(body)} < {layout.size} bytes)"
        )
    # TLVs after the addresses are allowed and ignored (the spec: never fail on them).
    src, dst, sport, dport = layout.unpack_from(body)
    make = ipaddress.IPv4Address if family == _AF_INET else ipaddress.IPv6Address
    return ProxyHeader(2, False, (_text(make(src)), sport), (_text(make(dst)), dport))


def _text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """'::ffff:10.0.0.5' is 10.0.0.5 (for allow-lists and logs alike)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


# -- reading from a connection ---------------------------------------------------


def read_header(sock: socket.socket, timeout_s: float) -> ProxyHeader:
    """Read and parse the header at the start of `sock`, within `timeout_s`.

    Raises ProxyHeaderError (not a header, malformed, too long), TimeoutError,
    ClosedBeforeHeader when the peer closes without a byte, or ConnectionError
    when it closes inside the header.
    """
    deadline = time.monotonic() + timeout_s
    _wait(sock, deadline)
    if not sock.recv(1, socket.MSG_PEEK):
        raise ClosedBeforeHeader("peer closed the connection before sending anything")
    start = _recv_exact(sock, SIGNATURE_BYTES, deadline)
    if start == V2_SIGNATURE[:SIGNATURE_BYTES]:
        head = start + _recv_exact(sock, V2_HEAD.size - SIGNATURE_BYTES, deadline)
        return parse_v2(head, _recv_exact(sock, v2_body_length(head), deadline))
    if start.startswith(V1_PREFIX):
        return parse_v1(start + _recv_line(sock, V1_MAX_BYTES - SIGNATURE_BYTES, deadline))
    raise ProxyHeaderError(f"no PROXY header: the connection starts with 0x{start.hex()}")


def _wait(sock: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the PROXY header did not arrive in time")
    sock.settimeout(left)


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < n:
        _wait(sock, deadline)
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed the connection inside the PROXY header")
        data += chunk
    return bytes(data)


def _recv_line(sock: socket.socket, limit: int, deadline: float) -> bytes:
    """Up to and including the first LF, at most `limit` bytes, never beyond."""
    data = bytearray()
    while True:
        _wait(sock, deadline)
        peeked = sock.recv(limit - len(data), socket.MSG_PEEK)
        if not peeked:
            raise ConnectionError("peer closed the connection inside the PROXY header")
        end = peeked.find(b"\n")
        take = end + 1 if end >= 0 else len(peeked)
        data += _recv_exact(sock, take, deadline)
        if end >= 0:
            return bytes(data)
        if len(data) >= limit:
            raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX_BYTES} bytes")


# -- who may send one --------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """The `trusted_proxies` key (validated by config.py) as networks."""
    return tuple(ipaddress.ip_network(entry) for entry in entries)


def is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether a connection from `address` comes from a trusted proxy."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)
