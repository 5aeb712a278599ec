"""The `storscp` command: run, start, stop, restart, status, config, logs.

Every command takes `-c/--config FILE` and one flag per configuration key,
so `start`, `status` and `stop` given the same options address the same
service (its run_dir). Answers are the original service's: `start request
issued`, `service already running`, `start failed: <reason>`, `stop request
issued`, `service not running`, `service running`. Messages for the admin go
to stdout/stderr, never into storscp1.log / storscp2.log, and never as a
traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from storscp import __version__, bus, preflight
from storscp.config import KEYS, Config, ConfigError, ConfigNotReadable, flag_for, load
from storscp.exitcodes import ExitCode
from storscp.logger.lock import LogDirLocked, check_log_dir_free
from storscp.logger.reader import LogFollower
from storscp.metrics import files as metrics_files
from storscp.preflight import CommandError, NotPermitted
from storscp.supervisor import conf, control
from storscp.supervisor.exits import last_exit, last_line, startup_reason

PRIVILEGES_MESSAGE = "Failed. Administrator privileges may be needed."
START_TIMEOUT_S = 90.0
POLL_S = 0.1

# `storscp status` exit codes, as LSB init scripts have them.
STATUS_RUNNING = 0
STATUS_DEGRADED = 1  # running, but a component is not (FATAL, BACKOFF, stopped)
STATUS_NOT_RUNNING = 3
STATUS_UNKNOWN = 4  # not allowed to ask

FAILED_PREFIX = {"run": "start failed: ", "start": "start failed: ", "restart": "restart failed: "}
CONTROL_COMMANDS = {"start", "stop", "restart", "status"}
# How often `storscp logs -f` looks for new lines: well under the time the
# logger needs to fill a whole file, so no alternation goes unseen.
FOLLOW_INTERVAL_S = 0.1
FOLLOW_BUSY_INTERVAL_S = 0.01
# How long `storscp run` lets the logger take the "ended without a stop" event.
UNCLEAN_END_WAIT_MS = 30_000


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", type=Path, help="configuration file (TOML)")
    for key, (_kind, help_text) in KEYS.items():
        common.add_argument(flag_for(key), dest=key, metavar=key.upper(), help=help_text)

    parser = _Parser(prog="storscp", description="DICOM Storage SCP service (C-ECHO, C-STORE).")
    parser.add_argument("--version", action="version", version=f"storscp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("run", "run in the foreground; Ctrl-C or SIGTERM stops everything"),
        ("start", "start the service in the background"),
        ("stop", "stop the background service"),
        ("restart", "restart every component with the current configuration"),
        ("status", "show the service and its components"),
        ("config", "print the effective configuration as TOML"),
    ):
        sub.add_parser(name, parents=[common], help=help_text, description=help_text)
    logs_help = "print storscp1.log and storscp2.log as one stream, oldest first"
    logs = sub.add_parser("logs", parents=[common], help=logs_help, description=logs_help)
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines, across alternations"
    )
    logs.add_argument(
        "-n", "--lines", type=_count, metavar="N", help="print only the last N lines first"
    )
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of lines, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: str = args.command
    failed = FAILED_PREFIX.get(command, "storscp: ")
    overrides = {key: getattr(args, key) for key in KEYS}
    try:
        config = load(args.config, overrides)
        if command == "logs":
            return cmd_logs(config, args.follow, args.lines)
        return COMMANDS[command](config)
    except ConfigNotReadable as exc:
        if command in CONTROL_COMMANDS:
            return _not_permitted(command, str(exc))
        print(f"{failed}invalid configuration: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except ConfigError as exc:
        print(f"{failed}invalid configuration: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except (control.AccessDenied, NotPermitted) as exc:
        return _not_permitted(command, str(exc))
    except CommandError as exc:
        print(f"{failed}{exc}", file=sys.stderr)
        return exc.code
    except control.NotAnswering as exc:
        print(f"{failed}{exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    except control.NotRunning as exc:  # supervisord went away under us
        print(f"{failed}supervisord stopped answering: {exc}", file=sys.stderr)
        return ExitCode.SOFTWARE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the boundary: a bug, said in one line
        print(f"storscp: internal error: {exc!r}", file=sys.stderr)
        return ExitCode.SOFTWARE


def _check_log_dir_free(config: Config) -> None:
    """Another service (another run_dir) logging there would make two writers."""
    try:
        check_log_dir_free(config.log_dir)
    except LogDirLocked as exc:
        raise CommandError(ExitCode.UNAVAILABLE, str(exc)) from None
    except OSError as exc:
        raise CommandError(
            ExitCode.CANTCREAT, f"log_dir {config.log_dir} is not usable: {exc}"
        ) from None


def _not_permitted(command: str, detail: str) -> int:
    print(PRIVILEGES_MESSAGE, file=sys.stderr)
    print(f"storscp: {detail}", file=sys.stderr)
    return STATUS_UNKNOWN if command == "status" else ExitCode.NOPERM


# -- preparing a start --------------------------------------------------------


def prepare(config: Config, *, running: Config | None = None) -> Config:
    """Check and create what the components need; write effective.toml and the conf.

    Returns the config with concrete ports (port 0 picks a free one, or keeps
    the port of the `running` service being restarted, which our receiver holds).
    """
    preflight.check_run_dir_is_ours(config)
    account = preflight.service_account(config)
    preflight.require_root_for(account)
    preflight.prepare_storage(config, account)
    preflight.prepare_log_dir(config, account)
    if running is None or running.log_dir != config.log_dir:
        _check_log_dir_free(config)  # a service being restarted holds its own
    preflight.prepare_run_dir(config, account)
    if config.metrics_address is not None:
        metrics_files.reset(config, (account.uid, account.gid) if account else None)
    preflight.check_account(config, account)
    config = preflight.with_ports(config, running)
    _write_atomically(config.effective_path, config.to_toml(), 0o644)
    _write_atomically(conf.conf_path(config), conf.render(config), 0o644)
    return config


def _write_atomically(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _leftovers_timeout_s(config: Config) -> float:
    """A draining receiver of a dead supervisord takes up to drain_timeout_s."""
    return math.ceil(config.drain_timeout_s) + 15.0


def _refuse_leftovers(config: Config) -> None:
    left = preflight.wait_for_leftovers(config, _leftovers_timeout_s(config))
    if left:
        names = ", ".join(f"{name} pid {pid}" for name, pid in left)
        raise CommandError(
            ExitCode.UNAVAILABLE,
            f"components of a previous run are still running ({names}); stop them first",
        )


def _supervisord_argv(config: Config, nodaemon: bool) -> list[str]:
    argv = [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf.conf_path(config))]
    if nodaemon:
        argv.insert(3, "-n")
    return argv


# -- commands -------------------------------------------------------------------


def cmd_config(config: Config) -> int:
    sys.stdout.write(config.to_toml())
    return ExitCode.OK


def cmd_run(config: Config) -> int:
    if control.is_running(config):
        raise CommandError(ExitCode.UNAVAILABLE, "service already running")
    _refuse_leftovers(config)
    stale_pid = preflight.stale_supervisord_pid(conf.pidfile_path(config))
    config = prepare(config)
    if stale_pid is not None:
        print(f"storscp: the previous supervisord (pid {stale_pid}) ended without a stop")
        # This process becomes supervisord, and the logger is not up yet: a
        # detached grandchild waits for it and puts the event on record.
        _report_unclean_end_detached(config, stale_pid)
    print(
        f"storscp {__version__}: serving {config.ae_title} on {config.host}:{config.port},"
        f" storage {config.storage_dir}, logs {config.log_dir}",
        flush=True,
    )
    # supervisord takes over this process: SIGTERM/SIGINT reach it directly.
    argv = _supervisord_argv(config, nodaemon=True)
    os.execv(argv[0], argv)


def cmd_start(config: Config) -> int:
    if control.is_running(config):
        print("service already running")
        return ExitCode.OK
    _refuse_leftovers(config)
    stale_pid = preflight.stale_supervisord_pid(conf.pidfile_path(config))
    config = prepare(config)
    _launch(config)
    _wait_until_started(config, control.supervisord_pid(config), old_pids=set())
    if stale_pid is not None:
        _report_unclean_end(config, stale_pid)
    print("start request issued")
    return ExitCode.OK


def _launch(config: Config) -> None:
    """Start supervisord, which daemonises once its control socket is open."""
    try:
        result = subprocess.run(
            _supervisord_argv(config, nodaemon=False),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise CommandError(ExitCode.SOFTWARE, "supervisord did not daemonise") from None
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise CommandError(
            ExitCode.SOFTWARE,
            f"supervisord: {said[-1] if said else f'exited with {result.returncode}'}",
        )
    if not _wait_for(lambda: control.is_running(config), START_TIMEOUT_S):
        reason = last_line(conf.log_path(config)) or "no reason in its log"
        raise CommandError(ExitCode.SOFTWARE, f"supervisord did not come up: {reason}")


def _wait_until_started(config: Config, supervisord: int, old_pids: set[int]) -> None:
    """Wait until every process is RUNNING, none of them with one of `old_pids`.

    A FATAL process fails the start, and so does waiting too long: supervisord
    is shut down again (no half service is left behind) and the reason is the
    failed process's last words.
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            infos = control.process_infos(config)
        except control.NotRunning:
            if not preflight.pid_alive(supervisord):
                reason = last_line(conf.log_path(config)) or "no reason in its log"
                raise CommandError(ExitCode.SOFTWARE, f"supervisord exited: {reason}") from None
            infos = []  # restarting: the socket comes back shortly
        fatal = [p for p in infos if p.state == "FATAL"]
        if fatal:
            code, reason = _failure_of(config, fatal[0])
            _shutdown_and_wait(config)
            raise CommandError(code, f"{fatal[0].name}: {reason}")
        if infos and all(p.state == "RUNNING" and p.pid not in old_pids for p in infos):
            return
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{p.name} {p.state}" for p in infos if p.state != "RUNNING")
            _shutdown_and_wait(config)
            raise CommandError(
                ExitCode.SOFTWARE,
                f"not all components RUNNING after {START_TIMEOUT_S:.0f}s ({waiting or 'none'})",
            )
        time.sleep(POLL_S)


