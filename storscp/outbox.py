"""A process's single sending thread for bus messages.

The receiver serves every association on its own thread, and a ZeroMQ
socket must have one owner, so callers `post()` to a `SimpleQueue` (never
blocks) and one daemon thread owns the PUSH sockets. It sends without
blocking; when a peer's queue is full the message is dropped and said so on
stderr: a full queue must never stall a C-STORE.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from typing import cast

import zmq

from storscp import bus
from storscp.instruments import events_dropped

log = logging.getLogger(__name__)

_STOP = object()


class Outbox:
    """Non-blocking delivery of bus messages to the committer and logger."""

    def __init__(
        self, proc: str, endpoints: dict[str, str], linger_ms: int = bus.LINGER_MS
    ) -> None:
        """`endpoints` maps a route name ("logger", "committer") to its address.

        `linger_ms`: how long `close` may spend delivering what is still queued.
        """
        self.proc = proc
        self._linger_ms = linger_ms
        self._endpoints = endpoints
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"outbox-{proc}", daemon=True)
        self._ready = threading.Event()
        self.dropped = 0
        self._dropped_metric = events_dropped()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5.0)

    def post(self, route: str, msg: bus.Message) -> None:
        """Queue `msg` for `route`; returns at once whatever the peer's state."""
        self._queue.put((route, msg))

    def event(self, type_: bus.EventType, **fields: bus.FieldValue) -> None:
        """Queue a service event for the logger, stamped now."""
        self.post("logger", bus.Event(type=type_, proc=self.proc, fields=dict(fields)))

    def close(self, timeout_s: float = 2.0) -> None:
        """Flush what is queued (up to the sockets' linger), then stop."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout_s)

    def _run(self) -> None:
        context = zmq.Context()
        sockets: dict[str, zmq.Socket[bytes]] = {}
        try:
            for route, address in self._endpoints.items():
                sock: zmq.Socket[bytes] = context.socket(zmq.PUSH)
                sock.setsockopt(zmq.SNDHWM, bus.SEND_HWM)
                sock.setsockopt(zmq.LINGER, self._linger_ms)
                sock.connect(address)
                sockets[route] = sock
            self._ready.set()
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                route, msg = cast(tuple[str, bus.Message], item)
                self._send(sockets[route], route, msg)
        finally:
            self._ready.set()
            for sock in sockets.values():
                sock.close()
            context.term()

    def _send(self, sock: zmq.Socket[bytes], route: str, msg: bus.Message) -> None:
        try:
            sock.send_multipart(bus.encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            self._dropped_metric.labels(self.proc, route).inc()
            # The peer is gone or slow; the depot still holds the data.
            print(
                f"storscp {self.proc}: {route} queue full, dropped {type(msg).__name__}: {msg}",
                file=sys.stderr,
                flush=True,
            )
        except zmq.ZMQError as exc:
            self.dropped += 1
            self._dropped_metric.labels(self.proc, route).inc()
            log.error("cannot send to %s: %s", route, exc)
