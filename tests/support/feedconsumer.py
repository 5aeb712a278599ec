"""A feed consumer for the tests: follows the feed in a thread, as a downstream system would.

It records every message with the moment it arrived and whether the file it
names was already there (a message must never come before its file), and it
can be stopped and resumed from its last seq, like a consumer that restarts.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from storscp import bus
from storscp.feedclient import FeedClient


def endpoints(run_dir: Path, live: str = "", replay: str = "") -> tuple[str, str]:
    """The feed's (live, replay) endpoints of a service: configured ones, or its ipc defaults."""
    return bus.feed_live_endpoint(run_dir, live), bus.feed_replay_endpoint(run_dir, replay)


@dataclass
class Received:
    message: bus.FeedMessage
    at: float  # time.time() at receipt
    file_existed: bool


@dataclass
class Consumer:
    """Follows the feed from `after`; start(), stop(), start() again resumes."""

    live: str
    replay: str
    after: int = 0
    # Small pages make a replay take many round trips while live messages
    # arrive: the switch from replay to live is then exercised, not luck.
    page_size: int = bus.REPLAY_PAGE_MAX
    received: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def last(self) -> int:
        return self.received[-1].message.seq if self.received else self.after

    def start(self) -> Consumer:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="feed-consumer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            assert not self._thread.is_alive(), "consumer did not stop"

    def _run(self) -> None:
        try:
            with FeedClient(self.live, self.replay, self.last, page_size=self.page_size) as client:
                while not self._stop.is_set():
                    for msg in client.receive(0.1):
                        exists = not isinstance(msg, bus.InstanceCommitted) or os.path.exists(
                            msg.path
                        )
                        self.received.append(Received(msg, time.time(), exists))
        except Exception as exc:  # reported by the test
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def instances(self) -> list[bus.InstanceCommitted]:
        return [r.message for r in self.received if isinstance(r.message, bus.InstanceCommitted)]

    def studies(self) -> list[bus.StudyComplete]:
        return [r.message for r in self.received if isinstance(r.message, bus.StudyComplete)]

    def seqs(self) -> list[int]:
        return [r.message.seq for r in self.received]
