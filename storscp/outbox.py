"""A process's single sending thread for bus messages.

The receiver serves every association on its own thread, and a ZeroMQ
socket must have one owner, so callers `post()` to a queue (never blocks)
and one daemon thread owns the sockets: the logger route (an EventStream:
numbered events, held until the logger has written them, resent after it
restarts) and PUSH sockets for the others (the committer's doorbell, where
the depot is the queue and a dropped message costs latency only).

Messages for a PUSH route do not wait for that thread: `post()` encodes
and sends them at once on the route's socket, under a lock (ZeroMQ allows a
socket to move between threads behind a full memory barrier). Waking the
thread for each InstanceStored cost the receiver two thread switches and a
GIL hand-over per instance. Events still go through the thread, which
holds them until the logger acknowledges them.

The thread cannot die silently. Each message is handled on its own: one
that fails (a value JSON cannot encode, an unknown route) is dropped,
counted, logged with its traceback and reported as an ERROR event. The
queue is bounded (MAX_QUEUED): if the thread is stuck or dead, `post()`
drops what does not fit, counts it and says so on stderr, instead of
filling memory; a thread that ends by accident says why.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import cast

import zmq

from storscp import bus
from storscp.eventstream import EventStream
from storscp.instruments import events_dropped

log = logging.getLogger(__name__)

LOGGER_ROUTE = "logger"
MAX_QUEUED = 10_000
# How long the thread sleeps with events out and nothing posted: it reads
# the acknowledgements then. Idle with nothing out, it sleeps until a post.
POLL_S = 0.05
# Messages taken from the queue between two looks at the sockets.
BATCH = 500
STDERR_INTERVAL_S = 10.0

_STOP = object()
_SEND_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_SEND_LAST = int(zmq.NOBLOCK)


class Outbox:
    """Non-blocking delivery of bus messages to the committer and logger."""

    def __init__(
        self, proc: str, endpoints: dict[str, str], linger_ms: int = bus.LINGER_MS
    ) -> None:
        """`endpoints` maps a route name ("logger", "committer") to its address.

        `linger_ms`: how long `close` may spend delivering what is still
        held: waiting for the logger's acknowledgements, and the PUSH
        sockets' linger.
        """
        self.proc = proc
        self.origin = bus.new_origin()
        self._linger_ms = linger_ms
        self._endpoints = endpoints
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"outbox-{proc}", daemon=True)
        self._ready = threading.Event()
        self._stream: EventStream | None = None
        self._lock = threading.Lock()  # only for the counters of refused posts
        # The PUSH sockets, made by the thread, used by any thread under this lock.
        self._push_lock = threading.Lock()
        self._push_sockets: dict[str, zmq.Socket[bytes]] = {}
        self.refused = 0  # posts dropped because the queue was full
        self._refused_reported = 0
        self._next_stderr = 0.0
        self.failed = 0  # messages that could not be handled
        self.push_dropped = 0  # PUSH messages ZeroMQ would not take
        self.unacknowledged = 0  # events still held at close
        self.failure: str | None = None  # why the thread ended, if by accident
        # storscp_events_dropped_total{component=proc, queue=...}: "outbox" for
        # a refused post, the route for the logger's hold or a full PUSH queue.
        self._dropped_metric = events_dropped()
        self._stream_drops_counted = 0

    @property
    def dropped(self) -> int:
        """Messages this outbox lost, for whatever reason."""
        stream_dropped = self._stream.dropped if self._stream is not None else 0
        return self.refused + self.failed + self.push_dropped + stream_dropped + self.unacknowledged

    @property
    def queued(self) -> int:
        """Messages posted and not yet taken by the thread."""
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5.0)

    def post(self, route: str, msg: bus.Message) -> None:
        """Send or queue `msg` for `route`; returns at once whatever the peer's state."""
        if route != LOGGER_ROUTE and self._send_now(route, msg):
            return
        if self._queue.qsize() >= MAX_QUEUED:
            self._refuse(route, msg)
            return
        self._queue.put((route, msg))

    def event(self, type_: bus.EventType, **fields: bus.FieldValue) -> None:
        """Queue a service event for the logger, stamped now."""
        self.post(LOGGER_ROUTE, bus.Event(type=type_, proc=self.proc, fields=dict(fields)))

    def close(self, timeout_s: float = 2.0) -> None:
        """Deliver what is held (up to `linger_ms`), then stop."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout_s)

    def _send_now(self, route: str, msg: bus.Message) -> bool:
        """Push `msg` on this thread; False if the route has no open socket (queue it)."""
        with self._push_lock:
            sock = self._push_sockets.get(route)
            if sock is None:
                return False
            try:
                frames = bus.encode(msg)
            except Exception as exc:
                fields = self._failed(route, msg, exc)
                if LOGGER_ROUTE in self._endpoints:
                    self.event(bus.EventType.ERROR, **fields)
                return True
            self._push(sock, route, msg, frames)
        return True

    def _refuse(self, route: str, msg: bus.Message) -> None:
        self._dropped_metric.labels(self.proc, "outbox").inc()
        with self._lock:
            self.refused += 1
            now = time.monotonic()
            if now < self._next_stderr:
                return
            self._next_stderr = now + STDERR_INTERVAL_S
        why = f"its thread ended: {self.failure}" if self.failure else "its thread is behind"
        print(
            f"storscp {self.proc}: outbox full ({MAX_QUEUED} queued, {why});"
            f" dropped {type(msg).__name__} for {route} ({self.refused} so far)",
            file=sys.stderr,
            flush=True,
        )

    def _run(self) -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sockets: dict[str, zmq.Socket[bytes]] = {}
        try:
            for route, address in self._endpoints.items():
                if route == LOGGER_ROUTE:
                    self._stream = EventStream(context, address, self.proc, self.origin)
                    continue
                sock: zmq.Socket[bytes] = context.socket(zmq.PUSH)
                sock.setsockopt(zmq.SNDHWM, bus.SEND_HWM)
                sock.setsockopt(zmq.LINGER, self._linger_ms)
                sock.connect(address)
                sockets[route] = sock
            with self._push_lock:
                self._push_sockets.update(sockets)
            self._ready.set()
            self._serve()
        except Exception as exc:  # not one message's fault: say so, post() stays bounded
            self.failure = repr(exc)
            log.exception("the outbox thread of %s ended", self.proc)
        finally:
            self._ready.set()
            if self._stream is not None:
                self.unacknowledged = self._stream.held
                self._stream.close()
            with self._push_lock:
                self._push_sockets.clear()
                for sock in sockets.values():
                    sock.close()
            context.term()

    def _serve(self) -> None:
        stream = self._stream
        while True:
            timeout = None if stream is None or stream.idle else POLL_S
            try:
                item: object | None = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            handled = 0
            while item is not None:
                if item is _STOP:
                    self._finish()
                    return
                self._handle(cast(tuple[str, bus.Message], item))
                handled += 1
                if handled >= BATCH or self._queue.empty():
                    break  # the rest after the sockets' turn, in order
                item = self._queue.get_nowait()  # the only taker: not empty means one is there
            self._report_refused()
            if stream is not None:
                stream.service()
                if stream.dropped > self._stream_drops_counted:
                    self._dropped_metric.labels(self.proc, LOGGER_ROUTE).inc(
                        stream.dropped - self._stream_drops_counted
                    )
                    self._stream_drops_counted = stream.dropped

    def _handle(self, item: tuple[str, bus.Message]) -> None:
        """One message; whatever goes wrong with it is counted and reported, never fatal.

        Only the logger's events and messages posted before the route's
        socket existed (sent now if it does) or for an unknown route come
        this way.
        """
        route, msg = item
        try:
            if route == LOGGER_ROUTE and self._stream is not None:
                if not isinstance(msg, bus.Event):
                    raise TypeError(f"only events go to the logger, not {type(msg).__name__}")
                self._stream.add(msg)
            elif not self._send_now(route, msg):
                raise KeyError(route)
        except Exception as exc:
            self._report(**self._failed(route, msg, exc))

    def _failed(self, route: str, msg: bus.Message, exc: Exception) -> dict[str, bus.FieldValue]:
        """Count and log a dropped message; the fields of its ERROR event."""
        with self._lock:
            self.failed += 1
            failed = self.failed
        log.error(
            "outbox of %s dropped %s for %s", self.proc, type(msg).__name__, route, exc_info=exc
        )
        return {
            "what": "outbox dropped a message",
            "kind": type(msg).__name__,
            "route": route,
            "reason": repr(exc)[:200],
            "failed": failed,
        }

    def _push(
        self, sock: zmq.Socket[bytes], route: str, msg: bus.Message, frames: list[bytes]
    ) -> None:
        """Send on a PUSH socket; call with `_push_lock` held."""
        try:
            # Frame by frame with plain int flags: send_multipart ORs enum.Flag
            # members in Python for each frame. ZeroMQ checks the high-water mark
            # on the first frame only, so a message goes whole or not at all.
            for frame in frames[:-1]:
                sock.send(frame, _SEND_MORE)
            sock.send(frames[-1], _SEND_LAST)
        except zmq.Again:
            self.push_dropped += 1
            self._dropped_metric.labels(self.proc, route).inc()
            # The peer is gone or slow; the depot still holds the data.
            print(
                f"storscp {self.proc}: {route} queue full, dropped {type(msg).__name__}: {msg}",
                file=sys.stderr,
                flush=True,
            )
        except zmq.ZMQError as exc:
            self.push_dropped += 1
            self._dropped_metric.labels(self.proc, route).inc()
            log.error("cannot send to %s: %s", route, exc)

    def _report_refused(self) -> None:
        refused = self.refused
        if refused > self._refused_reported:
            self._report(
                what="outbox full, events dropped",
                dropped=refused - self._refused_reported,
                max_queued=MAX_QUEUED,
            )
            self._refused_reported = refused

    def _report(self, **fields: bus.FieldValue) -> None:
        """An ERROR event of this outbox itself, if the logger route works."""
        if self._stream is None:
            return
        try:
            self._stream.add(bus.Event(bus.EventType.ERROR, self.proc, fields))
        except Exception:  # reported on stderr above; nothing more to try
            log.exception("cannot report an outbox failure")

    def _finish(self) -> None:
        """At close: wait for the logger to acknowledge what is held, at most linger_ms."""
        stream = self._stream
        if stream is None:
            return
        deadline = time.monotonic() + self._linger_ms / 1000
        stream.service()
        while not stream.idle:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stream.wait(min(left, POLL_S))
            stream.service()
