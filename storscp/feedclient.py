"""A feed consumer: every message after a given seq, in order, once (zguide's Clone client).

It subscribes to the live PUB socket first, then asks the replay endpoint
for everything after its last seq, page by page; from then on it takes live
messages while they follow on (seq = last + 1), drops those it already has,
and replays again whenever it sees a gap: a live message or heartbeat ahead
of it (its subscription was late, or its queue overflowed while it was slow).
The history is the queue; the live socket only saves a round trip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import zmq

from storscp import bus
from storscp.errors import StorscpError

REQUEST_TIMEOUT_S = 5.0


class FeedError(StorscpError):
    """The feed cannot give what was asked; the message says why."""


class HistoryGap(FeedError):
    """What was asked for is older than the history: `history_start` is the oldest seq kept."""

    def __init__(self, page: bus.ReplayPage) -> None:
        super().__init__(f"history starts at {page.history_start} (asked for after {page.after})")
        self.history_start = page.history_start


class FeedClient:
    """Follows the feed from `after` (0: from the beginning of the history)."""

    def __init__(
        self,
        live_endpoint: str,
        replay_endpoint: str,
        after: int = 0,
        *,
        page_size: int = bus.REPLAY_PAGE_MAX,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.last = after
        self.page_size = page_size
        self.request_timeout_s = request_timeout_s
        self.replay_endpoint = replay_endpoint
        self.last_page: bus.ReplayPage | None = None
        self._context = zmq.Context()
        self._live: zmq.Socket[bytes] = self._context.socket(zmq.SUB)
        self._live.setsockopt(zmq.LINGER, 0)
        self._live.setsockopt(zmq.RCVHWM, bus.SEND_HWM)
        if live_endpoint.startswith("tcp://["):
            self._live.setsockopt(zmq.IPV6, 1)
        self._live.setsockopt(zmq.SUBSCRIBE, b"")
        # Subscribe before the first replay, so nothing falls between the two.
        self._live.connect(live_endpoint)
        self._replay: zmq.Socket[bytes] | None = None
        self._behind = True

    def close(self) -> None:
        self._live.close()
        if self._replay is not None:
            self._replay.close()
        self._context.term()

    def __enter__(self) -> FeedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- replay --------------------------------------------------------------------

    def catch_up(self) -> Iterator[bus.FeedMessage]:
        """Everything in the history after `last`, page by page, then stop."""
        while True:
            page, messages = self._request(self.last)
            fresh = [m for m in messages if m.seq > self.last]
            yield from self._advance(fresh)
            if not messages or self.last >= page.last_seq:
                self._behind = False
                return

    def _request(self, after: int) -> tuple[bus.ReplayPage, list[bus.FeedMessage]]:
        """One replay round trip; FeedError if nobody answers in time."""
        sock = self._replay_socket()
        sock.send_multipart([b"", *bus.encode(bus.ReplayRequest(after, self.page_size))])
        deadline = time.monotonic() + self.request_timeout_s
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not sock.poll(left_ms):
                # A lost request or a stale answer: start over with a fresh socket.
                self._drop_replay_socket()
                raise FeedError(
                    f"no answer from {self.replay_endpoint} in {self.request_timeout_s}s"
                )
            frames = sock.recv_multipart()
            page, messages = bus.decode_page(frames[1:] if frames[:1] == [b""] else frames)
            if page.after != after:
                continue  # the answer to an earlier request that timed out
            self.last_page = page
            if page.error.startswith("history starts at"):
                raise HistoryGap(page)
            if page.error:
                raise FeedError(f"{self.replay_endpoint}: {page.error}")
            return page, messages

    def _replay_socket(self) -> zmq.Socket[bytes]:
        if self._replay is None:
            sock: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if self.replay_endpoint.startswith("tcp://["):
                sock.setsockopt(zmq.IPV6, 1)
            sock.connect(self.replay_endpoint)
            self._replay = sock
        return self._replay

    def _drop_replay_socket(self) -> None:
        if self._replay is not None:
            self._replay.close()
            self._replay = None

    # -- live ----------------------------------------------------------------------

    def receive(self, timeout_s: float) -> list[bus.FeedMessage]:
        """The next messages in order (empty if none came within `timeout_s`)."""
        if self._behind:
            return list(self.catch_up())
        if not self._live.poll(int(timeout_s * 1000)):
            return []
        out: list[bus.FeedMessage] = []
        while True:
            try:
                frames = self._live.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return out
            try:
                msg = bus.decode(frames)
            except bus.BusError:
                continue
            if isinstance(msg, bus.FeedHeartbeat):
                if msg.seq > self.last:
                    self._behind = True  # we missed the newest: the next call replays
                continue
            if not isinstance(msg, bus.InstanceCommitted | bus.StudyComplete):
                continue
            if msg.seq <= self.last:
                continue  # had it from the replay
            if msg.seq == self.last + 1:
                out += self._advance([msg])
                continue
            # A gap: everything up to msg is in the history (durable before it was sent).
            out += self.catch_up()
            return out

    def follow(self, poll_s: float = 1.0) -> Iterator[bus.FeedMessage]:
        """Every message, for ever: the history first, then live."""
        while True:
            yield from self.receive(poll_s)

    def _advance(self, messages: list[bus.FeedMessage]) -> list[bus.FeedMessage]:
        for msg in messages:
            self.last = msg.seq
        return messages


def as_json_line(msg: bus.FeedMessage) -> str:
    """One feed message as a JSON line: {"kind": ..., fields...} (for `storscp feed`)."""
    body = {"kind": msg.KIND.decode("ascii")}
    body.update(json.loads(bus.encode(msg)[1]))
    body.pop("v", None)
    return json.dumps(body, ensure_ascii=False)