def _failure_of(config: Config, info: control.ProcessInfo) -> tuple[ExitCode, str]:
    """Exit code and reason of a process that would not start."""
    ended = last_exit(conf.log_path(config), info.process)
    reason = startup_reason(conf.child_log_path(config.run_dir, info.process))
    if reason is None:
        reason = info.spawnerr or (ended.text if ended else "no reason given")
    known = {int(code) for code in ExitCode}
    if ended is not None and ended.exit_status is not None and ended.exit_status in known:
        return ExitCode(ended.exit_status), reason
    return ExitCode.SOFTWARE, reason


def _report_unclean_end(config: Config, stale_pid: int, linger_ms: int = bus.LINGER_MS) -> None:
    """Put on record that the previous supervisord ended without a stop.

    `linger_ms`: how long to wait for the logger to take the event.
    """
    from storscp.outbox import Outbox  # zmq only when there is something to say

    outbox = Outbox(
        bus.Proc.CLI, {"logger": bus.logger_endpoint(config.run_dir)}, linger_ms=linger_ms
    )
    outbox.start()
    outbox.event(
        bus.EventType.ERROR,
        what="previous supervisord ended without a stop",
        pid=stale_pid,
        reason="its pidfile was left behind; its components were stopped by the kernel",
    )
    outbox.close(timeout_s=linger_ms / 1000 + 1)


