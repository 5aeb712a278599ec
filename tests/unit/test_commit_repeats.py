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

from storscp import bus, depotfiles
from storscp.committer.commit import Committer
from storscp.committer.recover import ready_names
from storscp.config import Config, load
from storscp.outbox import Outbox
from storscp.repeats import Repeats
from support import dicomfiles as df

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
    context = zmq.Context()
    pull: zmq.Socket[bytes] = context.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(bus.logger_endpoint(config.run_dir))
    yield pull
    pull.close()
    context.term()


def received(pull: zmq.Socket[bytes]) -> list[bus.Event]:
    events = []
    while pull.poll(200):
        msg = bus.decode(pull.recv_multipart())
        assert isinstance(msg, bus.Event)
        events.append(msg)
    return events


def test_issue_10_a_file_that_cannot_be_committed_is_said_to_fail_at_a_bounded_rate(
    config: Config, logger_end: zmq.Socket[bytes], tmp_path: Path
) -> None:
    outbox = Outbox("committer", {"logger": bus.logger_endpoint(config.run_dir)})
    outbox.start()
    outbox.event(bus.EventType.START)  # the bus is up once this one arrives
    assert logger_end.poll(10_000)
    logger_end.recv_multipart()
    committer = Committer(config, outbox)
    clock = Clock()
    committer.repeats = Repeats(retry_s=SWEEP_S, clock=clock)
    try:
        # Given a ready file whose destination is taken by a directory (made first:
        # today's committer drops a ready file older than what is in its place)
        source = tmp_path / "ct.dcm"
        uid = df.make_image(source, df.CT, seed=5, rows=8, columns=8)
        (config.storage_dir / f"{uid}.dcm" / "in-the-way").mkdir(parents=True)
        stuck = depotfiles.ready_name(uid)
        (config.depot_dir / stuck).write_bytes(source.read_bytes())
        # When the committer sweeps every 2 s for an hour
        for _ in range(int(3600 / SWEEP_S)):
            committer.commit_batch([(name, None) for name in ready_names(config.depot_dir)])
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
        (config.storage_dir / f"{uid}.dcm" / "in-the-way").rmdir()
        (config.storage_dir / f"{uid}.dcm").rmdir()
        other = tmp_path / "other.dcm"
        other_uid = df.make_image(other, df.CT, seed=6, rows=8, columns=8)
        fresh = depotfiles.ready_name(other_uid)
        (config.depot_dir / fresh).write_bytes(other.read_bytes())
        assert committer.commit_batch([(fresh, None)]) == 1
        assert committer.commit_batch([(stuck, None)]) == 1
        assert (config.storage_dir / f"{uid}.dcm").read_bytes() == source.read_bytes()
        assert committer.repeats.failing == {}
    finally:
        committer.close()
        outbox.close()
