"""The storscp command's answers, exit codes and refusals, on a real service."""

from __future__ import annotations

import fcntl
import os
import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import dicomfiles as df
from support.scu import storescu
from support.service import STORSCP, Service, alive, poll_for

STORAGE_MESSAGE = "An existing Storage SCP directory must be specified"
STATUS_LINE_RE = re.compile(
    r"^  (listener|logger|committer|feed|commitment|receiver|metrics)(?::receiver_\d+)?\s+RUNNING"
    r"\s+pid (\d+)"
    r"\s+uptime \d+:\d\d:\d\d$"
)


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def test_start_status_stop_answer_like_the_original_service(
    service_factory: type[Service],
) -> None:
    svc = service_factory().start_daemon()  # asserts "start request issued"

    again = svc.command("start")
    assert (again.returncode, again.stdout) == (0, "service already running\n")

    status = svc.command("status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == "service running"
    components = [STATUS_LINE_RE.match(line) for line in lines[1:-1]]
    assert all(components), lines
    assert re.fullmatch(r"  health\s+ok", lines[-1]), lines  # what /healthz says
    pids = [(m[1], int(m[2])) for m in components if m]
    programs = [name for name, _ in pids]
    assert programs[:5] == ["listener", "logger", "committer", "feed", "commitment"]
    assert set(programs[5:-1]) == {"receiver"}  # one per core (receivers = 0)
    assert programs[-1] == "metrics"
    assert all(alive(pid) for _, pid in pids)
    supervisord = svc.supervisord_pid()

    stop = svc.command("stop")
    assert (stop.returncode, stop.stdout) == (0, "stop request issued\n")
    assert not alive(supervisord), "stop returned before supervisord exited"
    assert not any(alive(pid) for _, pid in pids)

    again = svc.command("stop")
    assert (again.returncode, again.stdout) == (0, "service not running\n")
    status = svc.command("status")
    assert (status.returncode, status.stdout) == (3, "service not running\n")


def test_every_command_takes_the_same_flags_as_run(service_factory: type[Service]) -> None:
    svc = service_factory()
    svc.write_config()
    svc.storage_dir.mkdir()
    flags = ["--ae-title", "FLAGGED", "--extension", ".img"]
    start = svc.command("start", *flags)
    assert start.stdout == "start request issued\n", start.stderr
    svc.supervisord_pids.add(svc.supervisord_pid())
    svc.wait_event("START", 30, proc="receiver", ae_title="FLAGGED")
    # Flags that do not move run_dir address the same service.
    assert svc.command("status", "--ae-title", "OTHER").stdout.startswith("service running")
    assert svc.command("stop", *flags).stdout == "stop request issued\n"


def test_restart_applies_configuration_changes(
    service_factory: type[Service], short_tmp: Path
) -> None:
    svc = service_factory(ae_title="FIRST").start_daemon()
    supervisord = svc.supervisord_pid()
    before = {p.name: p.pid for p in svc.process_statuses()}
    starts_before = len(svc.events("START"))

    svc.keys.update(ae_title="SECOND", extension=".img")
    svc.write_config()
    result = svc.command("restart")
    assert (result.returncode, result.stdout) == (0, "restart request issued\n"), result.stderr

    after = {p.name: p.pid for p in svc.process_statuses()}
    assert set(after) == set(before)
    assert not set(after.values()) & set(before.values()), "some component was not restarted"
    assert svc.supervisord_pid() == supervisord  # in place: same supervisord, same socket
    receiver = svc.wait_event("START", 30, proc="receiver", ae_title="SECOND")[-1]
    assert int(receiver["port"]) == svc.port, "a restart keeps the port it listens on"
    poll_for(lambda: svc._all_started(starts_before), 30, "every START after restart")
    path = short_tmp / "after-restart.dcm"
    uid = df.make_image(path, df.CT, seed=4242)
    # Called AE titles are checked (require_called_aet): the new title is the one to call.
    assert storescu(svc.port, [path], called_ae="SECOND").returncode == 0
    poll_for(lambda: (svc.storage_dir / f"{uid}.img").exists(), 30, "the .img file")


def test_restart_of_a_stopped_service_starts_it(service_factory: type[Service]) -> None:
    svc = service_factory()
    svc.write_config()
    svc.storage_dir.mkdir()
    result = svc.command("restart")
    assert (result.returncode, result.stdout) == (0, "start request issued\n"), result.stderr
    svc.supervisord_pids.add(svc.supervisord_pid())


# -- refusals -----------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def _storage_missing(svc: Service, port: int) -> str:
    svc.keys["storage_dir"] = str(svc.root / "nowhere")
    return f"{STORAGE_MESSAGE}: {svc.root / 'nowhere'} does not exist"


def _storage_is_a_file(svc: Service, port: int) -> str:
    (svc.root / "afile").write_text("x")
    svc.keys["storage_dir"] = str(svc.root / "afile")
    return f"{STORAGE_MESSAGE}: {svc.root / 'afile'} is not a directory"


def _depot_cannot_be_created(svc: Service, port: int) -> str:
    svc.storage_dir.mkdir()
    (svc.storage_dir / "depot").write_text("in the way")
    return f"depot {svc.storage_dir / 'depot'} cannot be created"


def _log_dir_cannot_be_created(svc: Service, port: int) -> str:
    (svc.root / "afile").write_text("x")
    svc.keys["log_dir"] = str(svc.root / "afile" / "log")
    return f"log_dir {svc.root / 'afile' / 'log'} cannot be created: Not a directory"


def _port_in_use(svc: Service, port: int) -> str:
    svc.keys["port"] = port
    return f"port {port} on 127.0.0.1 is already in use"


def _invalid_configuration(svc: Service, port: int) -> str:
    svc.keys["port"] = 70000
    return "invalid configuration: "


REFUSALS: list[tuple[str, Callable[[Service, int], str], int]] = [
    ("storage_missing", _storage_missing, 73),
    ("storage_is_a_file", _storage_is_a_file, 73),
    ("depot_cannot_be_created", _depot_cannot_be_created, 73),
    ("log_dir_cannot_be_created", _log_dir_cannot_be_created, 73),
    ("port_in_use", _port_in_use, 69),
    ("invalid_configuration", _invalid_configuration, 78),
]


@pytest.mark.parametrize("command", ["start", "run"])
@pytest.mark.parametrize(("case", "arrange", "code"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_start_is_refused_with_a_clear_message(
    service_factory: type[Service],
    busy_port: int,
    command: str,
    case: str,
    arrange: Callable[[Service, int], str],
    code: int,
) -> None:
    svc = service_factory()
    if case != "storage_missing" and case != "depot_cannot_be_created":
        svc.storage_dir.mkdir()
    expected = arrange(svc, busy_port)
    svc.write_config()
    result = svc.command(command, timeout_s=60)
    assert_no_traceback(result)
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith(f"start failed: {expected}"), result.stderr
    assert not (svc.run_dir / "supervisor.sock").exists(), "supervisord was started"


def test_missing_config_file_is_refused(short_tmp: Path) -> None:
    result = subprocess.run(
        [STORSCP, "start", "-c", str(short_tmp / "nope.toml")], capture_output=True, text=True
    )
    assert_no_traceback(result)
    assert result.returncode == 78
    assert "configuration file not found" in result.stderr


@pytest.mark.parametrize("spelling", ['"0640"', '"640"', "0o640", "640"])
def test_issue_10_storscp_config_shows_the_mode_an_admin_wrote(
    short_tmp: Path, spelling: str
) -> None:
    # Given `file_mode = 640` (or "0640", "640", 0o640) and the same for dir_mode
    path = short_tmp / "modes.toml"
    path.write_text(f"file_mode = {spelling}\ndir_mode = {spelling.replace('64', '75')}\n")
    # When the admin asks for the effective configuration
    result = subprocess.run(
        [STORSCP, "config", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    # Then both are the octal modes written, not decimal 640 = 0o1200
    assert result.returncode == 0, result.stderr
    assert 'file_mode = "0640"' in result.stdout.splitlines()
    assert 'dir_mode = "0750"' in result.stdout.splitlines()


def test_issue_10_storscp_config_refuses_a_mode_beyond_0o777(short_tmp: Path) -> None:
    path = short_tmp / "modes.toml"
    path.write_text("dir_mode = 1750\n")
    result = subprocess.run(
        [STORSCP, "config", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert_no_traceback(result)
    assert result.returncode == 78
    assert f"{path}: key 'dir_mode' must be at most 0o777" in result.stderr


# -- a component that cannot start ------------------------------------------------


def test_component_that_cannot_start_goes_fatal_and_status_says_degraded(
    service_factory: type[Service],
) -> None:
    # One receiver process, so the program's process is simply "receiver".
    svc = service_factory(receivers=1).start_daemon()
    assert svc.supervisorctl("stop", "receiver").returncode == 0
    with socket.socket() as squatter:
        # Given: someone else took the receiver's port while it was stopped.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", svc.port))
        squatter.listen(1)
        svc.supervisorctl("start", "receiver")  # fails: ERROR (abnormal termination)

        # Then: a few quick retries, then FATAL instead of restarting for ever.
        poll_for(
            lambda: [p.state for p in svc.program_processes("receiver")] == ["FATAL"],
            60,
            "receiver FATAL",
        )
        status = svc.command("status")
        assert status.returncode == 1, status.stdout
        lines = status.stdout.splitlines()
        assert lines[0] == "service degraded"
        [receiver] = [line for line in lines if line.split()[0] == "receiver"]
        assert "FATAL" in receiver and "exit status 69" in receiver, receiver
        assert "Address already in use" in receiver, receiver
        fatal = svc.wait_event("ERROR", 15, proc="listener", program="receiver", to_state="FATAL")
        assert fatal[-1]["exit_status"] == "69"
        assert "Address already in use" in fatal[-1]["reason"]
        backoffs = svc.events("ERROR", proc="listener", program="receiver", to_state="BACKOFF")
        assert backoffs and all(e["exit_status"] == "69" for e in backoffs)

    # When the port is free again, an admin starts it by hand.
    assert svc.supervisorctl("start", "receiver").returncode == 0
    status = svc.command("status")
    assert (status.returncode, status.stdout.splitlines()[0]) == (0, "service running")


def test_start_fails_and_says_why_when_a_component_goes_fatal(
    service_factory: type[Service],
) -> None:
    # Given: a TLS certificate that is readable (so the configuration loads)
    # but is not a certificate, which only the receiver finds out.
    bogus = service_factory().root / "bogus.pem"
    bogus.write_text("not a certificate\n")
    svc = service_factory(tls={"port": 0, "certificate": str(bogus), "private_key": str(bogus)})
    svc.storage_dir.mkdir()
    svc.write_config()
    result = svc.command("start")
    assert_no_traceback(result)
    assert result.returncode == 78, result.stderr
    assert result.stderr.startswith("start failed: receiver"), result.stderr
    assert "cannot be loaded" in result.stderr, result.stderr
    assert svc.command("status").stdout == "service not running\n"
    assert svc.live_components() == []


def test_second_logger_on_the_same_log_dir_is_refused_before_start(
    service_factory: type[Service],
) -> None:
    svc = service_factory()
    svc.storage_dir.mkdir()
    svc.log_dir.mkdir()
    svc.write_config()
    # Given: another logger holds the log directory (here: this test, by its lock).
    fd = os.open(svc.log_dir / ".storscp-logger.lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        result = svc.command("start")
    finally:
        os.close(fd)
    assert_no_traceback(result)
    assert result.returncode == 69, result.stderr
    assert f"another storscp logger (pid {os.getpid()}) is writing to" in result.stderr
    # No half service is left behind.
    assert svc.command("status").stdout == "service not running\n"
    assert svc.live_components() == []
