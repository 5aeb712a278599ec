"""The logger's writer on a failing disk: /dev/full gives a real ENOSPC."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storscp import bus
from storscp.instruments import sample_value
from storscp.logger import writer as writer_module
from storscp.logger.counting import LogCounter
from storscp.logger.lines import parse_line
from storscp.logger.logfile import AlternatingLog
from storscp.logger.streams import Verdict
from storscp.logger.writer import LogWriter

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


class Clock:
    """A clock the test moves, so retries happen without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(n: int) -> bus.Event:
    return bus.Event(bus.EventType.WRITE, "committer", {"seq": n})


def seqs(path: Path) -> list[str]:
    lines = [parse_line(raw) for raw in path.read_text().splitlines()]
    return [str(p.get("seq")) for p in lines if p is not None and p.type == "WRITE"]


def test_full_disk_keeps_lines_and_writes_them_when_space_returns(tmp_path: Path) -> None:
    # Given a log file on a "disk" that is full
    current = tmp_path / "storscp1.log"
    current.symlink_to("/dev/full")
    clock = Clock()
    writer = LogWriter(AlternatingLog(tmp_path, 100_000), "logger", clock=clock)
    # When events arrive, they wait in memory; the writer does not raise
    for n in range(5):
        writer.write(event(n))
    assert writer.failure is not None and "No space left" in writer.failure.reason
    assert len(writer.backlog) == 5
    writer.tick()  # too early to retry
    assert len(writer.backlog) == 5
    # When space returns, the next retry writes them in order, then one ERROR
    current.unlink()
    clock.now += writer_module.RETRY_INTERVAL_S
    writer.tick()
    assert writer.failure is None and not writer.backlog
    assert seqs(current) == ["0", "1", "2", "3", "4"]
    last = parse_line(current.read_text().splitlines()[-1])
    assert last is not None and last.type == "ERROR" and last["what"] == "log write failed"
    assert last["lines_dropped"] == "0" and "No space left" in last["reason"]
    writer.write(event(5))
    assert seqs(current)[-1] == "5"
    writer.close()


def test_an_event_is_acknowledged_once_its_line_is_in_the_file_not_before(tmp_path: Path) -> None:
    # Given a full disk: the event is received and kept in memory, not written
    current = tmp_path / "storscp1.log"
    current.symlink_to("/dev/full")
    clock = Clock()
    writer = LogWriter(AlternatingLog(tmp_path, 100_000), "logger", clock=clock)
    origin = "42-0000abcd"
    for seq in (1, 2):
        assert writer.streams.admit(origin, seq, 1) is Verdict.WRITE
        writer.write(event(seq), origin, seq)
    # Then nothing is acknowledged: the sender must keep both
    assert writer.streams.take_acks() == []
    # When space returns and the retry writes them, then both are acknowledged
    current.unlink()
    clock.now += writer_module.RETRY_INTERVAL_S
    writer.tick()
    assert seqs(current) == ["1", "2"]
    assert writer.streams.take_acks() == [(origin, 2)]
    assert f"ev={origin}:2 " in current.read_text()
    writer.close()


def test_a_full_backlog_stops_accepting_and_counts_what_it_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "BACKLOG_MAX_LINES", 3)
    (tmp_path / "storscp1.log").symlink_to("/dev/full")
    clock = Clock()
    writer = LogWriter(AlternatingLog(tmp_path, 100_000), "logger", clock=clock)
    for n in range(3):
        writer.write(event(n))
    assert not writer.accepting
    writer.write(event(3))
    assert writer.dropped == 1
    (tmp_path / "storscp1.log").unlink()
    clock.now += writer_module.RETRY_INTERVAL_S
    writer.tick()
    assert writer.accepting
    assert seqs(tmp_path / "storscp1.log") == ["0", "1", "2"]
    assert "lines_dropped=1" in (tmp_path / "storscp1.log").read_text()
    writer.close()


def test_stop_while_failing_puts_the_backlog_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "storscp1.log").symlink_to("/dev/full")
    writer = LogWriter(AlternatingLog(tmp_path, 100_000), "logger", clock=Clock())
    writer.write(event(7))
    writer.close()
    assert "unwritten: " in capsys.readouterr().err


def test_metrics_count_lines_failures_and_drops_and_beat_only_while_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "BACKLOG_MAX_LINES", 2)
    counter = LogCounter()
    counter.metrics.heartbeat.interval_s = 0  # a beat is due at every update
    m = counter.metrics
    writer = LogWriter(AlternatingLog(tmp_path, 100_000), "logger", clock=Clock())
    writer.write(event(0))
    counter.update(writer)
    assert sample_value(m.lines_written, "storscp_log_lines_written_total") == 1
    heartbeat = m.heartbeat.gauge
    name = "storscp_heartbeat_timestamp_seconds"
    beat = sample_value(heartbeat, name, component="logger")
    assert beat is not None and beat > 0
    # When the disk fills up: one failure, two lines kept, one dropped, no beat
    (tmp_path / "storscp1.log").unlink()
    (tmp_path / "storscp1.log").symlink_to("/dev/full")
    writer.logfile.reopen()
    for n in range(1, 4):
        writer.write(event(n))
    counter.update(writer)
    assert sample_value(m.write_failures, "storscp_log_write_failures_total") == 1
    dropped = sample_value(
        counter.dropped_family, "storscp_events_dropped_total", component="logger", queue="backlog"
    )
    assert dropped == 1
    assert sample_value(heartbeat, name, component="logger") == beat
    writer.close()


def test_issue_10_a_failing_fsync_is_said_once_then_at_a_bounded_rate(tmp_path: Path) -> None:
    # Given a log file whose writes work and whose fsync fails for real (EINVAL)
    (tmp_path / "storscp1.log").symlink_to("/dev/null")
    clock = Clock()
    writer = LogWriter(AlternatingLog(tmp_path, 100_000), "logger", clock=clock)
    writer.write(event(0))
    # When the logger ticks for an hour (it tries to fsync every second)
    for _ in range(3600):
        clock.now += writer_module.SYNC_INTERVAL_S
        writer.tick()
    # Then it said so once, then "still failing" at 1, 3, 7, 15, 31 minutes: not 3600 times
    assert writer.written - 1 == 1 + 5
    failing = writer.fsyncs.failing[str(tmp_path / "storscp1.log")]
    assert "Invalid argument" in failing.reason and failing.attempts > 60
