"""Alternation of storscp1.log / storscp2.log on real files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storscp.logger.logfile import AlternatingLog, oldest_first

LIMIT = 100


def line(n: int, size: int = 20) -> bytes:
    body = f"{n:04d}".encode().ljust(size - 1, b".")
    return body + b"\n"


def sizes(d: Path) -> tuple[int, int]:
    return tuple(  # type: ignore[return-value]
        (d / n).stat().st_size if (d / n).exists() else -1 for n in ("storscp1.log", "storscp2.log")
    )


def test_exactly_at_the_limit_stays(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    for i in range(5):
        log.write_line(line(i))  # 5 x 20 = 100 bytes, exactly the limit
    assert sizes(tmp_path) == (100, -1)
    log.write_line(line(5))  # one byte over would be 101: switch
    assert sizes(tmp_path) == (100, 20)
    assert log.current == 1


def test_switch_empties_the_other_file(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    for i in range(16):
        log.write_line(line(i))
    # 1: 0-4, 2: 5-9, 1 (emptied): 10-14, 2 (emptied): 15
    assert (tmp_path / "storscp2.log").read_bytes() == line(15)
    assert (tmp_path / "storscp1.log").read_bytes() == b"".join(line(i) for i in range(10, 15))
    assert max(sizes(tmp_path)) <= LIMIT


def test_line_longer_than_limit_is_cut_not_dropped(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    log.write_line(line(1))
    log.write_line(b"x" * 500 + b"\n")
    data = (tmp_path / "storscp2.log").read_bytes()
    assert len(data) == LIMIT and data.endswith(b" cut=true\n")
    assert data.startswith(b"x" * 80)


def test_restart_continues_in_the_file_written_last(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    for i in range(7):
        log.write_line(line(i))
    log.close()
    os.utime(tmp_path / "storscp1.log", ns=(1, 1))  # make the ordering unambiguous
    log = AlternatingLog(tmp_path, LIMIT)
    assert log.current == 1 and log.size == 40
    log.write_line(line(7))
    assert sizes(tmp_path) == (100, 60)


def test_both_files_missing_starts_with_file_1(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    log.write_line(line(0))
    assert sizes(tmp_path) == (20, -1)


def test_older_file_deleted(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    for i in range(7):
        log.write_line(line(i))
    log.close()
    (tmp_path / "storscp1.log").unlink()
    log = AlternatingLog(tmp_path, LIMIT)
    assert log.current == 1
    log.write_line(line(7))
    assert sizes(tmp_path) == (-1, 60)


def test_newer_file_deleted(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    for i in range(7):
        log.write_line(line(i))
    log.close()
    (tmp_path / "storscp2.log").unlink()
    time.sleep(0.01)
    log = AlternatingLog(tmp_path, LIMIT)
    assert log.current == 0 and log.size == 100
    log.write_line(line(7))  # file 1 is full: switch to a new file 2
    assert sizes(tmp_path) == (100, 20)


def test_one_byte_under_stays_one_byte_over_switches(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    log.write_line(b"a" * 98 + b"\n")  # 99
    log.write_line(b"\n")  # 100: exactly at the limit, stays
    assert sizes(tmp_path) == (100, -1)
    log.write_line(b"\n")  # 101 would be over: switch
    assert sizes(tmp_path) == (100, 1)


def test_current_file_deleted_while_running_is_created_again(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    log.write_line(line(0))
    (tmp_path / "storscp1.log").unlink()
    log.write_line(line(1))
    assert (tmp_path / "storscp1.log").read_bytes() == line(1)


def test_current_file_emptied_by_hand_is_measured_again(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    for i in range(4):
        log.write_line(line(i))
    (tmp_path / "storscp1.log").write_bytes(b"")
    for i in range(4, 9):
        log.write_line(line(i))  # five lines fit again: no early switch
    assert sizes(tmp_path) == (100, -1)


def test_restart_after_a_crash_mid_line_does_not_glue_lines(tmp_path: Path) -> None:
    (tmp_path / "storscp1.log").write_bytes(line(0) + b"0001 half a li")
    log = AlternatingLog(tmp_path, LIMIT)
    log.write_line(line(2))
    assert (tmp_path / "storscp1.log").read_bytes() == line(0) + b"0001 half a li\n" + line(2)


SHORT_WRITE = """
import os, resource, signal, sys
from pathlib import Path
import pytest

