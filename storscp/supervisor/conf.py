"""Render `<run_dir>/supervisord.conf` from the Config.

A normal Supervisor file: `supervisorctl -c <run_dir>/supervisord.conf
status` works on it. Programs start logger -> committer -> feed -> commitment
-> receiver and stop in reverse (Supervisor stops one priority group at a time,
highest first); the listener starts first and stops last, so it sees every
state change.
`stopwaitsecs` of the receiver follows the drain timeout, so a graceful stop
is never cut short by SIGKILL.
"""

from __future__ import annotations

import grp
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from storscp.config import Config

SOCKET_NAME = "supervisor.sock"
PIDFILE_NAME = "supervisord.pid"
CONF_NAME = "supervisord.conf"
LOG_NAME = "supervisord.log"

# Start order; the listener is an [eventlistener], the others [program]s.
# `metrics` runs only when the `metrics` key is not empty (see `program_specs`).
PROGRAMS = ("logger", "committer", "feed", "commitment", "receiver", "metrics")
ALL_PROGRAMS = ("listener", *PROGRAMS)


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    """How Supervisor runs one program, and why these numbers."""

    module: str
    priority: int
    # Seconds a process must stay up to count as started. Every component
    # does its start-up checks (config, lock, directories, bind) within a
    # fraction of a second, so a process that exits sooner failed to start:
    # Supervisor retries `startretries` times, then marks it FATAL instead of
    # restarting it for ever. Keep these short: they are also how long a
    # restarted component takes to be RUNNING again.
    startsecs: int
    startretries: int
    stopwaitsecs: int


def program_specs(config: Config) -> dict[str, ProgramSpec]:
    """The programs this configuration runs, in start order."""
    drain_s = math.ceil(config.drain_timeout_s)
    specs = {
        # Stops last: reports the others' exits until the very end.
        "listener": ProgramSpec("storscp.supervisor", 1, 1, 3, stopwaitsecs=5),
        # Lock + bind only; its drain on stop is about a second.
        "logger": ProgramSpec("storscp.logger", 10, 1, 3, stopwaitsecs=10),
        # Its start-up sweep may be long after a crash, but it stays up meanwhile;
        # on stop it commits what is ready, a rename and an fsync per batch.
        "committer": ProgramSpec("storscp.committer", 20, 2, 3, stopwaitsecs=30),
        # Binds and serves replays from the history, nothing to drain. The
        # committer's priority: both stop at once (it opens the history lazily).
        "feed": ProgramSpec("storscp.feed", 20, 1, 3, stopwaitsecs=10),
        # Storage Commitment reports: its state is on disk, so a stop only
        # abandons attempts in flight (resumed at the next start).
        "commitment": ProgramSpec("storscp.commitment", 25, 2, 3, stopwaitsecs=10),
        # pynetdicom's import and the AE take longest; on stop it lets
        # associations finish for drain_timeout_s, then aborts the rest.
        "receiver": ProgramSpec("storscp.receiver", 30, 3, 3, stopwaitsecs=drain_s + 10),
        # Starts last and stops first: it only reads what the others count.
        "metrics": ProgramSpec("storscp.metrics", 40, 1, 3, stopwaitsecs=5),
    }
    if config.metrics_address is None:
        del specs["metrics"]
    return specs


def socket_path(config: Config) -> Path:
    return config.run_dir / SOCKET_NAME


def conf_path(config: Config) -> Path:
    return config.run_dir / CONF_NAME


def pidfile_path(config: Config) -> Path:
    return config.run_dir / PIDFILE_NAME


def log_path(config: Config) -> Path:
    return log_path_in(config.run_dir)


def log_path_in(run_dir: Path) -> Path:
    """supervisord's own log, where it records how each process ended."""
    return run_dir / LOG_NAME


def child_log_path(run_dir: Path, process_name: str) -> Path:
    """Where a process's stdout and stderr go (the listener: stderr only)."""
    if process_name == "listener":
        return run_dir / "listener.err.log"
    return run_dir / f"{process_name}.out.log"


def socket_mode(config: Config) -> tuple[str, str]:
    """(chmod, chown) of the control socket: the owner, plus admin_group."""
    if not config.admin_group:
        return "0700", f"{os.geteuid()}"
    return "0770", f"{os.geteuid()}:{grp.getgrnam(config.admin_group).gr_gid}"


def _program(name: str, spec: ProgramSpec, config: Config) -> str:
    run = config.run_dir
    section = "eventlistener" if name == "listener" else "program"
    lines = [
        f"[{section}:{name}]",
        f"command={sys.executable} -m {spec.module} -c {config.effective_path}",
        f"priority={spec.priority}",
        "autostart=true",
        "autorestart=true",
        f"startsecs={spec.startsecs}",
        f"startretries={spec.startretries}",
        "stopsignal=TERM",
        f"stopwaitsecs={spec.stopwaitsecs}",
        "stopasgroup=true",
        "killasgroup=true",
    ]
    processes = config.receiver_count if name == "receiver" else 1
    if processes > 1:
        # Several processes of one program need distinct names: receiver:receiver_0, ...
        lines += [f"numprocs={processes}", "process_name=%(program_name)s_%(process_num)d"]
    log_file = child_log_path(run, name if processes == 1 else f"{name}_%(process_num)d")
    if name == "listener":
        # stdout is the event listener protocol; only stderr is a log.
        lines += [
            "events=PROCESS_STATE",
            "stdout_logfile=NONE",
            f"stderr_logfile={child_log_path(run, name)}",
            "stderr_logfile_maxbytes=10MB",
            "stderr_logfile_backups=5",
        ]
    else:
        lines += [
            "redirect_stderr=true",
            f"stdout_logfile={log_file}",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=5",
        ]
    if config.user:
        lines.append(f"user={config.user}")
    environment = 'PYTHONUNBUFFERED="1"'
    if config.metrics_address is not None:
        # prometheus_client's multiprocess mode: every process counts into its
        # own files there; the metrics program sums them (storscp/instruments.py).
        environment += f',PROMETHEUS_MULTIPROC_DIR="{config.metrics_dir}"'
    lines.append(f"environment={environment}")
    return "\n" + "\n".join(lines) + "\n"


def render(config: Config) -> str:
    """The whole supervisord.conf for `config` (foreground or not is a flag: -n)."""
    run = config.run_dir
    chmod, chown = socket_mode(config)
    text = f"""; Generated by storscp from {config.effective_path}; edits are overwritten.
[unix_http_server]
file={socket_path(config)}
chmod={chmod}
chown={chown}

[supervisord]
logfile={log_path(config)}
logfile_maxbytes=10MB
logfile_backups=5
pidfile={pidfile_path(config)}
childlogdir={run}
nodaemon=false
identifier=storscp
silent=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{socket_path(config)}
"""
    for name, spec in program_specs(config).items():
        text += _program(name, spec, config)
    return text
