"""Who may start and stop: real unprivileged accounts against a service run by root.

The control socket is 0700 (owner only) or, with `admin_group`, 0770 for that
group. Anyone else gets `Failed. Administrator privileges may be needed.`
and a non-zero exit, never a traceback, and the service is untouched. With
`user`, supervisord stays root and only the components run as that account.
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from support import dicomfiles as df
from support.scu import storescu
from support.service import COMPONENTS, Service, poll_for
from support.users import (
    Interpreter,
    as_user,
    interpreter_for_others,
    temporary_group,
    temporary_user,
    uid_of,
)

PRIVILEGES = "Failed. Administrator privileges may be needed."


def open_to_others(*dirs: Path) -> None:
    """Let other accounts reach the test's files (mkdtemp makes 0700 directories)."""
    for path in dirs:
        path.chmod(0o755)


def storscp_as(
    user: str, interpreter: Interpreter, svc: Service, command: str
) -> subprocess.CompletedProcess[str]:
    return as_user(user, interpreter, [command, "-c", str(svc.config_path)], svc.root)


def assert_refused(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stderr.splitlines()[0] == PRIVILEGES, result.stderr


def component_pids(svc: Service) -> dict[str, int | None]:
    return {p.name: p.pid for p in svc.process_statuses()}


def uid_of_process(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


@pytest.mark.parametrize("closed", ["run_dir", "socket"])
def test_user_without_access_cannot_start_stop_or_restart(
    service_factory: type[Service], short_tmp: Path, closed: str
) -> None:
    svc = service_factory().start_daemon()
    open_to_others(short_tmp, svc.root)
    if closed == "socket":
        svc.run_dir.chmod(0o755)  # only the socket's own 0700 stands in the way
    assert stat.S_IMODE((svc.run_dir / "supervisor.sock").stat().st_mode) == 0o700
    before = component_pids(svc)
    with temporary_user() as user:
        interpreter = interpreter_for_others(user)
        for command in ("start", "stop", "restart"):
            assert_refused(storscp_as(user, interpreter, svc, command), 77)
        assert_refused(storscp_as(user, interpreter, svc, "status"), 4)
    # The service never noticed.
    assert component_pids(svc) == before
    assert svc.command("status").stdout.startswith("service running")


def test_admin_group_members_may_control_but_not_reconfigure(
    service_factory: type[Service], short_tmp: Path
) -> None:
    with temporary_group() as group, temporary_user(groups=[group]) as member:
        svc = service_factory(admin_group=group).start_daemon()
        open_to_others(short_tmp, svc.root)
        gid = grp.getgrnam(group).gr_gid
        sock = (svc.run_dir / "supervisor.sock").stat()
        assert (stat.S_IMODE(sock.st_mode), sock.st_uid, sock.st_gid) == (0o770, 0, gid)
        run_dir = svc.run_dir.stat()
        assert (stat.S_IMODE(run_dir.st_mode), run_dir.st_gid) == (0o750, gid)
        interpreter = interpreter_for_others(member)

        status = storscp_as(member, interpreter, svc, "status")
        assert (status.returncode, status.stdout.splitlines()[0]) == (0, "service running")

        # A member may restart the service as it is...
        before = component_pids(svc)
        restart = storscp_as(member, interpreter, svc, "restart")
        assert (restart.returncode, restart.stdout) == (0, "restart request issued\n"), restart
        after = component_pids(svc)
        assert not set(after.values()) & set(before.values())

        # ...but not change what root runs: that needs run_dir.
        svc.keys["ae_title"] = "CHANGED"
        svc.write_config()
        assert_refused(storscp_as(member, interpreter, svc, "restart"), 77)
        assert component_pids(svc) == after

        with temporary_user() as outsider:
            assert_refused(storscp_as(outsider, interpreter_for_others(outsider), svc, "stop"), 77)

        stop = storscp_as(member, interpreter, svc, "stop")
        assert (stop.returncode, stop.stdout) == (0, "stop request issued\n"), stop
        assert not svc.is_up()
        # Starting means writing run_dir, which stays root's.
        assert_refused(storscp_as(member, interpreter, svc, "start"), 77)
        assert not svc.is_up()


def test_components_run_as_the_user_key_account(
    service_factory: type[Service], short_tmp: Path
) -> None:
    with temporary_user() as account:
        interpreter = interpreter_for_others(account)
        env = {**os.environ, **interpreter.env}
        open_to_others(short_tmp)
        svc = service_factory(user=account, cli=interpreter.storscp, env=env)
        open_to_others(svc.root)
        uid = uid_of(account)
        svc.storage_dir.mkdir()
        os.chown(svc.storage_dir, uid, -1)  # an explicit storage_dir is the admin's to provide
        svc.start_daemon()

        # supervisord stays root; every component runs as the account.
        assert uid_of_process(svc.supervisord_pid()) == 0
        for program in COMPONENTS:
            for pid in svc.running_pids(program):
                assert uid_of_process(pid) == uid, program
        # run_dir (what root runs) stays root's; only bus/ is the account's.
        assert svc.run_dir.stat().st_uid == 0
        assert (svc.run_dir / "supervisord.conf").stat().st_uid == 0
        assert (svc.run_dir / "bus").stat().st_uid == uid

        path = short_tmp / "as-user.dcm"
        uid_sent = df.make_image(path, df.CT, seed=9100)
        assert storescu(svc.port, [path]).returncode == 0
        svc.wait_stored([uid_sent])
        assert svc.stored_path(uid_sent).stat().st_uid == uid
        svc.stop()  # before the account goes away


@pytest.mark.parametrize("key", ["storage_dir", "log_dir"])
def test_start_refuses_a_directory_the_user_key_account_cannot_write(
    service_factory: type[Service], short_tmp: Path, key: str
) -> None:
    with temporary_user() as account:
        interpreter = interpreter_for_others(account)
        open_to_others(short_tmp)
        svc = service_factory(
            user=account, cli=interpreter.storscp, env={**os.environ, **interpreter.env}
        )
        open_to_others(svc.root)
        svc.storage_dir.mkdir(mode=0o755)  # root's: others may read, not write
        svc.log_dir.mkdir(mode=0o755)
        # The other directory is the account's: only `key` is wrong.
        other = svc.log_dir if key == "storage_dir" else svc.storage_dir
        os.chown(other, uid_of(account), -1)
        svc.write_config()
        result = svc.command("start")
        assert "Traceback" not in result.stderr
        assert result.returncode == 73, result.stderr
        who = f"user {account} (uid {uid_of(account)})"
        expected = {
            "storage_dir": "An existing Storage SCP directory must be specified:"
            f" {svc.storage_dir} is not writable by {who}",
            "log_dir": f"log_dir {svc.log_dir} is not writable by {who}",
        }[key]
        assert result.stderr.strip() == f"start failed: {expected}"
        poll_for(lambda: not svc.is_up(), 5, "no service")


def test_start_refuses_a_user_key_account_that_cannot_run_the_interpreter(
    service_factory: type[Service], short_tmp: Path
) -> None:
    with temporary_user() as account:
        if interpreter_for_others(account).argv == (sys.executable,):
            pytest.skip(f"{account} can run {sys.executable}: nothing to refuse")
        open_to_others(short_tmp)
        svc = service_factory(user=account)  # the venv's interpreter, out of its reach
        open_to_others(svc.root)
        svc.storage_dir.mkdir()
        os.chown(svc.storage_dir, uid_of(account), -1)
        svc.write_config()
        result = svc.command("start")
        assert "Traceback" not in result.stderr
        assert result.returncode == 73, result.stderr
        assert result.stderr.startswith(
            f"start failed: user {account} cannot run storscp with {sys.executable}"
        ), result.stderr
        assert not svc.is_up()
