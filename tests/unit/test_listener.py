"""Which PROCESS_STATE events become ERROR events, and with what fields."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from storscp.instruments import listener_metrics, sample_value
from storscp.supervisor.listener import acknowledge, count, error_for, tokens, wait_event


def write_logs(run_dir: Path) -> None:
    (run_dir / "supervisord.log").write_text(
        "2026-11-27 20:16:21,251 INFO spawned: 'receiver' with pid 102\n"
        "2026-11-27 20:16:21,900 WARN exited: receiver (exit status 69; not expected)\n"
        "2026-11-27 20:16:22,100 INFO spawned: 'logger' with pid 200\n"
        "2026-11-27 20:16:25,388 WARN exited: logger (terminated by SIGKILL; not expected)\n"
    )
    (run_dir / "receiver.out.log").write_text(
        "storscp receiver: cannot listen on 127.0.0.1:104: Address already in use\n"
    )


def test_unexpected_exit_names_program_pid_and_signal(tmp_path: Path) -> None:
    write_logs(tmp_path)
    payload = {
        "processname": "logger",
        "groupname": "logger",
        "from_state": "RUNNING",
        "expected": "0",
        "pid": "200",
    }
    fields = error_for("PROCESS_STATE_EXITED", payload, tmp_path)
    assert fields == {
        "what": "component exited unexpectedly",
        "program": "logger",
        "pid": 200,
        "signal": "SIGKILL",
        "expected": False,
        "from_state": "RUNNING",
        "to_state": "EXITED",
    }


def test_expected_exit_and_ordinary_states_are_not_errors(tmp_path: Path) -> None:
    payload = {"processname": "logger", "groupname": "logger", "expected": "1", "pid": "1"}
    assert error_for("PROCESS_STATE_EXITED", payload, tmp_path) is None
    for state in ("STARTING", "RUNNING", "STOPPING", "STOPPED"):
        assert error_for(f"PROCESS_STATE_{state}", {"processname": "x"}, tmp_path) is None


def test_fatal_carries_the_last_exit_and_the_reason(tmp_path: Path) -> None:
    write_logs(tmp_path)
    payload = {"processname": "receiver", "groupname": "receiver", "from_state": "BACKOFF"}
    fields = error_for("PROCESS_STATE_FATAL", payload, tmp_path)
    assert fields is not None
    assert fields["pid"] == 102 and fields["exit_status"] == 69
    assert fields["to_state"] == "FATAL" and fields["expected"] is False
    assert fields["reason"] == "cannot listen on 127.0.0.1:104: Address already in use"


def test_a_numbered_process_keeps_its_program_name(tmp_path: Path) -> None:
    payload = {"processname": "receiver_1", "groupname": "receiver", "tries": "2"}
    fields = error_for("PROCESS_STATE_BACKOFF", payload, tmp_path)
    assert fields is not None
    assert (fields["program"], fields["process"], fields["tries"]) == ("receiver", "receiver_1", 2)


def test_exits_and_automatic_restarts_are_counted_by_program() -> None:
    metrics = listener_metrics()
    exited = {"processname": "receiver_1", "groupname": "receiver", "expected": "0"}
    count(metrics, "PROCESS_STATE_EXITED", exited)
    count(metrics, "PROCESS_STATE_EXITED", {**exited, "expected": "1"})
    count(metrics, "PROCESS_STATE_STARTING", {**exited, "from_state": "EXITED"})
    count(metrics, "PROCESS_STATE_STARTING", {**exited, "from_state": "BACKOFF"})
    count(metrics, "PROCESS_STATE_STARTING", {**exited, "from_state": "STOPPED"})  # a manual start
    count(metrics, "PROCESS_STATE_RUNNING", exited)
    exits = "storscp_component_exits_total"
    assert sample_value(metrics.exits, exits, program="receiver", expected="false") == 1
    assert sample_value(metrics.exits, exits, program="receiver", expected="true") == 1
    restarts = "storscp_component_restarts_total"
    assert sample_value(metrics.restarts, restarts, program="receiver") == 2


def test_the_event_listener_protocol_by_hand_reads_one_event_and_answers() -> None:
    # Given supervisord's header line and a payload with its own header line
    payload = b"processname:committer groupname:committer from_state:RUNNING expected:0 pid:7\n"
    stdin = io.BytesIO(
        b"ver:3.0 server:supervisor serial:21 pool:listener poolserial:10 "
        b"eventname:PROCESS_STATE_EXITED len:%d\n" % len(payload) + payload + b"ver:3.0 len:0\n"
    )
    stdout = io.BytesIO()
    # When the listener waits for it and acknowledges it
    headers, body = wait_event(stdin, stdout)
    acknowledge(stdout)
    # Then it said READY first, read exactly `len` bytes, and answered RESULT 2 OK
    assert stdout.getvalue() == b"READY\nRESULT 2\nOK"
    assert headers["eventname"] == "PROCESS_STATE_EXITED" and headers["serial"] == "21"
    assert tokens(body.split("\n", 1)[0])["processname"] == "committer"
    assert wait_event(stdin, stdout) == ({"ver": "3.0", "len": "0"}, "")
    with pytest.raises(EOFError):
        wait_event(stdin, stdout)