from storscp.logger.logfile import AlternatingLog
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (150, 150))
log = AlternatingLog(Path(sys.argv[1]), 1000)
log.write_line(b"a" * 59 + b"\\n")
log.write_line(b"b" * 59 + b"\\n")
try:
    log.write_line(b"c" * 59 + b"\\n")  # the kernel writes 30 of these 60 bytes
except OSError as exc:
    print("failed:", exc)
"""


def test_a_short_write_leaves_no_partial_line(tmp_path: Path) -> None:
    # A real short write from the kernel: a file size limit stops it at 150 bytes.
    result = subprocess.run(
        [sys.executable, "-c", SHORT_WRITE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "short write (30 of 60 bytes)" in result.stdout, result.stdout
    assert (tmp_path / "storscp1.log").read_bytes() == b"a" * 59 + b"\n" + b"b" * 59 + b"\n"


def test_oldest_first_orders_by_mtime(tmp_path: Path) -> None:
    log = AlternatingLog(tmp_path, LIMIT)
    for i in range(7):
        log.write_line(line(i))
    os.utime(tmp_path / "storscp1.log", ns=(1, 1))
    assert [p.name for p in oldest_first(log.paths)] == ["storscp1.log", "storscp2.log"]
    (tmp_path / "storscp1.log").unlink()
    assert [p.name for p in oldest_first(log.paths)] == ["storscp2.log"]


def test_a_lowered_limit_cuts_both_files_to_their_newest_lines(tmp_path: Path) -> None:
    # Given two files written under a limit of 1000 bytes
    older = b"".join(line(i) for i in range(0, 50))  # 1000 bytes
    newer = b"".join(line(i) for i in range(50, 60))  # 200 bytes
    (tmp_path / "storscp2.log").write_bytes(older)
    (tmp_path / "storscp1.log").write_bytes(newer)
    os.chmod(tmp_path / "storscp2.log", 0o640)
    os.utime(tmp_path / "storscp2.log", ns=(1, 1))
    # When the logger starts with a limit of 100 (and 110: not on a line boundary)
    for limit, whole_lines in ((100, 5), (110, 5)):
        log = AlternatingLog(tmp_path, limit)
        # Then each file holds its newest whole lines, within the limit
        assert (tmp_path / "storscp2.log").read_bytes() == older[-20 * whole_lines :]
        assert (tmp_path / "storscp1.log").read_bytes() == newer[-20 * whole_lines :]
        assert max(sizes(tmp_path)) <= limit
        # and the file written last is still the current one
        assert log.current == 0
        log.close()
        older, newer = older[-20 * whole_lines :], newer[-20 * whole_lines :]
        os.utime(tmp_path / "storscp2.log", ns=(1, 1))
    assert oct((tmp_path / "storscp2.log").stat().st_mode & 0o777) == oct(0o640)
    assert sorted(os.listdir(tmp_path)) == ["storscp1.log", "storscp2.log"]


def test_a_file_that_cannot_be_cut_is_left_whole_and_the_log_still_opens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content = b"".join(line(i) for i in range(20))  # 400 bytes
    (tmp_path / "storscp1.log").write_bytes(content)
    (tmp_path / "storscp1.log.cut").mkdir()  # a real EISDIR when the cut copy is made
    log = AlternatingLog(tmp_path, LIMIT)
    assert (tmp_path / "storscp1.log").read_bytes() == content
    assert "cannot cut" in capsys.readouterr().err
    log.write_line(line(20))  # over the limit: the other file takes it
    assert (tmp_path / "storscp2.log").read_bytes() == line(20)
    log.close()
