"""The logger's table of senders: each (origin, seq) written once, in order; the tail read back."""

from __future__ import annotations

from pathlib import Path

from storscp import bus
from storscp.logger import streams as streams_module
from storscp.logger.lines import encode_event
from storscp.logger.streams import Streams, Verdict, read_known

A = "101-0000000a"
B = "202-0000000b"


def admit_all(streams: Streams, origin: str, seqs: list[int], floor: int = 1) -> list[Verdict]:
    return [streams.admit(origin, seq, floor) for seq in seqs]


def test_events_in_order_are_written_and_a_resent_one_is_a_duplicate() -> None:
    streams = Streams()
    assert admit_all(streams, A, [1, 2, 3]) == [Verdict.WRITE] * 3
    assert admit_all(streams, A, [1, 2, 3]) == [Verdict.DUPLICATE] * 3


def test_an_event_that_skips_ahead_waits_for_the_ones_before_it() -> None:
    # Given 1 written, when 3 arrives before 2 (2 died in a killed logger's queue)
    streams = Streams()
    assert streams.admit(A, 1, 1) is Verdict.WRITE
    assert streams.admit(A, 3, 1) is Verdict.EARLY
    # Then only the resent 2, then 3 again, are written: the log keeps the sender's order.
    assert admit_all(streams, A, [2, 3]) == [Verdict.WRITE, Verdict.WRITE]


def test_the_floor_lets_an_event_skip_what_its_sender_gave_up() -> None:
    streams = Streams()
    assert admit_all(streams, A, [1, 2]) == [Verdict.WRITE] * 2
    # The sender dropped 3..9 (its bound) and holds 10 onwards.
    assert streams.admit(A, 10, 10) is Verdict.WRITE
    assert streams.admit(A, 11, 10) is Verdict.WRITE


def test_an_unknown_origin_starts_at_its_floor_only() -> None:
    # A sender the logger has never seen (or forgot) resends from the oldest it holds.
    streams = Streams()
    assert streams.admit(B, 5, 3) is Verdict.EARLY
    assert admit_all(streams, B, [3, 4, 5], floor=3) == [Verdict.WRITE] * 3


def test_origins_are_independent() -> None:
    streams = Streams()
    assert admit_all(streams, A, [1, 2]) == [Verdict.WRITE] * 2
    assert admit_all(streams, B, [1, 2]) == [Verdict.WRITE] * 2


def test_acks_name_what_is_written_not_what_is_accepted() -> None:
    streams = Streams()
    admit_all(streams, A, [1, 2, 3])
    assert streams.take_acks() == []  # accepted, but nothing in the file yet
    streams.written(A, 2)
    assert streams.take_acks() == [(A, 2)]
    assert streams.take_acks() == []
    # A duplicate is acknowledged again: its sender needs to hear it.
    streams.admit(A, 1, 1)
    assert streams.take_acks() == [(A, 2)]


def test_a_rejected_event_is_taken_when_it_comes_again() -> None:
    # The writer could not keep it (backlog full): its sender still holds it.
    streams = Streams()
    admit_all(streams, A, [1, 2])
    streams.reject(A, 2)
    assert streams.admit(A, 2, 1) is Verdict.WRITE


def test_the_table_is_bounded_and_forgets_the_least_recently_heard() -> None:
    streams = Streams()
    for n in range(streams_module.MAX_ORIGINS + 1):
        streams.admit(f"{n}-00000000", 1, 1)
    assert len(streams) == streams_module.MAX_ORIGINS
    assert streams.admit("0-00000000", 1, 1) is Verdict.WRITE  # forgotten: new again
    assert streams.admit(f"{streams_module.MAX_ORIGINS}-00000000", 1, 1) is Verdict.DUPLICATE


def write_log(path: Path, events: list[tuple[str | None, int]], pad: int = 0) -> None:
    """Lines as the logger writes them; `pad` bytes of filler in each."""
    with open(path, "ab") as fh:
        for origin, seq in events:
            event = bus.Event(
                bus.EventType.WRITE,
                "committer",
                {"calling_ae": f"x ev={B}:999999", "filler": "f" * pad},
                time="2026-11-27T10:00:00.000+01:00",
            )
            event_id = f"{origin}:{seq}" if origin else None
            fh.write(encode_event(event, 256_000_000, event_id))


def test_a_restarted_logger_knows_the_last_event_of_each_origin(tmp_path: Path) -> None:
    write_log(tmp_path / "storscp2.log", [(A, 1), (A, 2), (B, 7)])
    write_log(tmp_path / "storscp1.log", [(A, 3), (None, 0), (A, 4)])  # written last
    # A peer-controlled value that looks like an id (`calling_ae`) is not one.
    assert read_known(tmp_path) == {A: 4, B: 7}


def test_the_read_back_is_bounded_to_the_newest_lines(tmp_path: Path) -> None:
    # Given a large log: one origin only at its start, another near its end
    path = tmp_path / "storscp1.log"
    write_log(path, [(B, 1)])
    write_log(path, [(None, 0)] * 200, pad=1000)
    write_log(path, [(A, 5)])
    # Then reading back the newest 64 KB finds the second and not the first.
    assert read_known(tmp_path, tail_bytes=64 * 1024) == {A: 5}
    assert read_known(tmp_path) == {A: 5, B: 1}
