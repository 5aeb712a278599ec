"""The `storscp` command: run, start, stop, restart, status, config, logs.

Every command takes `-c/--config FILE` and one flag per configuration key,
so `start`, `status` and `stop` given the same options address the same
service (its run_dir). Messages for the admin go to stdout/stderr, never
into storscp1.log / storscp2.log.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from storscp import __version__
from storscp.config import KEYS, Config, ConfigError, flag_for, load
from storscp.exitcodes import ExitCode
from storscp.logger.lock import LogDirLocked, check_log_dir_free
from storscp.logger.reader import LogFollower
from storscp.supervisor import conf, control

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 120.0
# How often `storscp logs -f` looks for new lines: well under the time the
# logger needs to fill a whole file, so no alternation goes unseen.
FOLLOW_INTERVAL_S = 0.1
FOLLOW_BUSY_INTERVAL_S = 0.01


class CommandError(Exception):
    """Refuse with a clear message and an exit code, never a traceback."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, help="configuration file (TOML)")
    for key, (_kind, help_text) in KEYS.items():
        common.add_argument(flag_for(key), dest=key, metavar=key.upper(), help=help_text)

    parser = argparse.ArgumentParser(
        prog="storscp", description="DICOM Storage SCP service (C-ECHO, C-STORE)."
    )
    parser.add_argument("--version", action="version", version=f"storscp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("run", "run in the foreground; Ctrl-C or SIGTERM stops everything"),
        ("start", "start the service in the background"),
        ("stop", "stop the background service"),
        ("restart", "stop, then start with the current configuration"),
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
    overrides = {key: getattr(args, key) for key in KEYS}
    try:
        config = load(args.config, overrides)
        if args.command == "logs":
            return cmd_logs(config, args.follow, args.lines)
        return COMMANDS[args.command](config)
    except ConfigError as exc:
        print(f"storscp: invalid configuration: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except CommandError as exc:
        print(f"storscp: {exc}", file=sys.stderr)
        return exc.code
    except control.AccessDenied:
        print("Failed. Administrator privileges may be needed.", file=sys.stderr)
        return ExitCode.NOPERM


# -- preparing a start --------------------------------------------------------


def prepare(config: Config) -> Config:
    """Check and create what the components need; write effective.toml and the conf.

    Returns the config with a concrete port (port 0 picks a free one).
    """
    _prepare_storage(config)
    for key, path in (("log_dir", config.log_dir), ("run_dir", config.run_dir)):
        try:
            path.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(
                ExitCode.CANTCREAT, f"{key} {path} cannot be created: {exc.strerror}"
            ) from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise CommandError(
                ExitCode.CANTCREAT, f"{key} {path} is not writable by uid {os.geteuid()}"
            )
    if control.is_running(config):
        raise CommandError(ExitCode.UNAVAILABLE, "service already running")
    try:
        check_log_dir_free(config.log_dir)
    except LogDirLocked as exc:
        # Another service (another run_dir) logs there: two writers would corrupt it.
        raise CommandError(ExitCode.UNAVAILABLE, str(exc)) from None
    except OSError as exc:
        raise CommandError(
            ExitCode.CANTCREAT, f"log_dir {config.log_dir} is not usable: {exc}"
        ) from None
    config = _with_port(config)
    _write_atomically(config.effective_path, config.to_toml())
    _write_atomically(conf.conf_path(config), conf.render(config, nodaemon=True))
    return config


def _prepare_storage(config: Config) -> None:
    storage = config.storage_dir
    if not storage.is_dir():
        if storage.exists() or config.is_explicit("storage_dir"):
            raise CommandError(
                ExitCode.CANTCREAT,
                f"An existing Storage SCP directory must be specified: {storage}"
                + (" is not a directory" if storage.exists() else " does not exist"),
            )
        storage.mkdir(mode=0o750, parents=True)  # the default ./storage, first run
    if not os.access(storage, os.W_OK | os.X_OK):
        raise CommandError(
            ExitCode.CANTCREAT,
            f"An existing Storage SCP directory must be specified: {storage}"
            f" is not writable by uid {os.geteuid()}",
        )
    try:
        config.depot_dir.mkdir(mode=0o750, exist_ok=True)
    except OSError as exc:
        raise CommandError(
            ExitCode.CANTCREAT, f"depot {config.depot_dir} cannot be created: {exc.strerror}"
        ) from None


def _with_port(config: Config) -> Config:
    """Fail early if the port is taken; turn port 0 into a free port."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((config.host, config.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(
                    ExitCode.UNAVAILABLE,
                    f"port {config.port} on {config.host} is already in use",
                ) from None
            raise CommandError(
                ExitCode.UNAVAILABLE,
                f"cannot listen on {config.host}:{config.port}: {exc.strerror}",
            ) from None
        port = probe.getsockname()[1]
    if port == config.port:
        return config
    from dataclasses import replace

    return replace(config, port=port)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
    config = prepare(config)
    print(
        f"storscp {__version__}: serving {config.ae_title} on {config.host}:{config.port},"
        f" storage {config.storage_dir}, logs {config.log_dir}",
        flush=True,
    )
    # supervisord takes over this process: SIGTERM/SIGINT reach it directly.
    argv = _supervisord_argv(config, nodaemon=True)
    os.execv(argv[0], argv)
    return ExitCode.SOFTWARE  # not reached


def cmd_start(config: Config) -> int:
    try:
        config = prepare(config)
    except CommandError as exc:
        if str(exc) == "service already running":
            print("service already running")
            return ExitCode.OK
        print(f"start failed: {exc}", file=sys.stderr)
        return exc.code
    _write_atomically(conf.conf_path(config), conf.render(config, nodaemon=False))
    result = subprocess.run(
        _supervisord_argv(config, nodaemon=False), capture_output=True, text=True
    )
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        print(f"start failed: {reason[-1] if reason else 'supervisord exited'}", file=sys.stderr)
        return ExitCode.SOFTWARE
    if not _wait_for(lambda: control.is_running(config), START_TIMEOUT_S):
        print("start failed: supervisord did not come up", file=sys.stderr)
        return ExitCode.SOFTWARE
    print("start request issued")
    return ExitCode.OK


def cmd_stop(config: Config) -> int:
    try:
        pid = control.supervisord_pid(config)
        control.shutdown(config)
    except control.NotRunning:
        print("service not running")
        return ExitCode.OK
    _wait_for(lambda: not _pid_alive(pid), STOP_TIMEOUT_S)
    print("stop request issued")
    return ExitCode.OK


def cmd_restart(config: Config) -> int:
    if control.is_running(config):
        code = cmd_stop(config)
        if code != ExitCode.OK:
            return code
    return cmd_start(config)


def cmd_status(config: Config) -> int:
    try:
        infos = control.process_infos(config)
    except control.NotRunning:
        print("service not running")
        return 3  # LSB: program is not running
    degraded = any(p.state in {"FATAL", "BACKOFF"} for p in infos)
    print("service degraded" if degraded else "service running")
    for p in infos:
        print(f"  {p.name:<10} {p.state:<9} {p.description}")
    return 1 if degraded else ExitCode.OK


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


COMMANDS: dict[str, Callable[[Config], int]] = {
    "run": cmd_run,
    "start": cmd_start,
    "stop": cmd_stop,
    "restart": cmd_restart,
    "status": cmd_status,
    "config": cmd_config,
}