def _report_unclean_end_detached(config: Config, stale_pid: int) -> None:
    """`_report_unclean_end` from a grandchild, so this process can exec supervisord.

    The grandchild is orphaned at once (init reaps it, not supervisord) and
    waits up to UNCLEAN_END_WAIT_MS for the logger that supervisord starts.
    zmq is imported only in the grandchild: its threads do not survive a fork.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    try:
        if os.fork() == 0:
            os.setsid()  # no terminal signals meant for supervisord
            _report_unclean_end(config, stale_pid, linger_ms=UNCLEAN_END_WAIT_MS)
    except Exception as exc:  # a log line is not worth a traceback on the console
        print(f"storscp: could not log the unclean end: {exc}", file=sys.stderr)
    finally:
        os._exit(0)


def cmd_stop(config: Config) -> int:
    try:
        pid = control.supervisord_pid(config)
        control.shutdown(config)
    except control.NotRunning:
        print("service not running")
        return ExitCode.OK
    timeout_s = _stop_timeout_s(config)
    if not _wait_for(lambda: not preflight.pid_alive(pid), timeout_s):
        print(
            f"stop failed: supervisord pid {pid} still running after {timeout_s:.0f}s",
            file=sys.stderr,
        )
        return ExitCode.SOFTWARE
    print("stop request issued")
    return ExitCode.OK


def _shutdown_and_wait(config: Config) -> None:
    try:
        pid = control.supervisord_pid(config)
        control.shutdown(config)
    except control.NotRunning:
        return
    _wait_for(lambda: not preflight.pid_alive(pid), _stop_timeout_s(config))


def _stop_timeout_s(config: Config) -> float:
    """Supervisor stops one program at a time, each within its stopwaitsecs."""
    return sum(spec.stopwaitsecs for spec in conf.program_specs(config).values()) + 15.0


def cmd_restart(config: Config) -> int:
    """Restart in place: supervisord re-reads the (re-rendered) conf and starts all."""
    try:
        running = load_running(config)
    except control.NotRunning:
        return cmd_start(config)
    try:
        preflight.check_run_dir_is_ours(config)
    except NotPermitted:
        # An admin_group member may restart, but not change what root runs.
        if _same_service(config, running):
            config = running
        else:
            raise
    else:
        config = prepare(config, running=running)
    supervisord = control.supervisord_pid(config)
    old_pids = {p.pid for p in control.process_infos(config) if p.pid}
    control.restart(config)
    _wait_until_started(config, supervisord, old_pids)
    print("restart request issued")
    return ExitCode.OK


def load_running(config: Config) -> Config:
    """The effective configuration of the running service (NotRunning if none)."""
    control.state(config)
    try:
        return load(config.effective_path)
    except ConfigError as exc:
        raise CommandError(
            ExitCode.SOFTWARE, f"cannot read the running configuration: {exc}"
        ) from None


def _same_service(new: Config, running: Config) -> bool:
    if new.port == 0:
        new = replace(new, port=running.port)
    return new == running


def cmd_status(config: Config) -> int:
    try:
        infos = control.process_infos(config)
    except control.NotRunning:
        print("service not running")
        return STATUS_NOT_RUNNING
    order = {name: i for i, name in enumerate(conf.ALL_PROGRAMS)}
    infos.sort(key=lambda p: (order.get(p.group, len(order)), p.name))
    degraded = any(p.state not in {"RUNNING", "STARTING"} for p in infos)
    health = _health(config)
    degraded = degraded or (health is not None and health[0] != 200)
    print("service degraded" if degraded else "service running")
    width = max([len(p.name) for p in infos] + [9])
    for p in infos:
        print(f"  {p.name:<{width}}  {p.state:<8}  {_details(config, p)}")
    if health is not None:
        status, line = health
        verdict = line if status in (0, 200) else f"{status}: {line}"
        print(f"  {'health':<{width}}  {verdict}")
    return STATUS_DEGRADED if degraded else STATUS_RUNNING


def _health(config: Config) -> tuple[int, str] | None:
    """The verdict of the running service's /healthz (its own effective `metrics`)."""
    try:
        running = load(config.effective_path)
    except ConfigError:
        running = config
    return metrics_files.health(running)


