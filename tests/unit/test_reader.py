"""Reading and following the two files across alternations (real files)."""

from __future__ import annotations

import os
from pathlib import Path

from storscp.logger.logfile import AlternatingLog
from storscp.logger.reader import LogFollower, read_lines

LIMIT = 100


def line(n: int) -> bytes:
    return f"{n:04d}".encode().ljust(19, b".") + b"\n"  # 20 bytes: five per file


def test_read_lines_is_older_file_then_newer(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    for i in range(13):  # 1: 10-12 (newest), 2: 5-9
        log.write_line(line(i))
    os.utime(tmp_path / "storscp2.log", ns=(1, 1))
    assert read_lines(tmp_path) == [line(i) for i in range(5, 13)]


def test_no_files_no_lines(tmp_path: Path) -> None:
    assert read_lines(tmp_path) == []


def test_follow_returns_every_line_once_across_alternations(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    follower = LogFollower(tmp_path)
    seen: list[bytes] = []
    for i in range(53):  # ten alternations, polled every 3 lines
        log.write_line(line(i))
        if i % 3 == 2:
            seen += follower.poll()
    seen += follower.poll()
    assert seen == [line(i) for i in range(53)]
    assert follower.lost == 0


def test_follow_does_not_return_a_half_written_line(tmp_path: Path) -> None:
    follower = LogFollower(tmp_path)
    with open(tmp_path / "storscp1.log", "ab") as fh:
        fh.write(b"0001 whole\n0002 ha")
        fh.flush()
        assert follower.poll() == [b"0001 whole\n"]
        fh.write(b"lf\n")
        fh.flush()
        assert follower.poll() == [b"0002 half\n"]


def test_follow_after_two_alternations_between_polls_says_lines_were_lost(
    tmp_path: Path,
) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    follower = LogFollower(tmp_path, LIMIT)
    log.write_line(line(0))
    assert follower.poll() == [line(0)]
    for i in range(1, 12):  # 1: 0-4, 2: 5-9, 1 (emptied): 10-11
        log.write_line(line(i))
    assert follower.poll() == [line(i) for i in range(5, 12)]
    assert (follower.lost, follower.maybe_lost) == (1, 0)


def test_issue_10_two_alternations_after_a_whole_file_was_read_lose_nothing_for_sure(
    tmp_path: Path,
) -> None:
    # Given a follower that read file 1 to its very end (full: no line fits after it)
    log = AlternatingLog(tmp_path, LIMIT)
    follower = LogFollower(tmp_path, LIMIT)
    for i in range(5):
        log.write_line(line(i))
    assert follower.poll() == [line(i) for i in range(5)]
    # When the logger fills file 2 and empties file 1 again before the next poll
    for i in range(5, 12):
        log.write_line(line(i))
    # Then nothing was missed, and the follower does not claim a loss, only a possibility
    assert follower.poll() == [line(i) for i in range(5, 12)]
    assert (follower.lost, follower.maybe_lost) == (0, 1)


def test_follow_survives_the_current_file_deleted_by_hand(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    follower = LogFollower(tmp_path)
    log.write_line(line(0))
    assert follower.poll() == [line(0)]
    (tmp_path / "storscp1.log").unlink()
    log.write_line(line(1))
    assert follower.poll() == [line(1)]
