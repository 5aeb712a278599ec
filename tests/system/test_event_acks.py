"""The logger's side of event delivery, spoken to by a sender the test controls.

A raw DEALER with an origin of its own sends numbered events (bus.EventSent)
to a real logger process, resends as a sender does after a restart, and
reads the acknowledgements. The promises:
- an acknowledgement means the line is in the file: a logger that received
  events but could not write them acknowledges none of them;
- a resent event is written once, also by a logger restarted after kill -9
  (it reads its newest lines back);
- the log keeps each sender's order: an event that skips ahead waits.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import zmq

from storscp import bus
from support.lonelogger import LoneLogger
from support.service import poll_for

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


class RawSender:
    """A DEALER that speaks the logger protocol one step at a time."""

    def __init__(self, endpoint: str) -> None:
        self.origin = bus.new_origin()
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, self.origin.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.acked = 0

    def send(self, seqs: range | list[int], floor: int = 1) -> None:
        for seq in seqs:
            event = bus.Event(bus.EventType.WRITE, "raw", {"n": seq})
            self.sock.send_multipart(bus.encode(bus.EventSent(seq, floor, event)))

    def read_acks(self, wait_s: float) -> int:
        """The highest acknowledgement that arrives within `wait_s`."""
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(left * 1000):
            msg = bus.decode(self.sock.recv_multipart())
            assert isinstance(msg, bus.Ack)
            self.acked = max(self.acked, msg.seq)
        return self.acked

    def wait_ack(self, seq: int, timeout_s: float = 30) -> None:
        poll_for(lambda: self.read_acks(0.1) >= seq, timeout_s, f"the ack of {seq}")

    def close(self) -> None:
        self.sock.close()
        self.context.term()


@pytest.fixture
def logger() -> Iterator[LoneLogger]:
    lone = LoneLogger()
    yield lone
    lone.close()


@pytest.fixture
def sender(logger: LoneLogger) -> Iterator[RawSender]:
    raw = RawSender(logger.endpoint)
    yield raw
    raw.close()


def written(logger: LoneLogger, origin: str) -> list[int]:
    return [int(p["n"]) for p in logger.lines("WRITE", proc="raw") if p["ev"].startswith(origin)]


def test_events_received_but_not_written_are_not_acknowledged(
    logger: LoneLogger, sender: RawSender
) -> None:
    # Given a logger whose disk is full
    logger.log_dir.mkdir()
    (logger.log_dir / "storscp1.log").symlink_to("/dev/full")
    logger.start(disk_full=True)
    # When a sender sends 100 events, the logger takes them (its stop puts them on stderr)
    sender.send(range(1, 101))
    assert sender.read_acks(1.5) == 0
    logger.stop()
    unwritten = [line for line in logger.stderr().splitlines() if "unwritten: " in line]
    assert len([line for line in unwritten if f"ev={sender.origin}:" in line]) == 100
    # Then it acknowledged none of them
    assert sender.read_acks(0.5) == 0
    # And when the disk has room again, the next logger writes what the sender resends
    (logger.log_dir / "storscp1.log").unlink()
    logger.start()
    sender.send(range(1, 101))
    sender.wait_ack(100)
    assert written(logger, sender.origin) == list(range(1, 101))


def test_a_resent_event_is_written_once_also_after_kill_9_of_the_logger(
    logger: LoneLogger, sender: RawSender
) -> None:
    logger.start()
    # Given 50 events written and acknowledged
    sender.send(range(1, 51))
    sender.wait_ack(50)
    # When they are sent again, nothing is written twice, and they are acknowledged again
    sender.send(range(1, 11))
    assert sender.read_acks(0.5) == 50
    # When the logger is killed and restarted, and the sender resends from its oldest event
    logger.kill()
    logger.start()
    sender.send(range(1, 61))
    sender.wait_ack(60)
    # Then each event is in the log once, in order
    assert written(logger, sender.origin) == list(range(1, 61))


def test_an_event_that_skips_ahead_is_written_after_the_ones_before_it(
    logger: LoneLogger, sender: RawSender
) -> None:
    logger.start()
    sender.send([1, 3])
    assert sender.read_acks(0.5) == 1  # 3 waits for 2: dropped, not acknowledged
    sender.send([2, 3])
    sender.wait_ack(3)
    # A floor above the last written says the sender gave the gap up: 4..6 never come.
    sender.send([7], floor=7)
    sender.wait_ack(7)
    assert written(logger, sender.origin) == [1, 2, 3, 7]
