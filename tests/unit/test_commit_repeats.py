"""A ready file that cannot be committed, sweep after sweep, must not wipe the log.

The fault is real: a directory stands where the instance's file would go,
so the rename fails (EISDIR) at every attempt. The committer and its outbox
are real; the events are read from the logger's end of the bus. Only the
clock is the test's, so an hour of sweeps takes a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from storscp import bus
from storscp.config import Config, load
from storscp.outbox import Outbox
from storscp.repeats import Repeats
from support import dicomfiles as df
from support.committers import close, make_committer, put_ready

SWEEP_S = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def config(tmp_path: Path) -> Config:
    config = load(
        None,
        {"storage_dir": str(tmp_path / "s"), "run_dir": str(tmp_path / "run")},
        base_dir=tmp_path,
    )
    config.depot_dir.mkdir(parents=True)
    config.bus_dir.mkdir(parents=True)
    return config


@pytest.fixture
def logger_end(config: Config) -> Iterator[zmq.Socket[bytes]]:
    """The logger's end of the bus: a ROUTER, as in the logger (it acknowledges nothing)."""
    context = zmq.Context()
    router: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(bus.logger_endpoint(config.run_dir))
    yield router
    router.close()
    context.term()


def received(router: zmq.Socket[bytes]) -> list[bus.Event]:
    """The events that arrived, each once: unacknowledged ones may have been sent again."""
    events: dict[int, bus.Event] = {}
    while router.poll(200):
        msg = bus.decode(router.recv_multipart()[1:])  # after the sender's routing id
        assert isinstance(msg, bus.EventSent)
        events.setdefault(msg.seq, msg.event)
    return [events[seq] for seq in sorted(events)]


def test_issue_10_a_file_that_cannot_be_committed_is_said_to_fail_at_a_bounded_rate(
    config: Config, logger_end: zmq.Socket[bytes], tmp_path: Path
) -> None:
    outbox = Outbox("committer", {"logger": bus.logger_endpoint(config.run_dir)})
    outbox.start()
    outbox.event(bus.EventType.START)  # the bus is up once this one arrives
    assert logger_end.poll(10_000)
    logger_end.recv_multipart()
    committer = make_committer(config)
    committer.outbox = outbox
    clock = Clock()
    committer.repeats = Repeats(retry_s=SWEEP_S, clock=clock)
    try:
        # Given a ready file whose destination is taken by a directory
        source = tmp_path / "ct.dcm"
        uid = df.make_image(source, df.CT, seed=5, rows=8, columns=8)
        (config.storage_dir / f"{uid}.dcm" / "in-the-way").mkdir(parents=True)
        stuck = put_ready(committer.arrival, config.depot_dir, source, uid)
        # When the committer sweeps every 2 s for an hour
        for _ in range(int(3600 / SWEEP_S)):
            committer.commit_ready({}, read_back=True)
            clock.now += SWEEP_S
        # Then the failure was said once, then "still failing" at 1, 3, 7, 15 and 31 minutes
        outbox.close()
        failed = [e for e in received(logger_end) if e.fields.get("what") == "commit failed"]
        assert len(failed) == 1 + 5, [e.fields for e in failed]
        assert failed[0].fields["depot_file"] == stuck
        assert "Is a directory" in str(failed[0].fields["reason"])
        last = failed[-1].fields
        assert (last["state"], last["depot_file"]) == ("still failing", stuck)
        # tried every 2, 4, 8, 16, 32 s, then every minute: 35 attempts in 31 minutes
        assert last["since"] and int(str(last["attempts"])) == 35
        assert "Is a directory" in str(last["reason"])

        # And once the way is clear and another instance commits, it is retried at once
        committer.commit_ready({}, read_back=True)  # (it is backing off now, for a minute)
        assert not committer.repeats.due(stuck)
        (config.storage_dir / f"{uid}.dcm" / "in-the-way").rmdir()
        (config.storage_dir / f"{uid}.dcm").rmdir()
        other = tmp_path / "other.dcm"
        other_uid = df.make_image(other, df.CT, seed=6, rows=8, columns=8)
        put_ready(committer.arrival, config.depot_dir, other, other_uid)
        first = committer.commit_ready({}, read_back=True)
        assert [m.sop_instance_uid for m in first] == [other_uid]
        second = committer.commit_ready({}, read_back=True)
        assert [m.sop_instance_uid for m in second] == [uid]
        assert (config.storage_dir / f"{uid}.dcm").read_bytes() == source.read_bytes()
        assert committer.repeats.failing == {}
    finally:
        close(committer)
        outbox.close()
