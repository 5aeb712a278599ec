"""Receiving bus messages: what is queued on a socket now, decoded.

A malformed message is logged (stderr, the child log) and skipped: a peer's
bug must not stop the receiving loop. Never waits.
"""

from __future__ import annotations

import logging

import zmq

from storscp import bus

log = logging.getLogger(__name__)


def received(sock: zmq.Socket[bytes], limit: int = bus.SEND_HWM) -> list[bus.Message]:
    """Every message queued on `sock` now, up to `limit`, without waiting."""
    messages: list[bus.Message] = []
    while len(messages) < limit:
        try:
            frames = sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            break
        try:
            messages.append(bus.decode(frames))
        except bus.BusError as exc:
            log.warning("ignoring malformed message: %s", exc)
    return messages
