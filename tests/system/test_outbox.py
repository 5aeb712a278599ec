"""The outbox against a real logger: it cannot die silently, and what it holds is bounded.

Issue 10, item 4: the sending thread used to catch only ZeroMQ errors; any
other exception ended it, after which `post()` filled an unbounded queue
and no event ever arrived again.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from typing import Any, cast

import pytest
import zmq

from storscp import bus, eventstream, outbox
from storscp.outbox import Outbox
from support.lonelogger import LoneLogger
from support.service import poll_for


@pytest.fixture
def logger() -> Iterator[LoneLogger]:
    lone = LoneLogger().start()
    yield lone
    lone.close()


def test_issue_10_4_a_message_that_fails_does_not_stop_the_outbox(logger: LoneLogger) -> None:
    # Given a running outbox
    box = Outbox("probe", {"logger": logger.endpoint})
    box.start()
    try:
        # When one event cannot be encoded (a value JSON does not know) and
        # another is posted to a route that does not exist
        box.event(bus.EventType.WRITE, n=1, bad=cast(Any, object()))
        box.post("nowhere", bus.Event(bus.EventType.WRITE, "probe", {"n": 2}))
        # Then the next event still arrives
        box.event(bus.EventType.WRITE, n=3)
        poll_for(lambda: logger.lines("WRITE", proc="probe", n="3"), 30, "the event after them")
    finally:
        box.close()
    # And both failures were counted and reported, with what was dropped
    assert box.failed == 2 and box.dropped == 2
    errors = logger.lines("ERROR", proc="probe", what="outbox dropped a message")
    assert [(e["kind"], e["route"]) for e in errors] == [("Event", "logger"), ("Event", "nowhere")]
    assert "TypeError" in errors[0]["reason"] and "KeyError" in errors[1]["reason"]
    assert logger.lines("WRITE", proc="probe", n="1") == []


def test_issue_10_4_the_queue_is_bounded_when_the_thread_does_not_take(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an outbox whose thread takes nothing (here: never started)
    box = Outbox("probe", {"logger": "ipc:///nonexistent/logger.sock"})
    # When more than MAX_QUEUED events are posted
    for n in range(outbox.MAX_QUEUED + 50):
        box.event(bus.EventType.WRITE, n=n)
    # Then it holds MAX_QUEUED, counts the rest as dropped and says so on stderr
    assert box.queued == outbox.MAX_QUEUED
    assert box.refused == 50 and box.dropped == 50
    assert "outbox full (10000 queued" in capsys.readouterr().err


def test_a_sender_holds_at_most_max_held_events_and_reports_what_it_dropped(
    logger: LoneLogger,
) -> None:
    # Given no logger
    logger.stop()
    box = Outbox("probe", {"logger": logger.endpoint}, linger_ms=30_000)
    box.start()
    extra = 25
    try:
        # When a sender posts MAX_HELD + 25 events
        for n in range(eventstream.MAX_HELD + extra):
            box.event(bus.EventType.WRITE, n=n)
        poll_for(lambda: box.queued == 0, 30, "the outbox to take every event")
        # And the logger comes back
        logger.start()
        poll_for(
            lambda: logger.lines("ERROR", proc="probe"), 60, "the sender's report of its drops"
        )
    finally:
        box.close(timeout_s=60)
    # Then the 25 oldest are gone, the others written in order, and one ERROR says so
    written = [int(p["n"]) for p in logger.lines("WRITE", proc="probe")]
    assert written == list(range(extra, eventstream.MAX_HELD + extra))
    (error,) = logger.lines("ERROR", proc="probe")
    assert error["what"] == "events dropped unacknowledged by the logger"
    assert error["dropped"] == str(extra) and error["held_max"] == str(eventstream.MAX_HELD)
    assert box.dropped == extra


def test_events_that_died_with_a_killed_logger_go_to_the_next_one(
    logger: LoneLogger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the new logger's handshake may trigger the resend here, not the last-resort timer.
    monkeypatch.setattr(eventstream, "RESEND_MIN_S", 600.0)
    box = Outbox("probe", {"logger": logger.endpoint}, linger_ms=30_000)
    box.start()
    try:
        box.event(bus.EventType.WRITE, n=0)
        poll_for(lambda: logger.lines("WRITE", proc="probe"), 30, "the first event")
        # Given events that reached a logger which never wrote them (frozen, then killed)
        assert logger.proc is not None
        os.kill(logger.proc.pid, signal.SIGSTOP)
        for n in range(1, 51):
            box.event(bus.EventType.WRITE, n=n)
        poll_for(lambda: box.queued == 0, 30, "the outbox to take the events")
        logger.kill()
        # When the next logger starts, then the sender sends them again, and they are written once
        logger.start()
        poll_for(lambda: len(logger.lines("WRITE", proc="probe")) >= 51, 30, "the 50 events")
    finally:
        box.close(timeout_s=60)
    assert [int(p["n"]) for p in logger.lines("WRITE", proc="probe")] == list(range(51))


STORED = bus.InstanceStored("t_1.2.ready", "1.2", "1.2.3", "1.2.840.10008.1.2.1", 10, "AE")


@pytest.fixture
def committer(tmp_path: Any) -> Iterator[tuple[str, zmq.Socket[bytes]]]:
    """A real PULL socket standing in for the committer: (its address, the socket)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = context.socket(zmq.PULL)
    address = f"ipc://{tmp_path}/committer.sock"
    pull.bind(address)
    yield address, pull
    pull.close()
    context.term()


def test_a_push_message_that_fails_is_counted_and_reported_and_the_next_arrives(
    logger: LoneLogger, committer: tuple[str, zmq.Socket[bytes]]
) -> None:
    # Given an outbox with a PUSH route to a real PULL socket: its messages
    # are sent by the posting thread itself, not by the outbox thread
    address, pull = committer
    box = Outbox("probe", {"logger": logger.endpoint, "committer": address})
    box.start()
    try:
        # When one cannot be encoded (a UID that is not a string) and a good one follows
        box.post("committer", dataclasses.replace(STORED, sop_instance_uid=cast(Any, 5)))
        box.post("committer", STORED)
        # Then the good one arrives, whole
        assert pull.poll(30_000)
        assert bus.decode(pull.recv_multipart()) == STORED
        # And the failure was counted and reported, with what was dropped
        poll_for(
            lambda: logger.lines("ERROR", proc="probe", what="outbox dropped a message"),
            30,
            "the ERROR event of the dropped message",
        )
    finally:
        box.close()
    assert box.failed == 1 and box.dropped == 1
    (error,) = logger.lines("ERROR", proc="probe", what="outbox dropped a message")
    assert (error["kind"], error["route"]) == ("InstanceStored", "committer")
    assert "AttributeError" in error["reason"]


def test_a_push_message_posted_before_the_sockets_exist_is_sent_once_they_do(
    logger: LoneLogger, committer: tuple[str, zmq.Socket[bytes]]
) -> None:
    # Given an outbox not yet started (its thread makes the sockets)
    address, pull = committer
    box = Outbox("probe", {"logger": logger.endpoint, "committer": address})
    try:
        # When a message for the committer is posted first, then the outbox starts
        box.post("committer", STORED)
        box.start()
        # Then the thread sends it on the socket it made: queued, not dropped
        assert pull.poll(30_000), "the early message never arrived"
        assert bus.decode(pull.recv_multipart()) == STORED
    finally:
        box.close()
    assert box.failed == 0 and box.dropped == 0