def _details(config: Config, p: control.ProcessInfo) -> str:
    if p.state in {"RUNNING", "STARTING", "STOPPING"} and p.pid:
        return f"pid {p.pid:<7}  uptime {_hms(p.uptime_s)}"
    ended = last_exit(conf.log_path(config), p.process)
    how = ended.text if ended else (p.spawnerr or p.description)
    if p.state in {"FATAL", "BACKOFF"}:
        reason = startup_reason(conf.child_log_path(config.run_dir, p.process))
        if reason:
            return f"{how}: {reason}"
    return how


def _hms(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def cmd_logs(config: Config, follow: bool, last: int | None) -> int:
    """Print both log files as one stream; with `follow`, keep printing."""
    follower = LogFollower(config.log_dir)
    out = sys.stdout.buffer
    try:
        lines = follower.poll()
        if not lines and not follow and not any(p.exists() for p in follower.paths):
            raise CommandError(ExitCode.NOINPUT, f"no log files in {config.log_dir}")
        out.writelines(lines if last is None else lines[len(lines) - last :])
        out.flush()
        lost = 0
        while follow:
            # Busy log: look again soon, so no file fills up between two looks.
            time.sleep(FOLLOW_BUSY_INTERVAL_S if lines else FOLLOW_INTERVAL_S)
            lines = follower.poll()
            out.writelines(lines)
            out.flush()
            if follower.lost > lost:
                lost = follower.lost
                print(
                    "storscp: the log alternated twice between two reads;"
                    " some lines were overwritten before they could be shown",
                    file=sys.stderr,
                    flush=True,
                )
    except KeyboardInterrupt:
        return ExitCode.OK
    except BrokenPipeError:
        # The reader went away (`storscp logs | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    return ExitCode.OK


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(POLL_S)
    return predicate()


COMMANDS: dict[str, Callable[[Config], int]] = {
    "run": cmd_run,
    "start": cmd_start,
    "stop": cmd_stop,
    "restart": cmd_restart,
    "status": cmd_status,
    "config": cmd_config,
}
