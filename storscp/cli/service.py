"""The service commands: run, start, stop, restart, status, through supervisord.

A start waits until every component is RUNNING (or one is FATAL, whose
reason is then the answer) and leaves no half service behind; a stop waits
until supervisord has gone. A supervisord that died without a stop is put
on record with an ERROR event.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from storscp import __version__, bus
from storscp.cli.prepare import prepare, refuse_leftovers, supervisord_argv
from storscp.config import Config, ConfigError, load
from storscp.errors import CommandRefused, NotPermitted
from storscp.exitcodes import ExitCode
from storscp.metrics import files as metrics_files
from storscp.preflight import directories, leftovers
from storscp.supervisor import conf, control
from storscp.supervisor.exits import last_exit, last_line, startup_reason

START_TIMEOUT_S = 90.0
POLL_S = 0.1

# `storscp status` exit codes, as LSB init scripts have them.
STATUS_RUNNING = 0
STATUS_DEGRADED = 1  # running, but a component is not (FATAL, BACKOFF, stopped) or unhealthy
STATUS_NOT_RUNNING = 3
STATUS_UNKNOWN = 4  # not allowed to ask
# How long `storscp run` lets the logger take the "ended without a stop" event.
UNCLEAN_END_WAIT_MS = 30_000
# ... and how long `storscp start` does, once the logger is RUNNING.
STARTED_LOGGER_WAIT_MS = 10_000


def cmd_run(config: Config) -> int:
    if control.is_running(config):
        raise CommandRefused(ExitCode.UNAVAILABLE, "service already running")
    refuse_leftovers(config)
    stale_pid = leftovers.stale_supervisord_pid(conf.pidfile_path(config))
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
    argv = supervisord_argv(config, nodaemon=True)
    os.execv(argv[0], argv)


def cmd_start(config: Config) -> int:
    if control.is_running(config):
        print("service already running")
        return ExitCode.OK
    refuse_leftovers(config)
    stale_pid = leftovers.stale_supervisord_pid(conf.pidfile_path(config))
    config = prepare(config)
    _launch(config)
    _wait_until_started(config, control.supervisord_pid(config), old_pids=set())
    if stale_pid is not None:
        # The logger is up, but on a loaded machine ZeroMQ may need more than
        # the default linger to connect: give the one event time to arrive.
        _report_unclean_end(config, stale_pid, linger_ms=STARTED_LOGGER_WAIT_MS)
    print("start request issued")
    return ExitCode.OK


def _launch(config: Config) -> None:
    """Start supervisord, which daemonises once its control socket is open."""
    try:
        result = subprocess.run(
            supervisord_argv(config, nodaemon=False),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise CommandRefused(ExitCode.SOFTWARE, "supervisord did not daemonise") from None
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise CommandRefused(
            ExitCode.SOFTWARE,
            f"supervisord: {said[-1] if said else f'exited with {result.returncode}'}",
        )
    if not _wait_for(lambda: control.is_running(config), START_TIMEOUT_S):
        reason = last_line(conf.log_path(config)) or "no reason in its log"
        raise CommandRefused(ExitCode.SOFTWARE, f"supervisord did not come up: {reason}")


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
            if not leftovers.pid_alive(supervisord):
                reason = last_line(conf.log_path(config)) or "no reason in its log"
                raise CommandRefused(ExitCode.SOFTWARE, f"supervisord exited: {reason}") from None
            infos = []  # restarting: the socket comes back shortly
        fatal = [p for p in infos if p.state == "FATAL"]
        if fatal:
            code, reason = _failure_of(config, fatal[0])
            _shutdown_and_wait(config)
            raise CommandRefused(code, f"{fatal[0].name}: {reason}")
        if infos and all(p.state == "RUNNING" and p.pid not in old_pids for p in infos):
            return
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{p.name} {p.state}" for p in infos if p.state != "RUNNING")
            _shutdown_and_wait(config)
            raise CommandRefused(
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
    if not _wait_for(lambda: not leftovers.pid_alive(pid), timeout_s):
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
    _wait_for(lambda: not leftovers.pid_alive(pid), _stop_timeout_s(config))


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
        directories.check_run_dir_is_ours(config)
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
        raise CommandRefused(
            ExitCode.SOFTWARE, f"cannot read the running configuration: {exc}"
        ) from None


def _same_service(new: Config, running: Config) -> bool:
    """Whether `new` asks for what runs; port 0 (plain, metrics) means "whichever it has"."""
    if new.port == 0:
        new = replace(new, port=running.port)
    asked, held = new.metrics_address, running.metrics_address
    if asked is not None and held is not None and asked == (held[0], 0):
        new = replace(new, metrics=running.metrics)
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


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(POLL_S)
    return predicate()
