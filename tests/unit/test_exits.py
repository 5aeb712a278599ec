"""Reading how a process ended back from supervisord's log (real Supervisor lines)."""

from __future__ import annotations

from pathlib import Path

from storscp.supervisor.exits import last_exit, last_line, startup_reason

LOG = """\
2026-11-27 20:16:10,001 INFO spawned: 'listener' with pid 100
2026-11-27 20:16:10,002 INFO spawned: 'receiver' with pid 101
2026-11-27 20:16:13,100 INFO success: receiver entered RUNNING state, process has stayed up
2026-11-27 20:16:21,249 WARN exited: receiver (terminated by SIGKILL; not expected)
2026-11-27 20:16:21,251 INFO spawned: 'receiver' with pid 102
2026-11-27 20:16:21,900 WARN exited: receiver (exit status 69; not expected)
2026-11-27 20:16:22,903 INFO spawned: 'receiver_0' with pid 103
2026-11-27 20:16:23,001 WARN exited: receiver_0 (terminated by SIGSEGV (core dumped); not expected)
2026-11-27 20:16:30,000 INFO stopped: listener (exit status 0)
"""


def test_last_exit_finds_status_and_pid(tmp_path: Path) -> None:
    log = tmp_path / "supervisord.log"
    log.write_text(LOG)
    ended = last_exit(log, "receiver")
    assert ended is not None
    assert (ended.pid, ended.exit_status, ended.signal, ended.expected) == (102, 69, None, False)


def test_last_exit_of_a_signal_and_of_a_numbered_process(tmp_path: Path) -> None:
    log = tmp_path / "supervisord.log"
    log.write_text(LOG)
    ended = last_exit(log, "receiver_0")
    assert ended is not None
    assert (ended.pid, ended.exit_status, ended.signal) == (103, None, "SIGSEGV")
    stopped = last_exit(log, "listener")
    assert stopped is not None
    assert (stopped.exit_status, stopped.expected) == (0, None)


def test_last_exit_without_log_or_entry(tmp_path: Path) -> None:
    assert last_exit(tmp_path / "missing.log", "receiver") is None
    log = tmp_path / "supervisord.log"
    log.write_text(LOG)
    assert last_exit(log, "committer") is None


def test_startup_reason_is_the_last_words_without_prefix(tmp_path: Path) -> None:
    child = tmp_path / "receiver.out.log"
    child.write_text(
        "2026-11-27 12:00:00 receiver[5] INFO x: starting\n"
        "storscp receiver: cannot listen on 127.0.0.1:104: Address already in use\n\n"
    )
    assert startup_reason(child) == "cannot listen on 127.0.0.1:104: Address already in use"
    assert last_line(tmp_path / "none.log") is None
