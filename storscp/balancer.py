"""What a TCP load balancer in front of storscp nodes needs from us: a health check.

A node is healthy when it accepts an association, not when its port
merely answers: a receiver whose depot is gone, or which is full, still
accepts TCP connections. So HAProxy's `tcp-check` sends a minimal
A-ASSOCIATE-RQ (Verification SOP Class, Implicit VR Little Endian) and
expects an A-ASSOCIATE-AC, then releases. `tcp-check connect default`
makes the check send the server line's PROXY header (v2 LOCAL), which a
node with `proxy_protocol` requires from its balancer.

The request is encoded here, in a few lines of struct, because it is
written once into a configuration file; tests/unit/test_balancer.py proves
it byte-equal to pynetdicom's encoder. `storscp haproxy-check` prints it.
"""

from __future__ import annotations

import struct

from storscp import IMPLEMENTATION_CLASS_UID

CHECK_CALLING_AE = "HAPROXY-CHECK"
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_VR_LE = b"1.2.840.10008.1.2"
MAX_PDU_BYTES = 16384
RELEASE_RQ = bytes.fromhex("05000000000400000000")


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack("!BxH", item_type, len(value)) + value


def associate_rq(called_ae: str, calling_ae: str = CHECK_CALLING_AE) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) with one presentation context: C-ECHO."""
    context = (
        struct.pack("!BBBB", 1, 0, 0, 0) + _item(0x30, VERIFICATION) + _item(0x40, IMPLICIT_VR_LE)
    )
    user = _item(0x51, struct.pack("!L", MAX_PDU_BYTES)) + _item(
        0x52, IMPLEMENTATION_CLASS_UID.encode("ascii")
    )
    body = (
        struct.pack("!HH", 1, 0)
        + called_ae.encode("ascii").ljust(16)
        + calling_ae.encode("ascii").ljust(16)
        + bytes(32)
        + _item(0x10, APPLICATION_CONTEXT)
        + _item(0x20, context)
        + _item(0x50, user)
    )
    return struct.pack("!BxL", 0x01, len(body)) + body


def haproxy_check_lines(called_ae: str) -> list[str]:
    """The `tcp-check` rules of a backend whose servers are storscp nodes.

    `rbinary` matches the hex of what the node sent: 02 is A-ASSOCIATE-AC
    (03 would be the A-ASSOCIATE-RJ of a full or misconfigured node), 06
    A-RELEASE-RP, so the check ends in an orderly release, not an abort.
    """
    return [
        "option tcp-check",
        "tcp-check connect default",
        f"tcp-check send-binary {associate_rq(called_ae).hex()}",
        "tcp-check expect rbinary ^02",
        f"tcp-check send-binary {RELEASE_RQ.hex()}",
        "tcp-check expect rbinary ^06",
    ]
