"""The sender's side of the logger route: numbered events, kept until written.

Owned by the outbox thread (one owner per socket). Each event gets the next
seq of this process incarnation and waits in `unsent`, then in `sent`,
until the logger acknowledges it (bus.Ack: everything up to seq is in the
log file). Held events are bounded (MAX_HELD); beyond, the oldest is
dropped, counted, said on stderr, and reported as an ERROR event once the
logger acknowledges again.

Events go to ZeroMQ only while a logger is connected (ZMQ_IMMEDIATE), and
at most SEND_HWM of them at a time; the rest wait here, where the bound
and the count apply. Sending never blocks. Everything not yet acknowledged
is sent again (go-back-N; the logger keeps order and drops duplicates):
- when the DEALER completes a handshake with a logger (the socket monitor's
  HANDSHAKE_SUCCEEDED): what the last one held unwritten died with it, and
  what ZeroMQ still queued for it was discarded at the disconnect;
- when nothing was acknowledged for `resend_after` seconds although events
  are out, as a last resort; the wait doubles each time up to RESEND_MAX_S,
  so a frozen logger is not flooded with copies.
An event dropped by the bound was never sent if the logger was away; if it
was frozen, up to SEND_HWM dropped ones may still reach it and be written.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import cast

import zmq

from storscp import bus

log = logging.getLogger(__name__)

MAX_HELD = 10_000
SEND_HWM = 1000
RESEND_MIN_S = 5.0
RESEND_MAX_S = 60.0
MAX_ACKS_PER_SERVICE = 1000
LOOK_INTERVAL_S = 0.01
STDERR_INTERVAL_S = 10.0

_Held = tuple[int, bytes]  # seq, the event's JSON frame


class EventStream:
    """Numbered, acknowledged delivery of events to the logger; one owner thread."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        proc: str,
        origin: str,
        max_held: int = MAX_HELD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proc = proc
        self.origin = origin
        self.max_held = max_held
        self.clock = clock
        self.sock: zmq.Socket[bytes] = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, origin.encode("ascii"))
        self.sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # no queue for a logger that is not there
        self.sock.setsockopt(zmq.LINGER, 0)  # what is unacknowledged at close is lost anyway
        self.monitor: zmq.Socket[bytes] = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self.sock.connect(endpoint)
        self.sent: deque[_Held] = deque()
        self.unsent: deque[_Held] = deque()
        self.next_seq = 1
        self.handshakes = 0
        self.resends = 0
        self.dropped = 0  # held events given up, in all
        self._unreported = 0  # ... of which the ERROR event has not yet been queued
        self._dropping_since = ""
        self._next_stderr = 0.0
        self.resend_after = RESEND_MIN_S
        self._resend_at: float | None = None
        self._next_look = 0.0
        self._blocked = False

    @property
    def held(self) -> int:
        return len(self.sent) + len(self.unsent)

    @property
    def idle(self) -> bool:
        """Nothing to send or to wait for."""
        return not self.sent and not self.unsent

    def add(self, event: bus.Event) -> None:
        """Number `event` and hold it; the oldest goes if too many are held."""
        self.unsent.append((self.next_seq, bus.event_body(event)))
        self.next_seq += 1
        if self.held > self.max_held:
            (self.sent or self.unsent).popleft()
            self._dropped_one()

    def service(self) -> None:
        """Send what waits; now and then read acknowledgements and handshakes, resend if due.

        The look at the sockets is rationed (LOOK_INTERVAL_S): it costs, per
        event at low rates, about a tenth of what sending costs, and nothing
        in it is urgent. A flush that finds ZeroMQ's queue full looks at once.
        """
        now = self.clock()
        if now >= self._next_look or self._blocked:
            self._next_look = now + LOOK_INTERVAL_S
            if _readable(self.monitor):
                self._read_monitor()
            if _readable(self.sock):
                self._read_acks()
            if self._resend_at is not None and now >= self._resend_at:
                self.resend_after = min(self.resend_after * 2, RESEND_MAX_S)
                self._rewind()
        self.flush()

    def flush(self) -> None:
        """Send the unsent events until ZeroMQ's queue is full."""
        if not self.unsent:
            return
        floor = self.sent[0][0] if self.sent else self.unsent[0][0]
        if not self.sent:
            self._resend_at = self.clock() + self.resend_after
        while self.unsent:
            seq, body = self.unsent[0]
            try:
                self.sock.send_multipart(bus.event_frames(body, seq, floor), zmq.NOBLOCK)
            except zmq.Again:
                self._blocked = True  # the logger is slow or away: they wait here
                return
            self.sent.append(self.unsent.popleft())
        self._blocked = False

    def wait(self, timeout_s: float) -> None:
        """Block until an acknowledgement or a handshake may have come, at most `timeout_s`."""
        zmq.select([self.sock, self.monitor], [], [], timeout_s)

    def close(self) -> None:
        """Close the sockets; say on stderr what the logger never acknowledged."""
        if self.held:
            print(
                f"storscp {self.proc}: {self.held} events not acknowledged by the logger"
                f" at exit (seq {self.next_seq - self.held}-{self.next_seq - 1})",
                file=sys.stderr,
                flush=True,
            )
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)

    def _read_monitor(self) -> None:
        while self.monitor.poll(0):
            event = self.monitor.recv_multipart()
            if len(event) != 2:
                continue
            self.handshakes += 1
            self._rewind()

    def _read_acks(self) -> None:
        acked = 0
        for _ in range(MAX_ACKS_PER_SERVICE):
            if not _readable(self.sock):
                break
            frames = self.sock.recv_multipart(zmq.NOBLOCK)
            try:
                msg = bus.decode(frames)
            except bus.BusError as exc:
                log.error("not an acknowledgement from the logger: %s", exc)
                continue
            if isinstance(msg, bus.Ack):
                acked = max(acked, msg.seq)
        if acked:
            self._release(acked)

    def _release(self, acked: int) -> None:
        released = False
        for held in (self.sent, self.unsent):
            while held and held[0][0] <= acked:
                held.popleft()
                released = True
        if not released:
            return
        # Progress: the logger is there. Say what was dropped while it was not.
        self.resend_after = RESEND_MIN_S
        self._resend_at = self.clock() + RESEND_MIN_S if self.sent else None
        if self._unreported:
            self.add(
                bus.Event(
                    bus.EventType.ERROR,
                    self.proc,
                    {
                        "what": "events dropped unacknowledged by the logger",
                        "dropped": self._unreported,
                        "since": self._dropping_since,
                        "held_max": self.max_held,
                    },
                )
            )
            self._unreported = 0

    def _rewind(self) -> None:
        """Go back to the oldest unacknowledged event."""
        if self.sent:
            self.resends += 1
            self.unsent.extendleft(reversed(self.sent))
            self.sent.clear()
        self._resend_at = None

    def _dropped_one(self) -> None:
        self.dropped += 1
        if not self._unreported:
            self._dropping_since = bus.now_iso()
        self._unreported += 1
        now = self.clock()
        if now >= self._next_stderr:
            self._next_stderr = now + STDERR_INTERVAL_S
            print(
                f"storscp {self.proc}: the logger has not acknowledged {self.max_held} events;"
                f" dropping the oldest ({self.dropped} so far)",
                file=sys.stderr,
                flush=True,
            )


def _readable(sock: zmq.Socket[bytes]) -> bool:
    """A message is waiting: ZMQ_EVENTS is a cheap look; a recv that fails raises, which is not."""
    return bool(cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN)
