"""Everything `storscp run|start|restart` checks and prepares before supervisord.

A start that cannot work is refused here with one clear sentence (which
path, which key, why) instead of a component going FATAL later: storage
directory missing or not writable, depot or log directory not creatable,
port taken, run_dir not ours, the `user` account unable to run us. Also
finds components left behind by a supervisord that died (they get SIGTERM
from the kernel and drain; a new start waits for them instead of racing
them for the port and the log lock).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from storscp.config import Config
from storscp.exitcodes import ExitCode

STORAGE_DIR_MESSAGE = "An existing Storage SCP directory must be specified"
COMPONENT_MODULES = {
    "storscp.supervisor": "listener",
    "storscp.logger": "logger",
    "storscp.committer": "committer",
    "storscp.receiver": "receiver",
    "storscp.metrics": "metrics",
}


class CommandError(Exception):
    """Refuse with a clear message and an exit code, never a traceback."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class NotPermitted(CommandError):
    """The caller may not control this service (run_dir or socket not theirs)."""

    def __init__(self, message: str) -> None:
        super().__init__(ExitCode.NOPERM, message)


@dataclass(frozen=True, slots=True)
class Account:
    """Who the components run as: uid, gid and supplementary groups."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def named(cls, name: str) -> Account:
        entry = pwd.getpwnam(name)
        groups = tuple(os.getgrouplist(name, entry.pw_gid))
        return cls(name, entry.pw_uid, entry.pw_gid, groups)


def service_account(config: Config) -> Account | None:
    """The `user` account if it differs from us, else None (we are the service)."""
    if not config.user:
        return None
    account = Account.named(config.user)
    return None if account.uid == os.geteuid() else account


# -- run_dir: who may start --------------------------------------------------


def check_run_dir_is_ours(config: Config) -> None:
    """Starting means writing run_dir; a caller who cannot is not an administrator."""
    path = config.run_dir
    try:
        existing = path
        while not existing.exists():
            existing = existing.parent
    except PermissionError:
        raise NotPermitted(f"run_dir {path} is not accessible to uid {os.geteuid()}") from None
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else "cannot be created"
        raise NotPermitted(f"run_dir {path} {what} by uid {os.geteuid()}")


def prepare_run_dir(config: Config, account: Account | None) -> None:
    """run_dir for supervisord's files; run_dir/bus for the components' sockets.

    run_dir stays the starter's (root's, typically): a component account that
    could write supervisord.conf could make root run anything. Only the bus
    directory is the component account's.
    """
    run_dir = config.run_dir
    _mkdir("run_dir", run_dir)
    if run_dir.stat().st_uid == os.geteuid() and _is_a_run_dir(config):
        # Others must reach effective.toml and bus/ when components run as `user`;
        # admin_group must reach the control socket.
        mode = 0o755 if account is not None else 0o750
        try:
            if config.admin_group:
                os.chown(run_dir, -1, grp.getgrnam(config.admin_group).gr_gid)
            os.chmod(run_dir, mode)
        except OSError as exc:
            raise CommandError(
                ExitCode.CANTCREAT,
                f"run_dir {run_dir} cannot be given to admin_group {config.admin_group}:"
                f" {exc.strerror}",
            ) from None
    _mkdir("run_dir", config.bus_dir, mode=0o700)
    _give(config.bus_dir, account)


def _is_a_run_dir(config: Config) -> bool:
    """Only a directory that is storscp's alone gets its mode and group set:
    never a shared one someone named as run_dir (/run, /tmp, a home)."""
    try:
        entries = set(os.listdir(config.run_dir))
    except OSError:
        return False
    return not entries or config.effective_path.name in entries


# -- storage, depot, logs ------------------------------------------------------


def prepare_storage(config: Config, account: Account | None) -> None:
    """The storage directory must exist (unless it is the default); the depot is ours."""
    storage = config.storage_dir
    if not storage.is_dir():
        if storage.exists() or config.is_explicit("storage_dir"):
            why = "is not a directory" if storage.exists() else "does not exist"
            raise CommandError(ExitCode.CANTCREAT, f"{STORAGE_DIR_MESSAGE}: {storage} {why}")
        _mkdir("storage_dir", storage, int(config.dir_mode))  # the default ./storage, first run
        _give(storage, account)
    if not os.access(storage, os.W_OK | os.X_OK):
        raise CommandError(ExitCode.CANTCREAT, _not_writable_message(config, storage, None))
    depot = config.depot_dir
    _mkdir("depot", depot, int(config.dir_mode))
    if account is not None and depot.stat().st_uid != account.uid:
        _give(depot, account)


def prepare_log_dir(config: Config, account: Account | None) -> None:
    created = not config.log_dir.exists()
    _mkdir("log_dir", config.log_dir, int(config.dir_mode))
    if created:
        _give(config.log_dir, account)


def _mkdir(key: str, path: Path, mode: int = 0o750) -> None:
    """Create `path` if missing, with exactly `mode` (whatever the umask)."""
    existed = path.is_dir()
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        if not existed:
            os.chmod(path, mode)
    except FileExistsError:
        pass  # not a directory: said below
    except OSError as exc:
        raise CommandError(
            ExitCode.CANTCREAT, f"{key} {path} cannot be created: {exc.strerror}"
        ) from None
    if not path.is_dir():
        raise CommandError(ExitCode.CANTCREAT, f"{key} {path} cannot be created: not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise CommandError(
            ExitCode.CANTCREAT, f"{key} {path} is not writable by uid {os.geteuid()}"
        )


def _give(path: Path, account: Account | None) -> None:
    if account is not None:
        os.chown(path, account.uid, account.gid)


def _who(account: Account | None) -> str:
    if account is None:
        return f"uid {os.geteuid()}"
    return f"user {account.name} (uid {account.uid})"


def _not_writable_message(config: Config, path: Path, account: Account | None) -> str:
    who = _who(account)
    if path == config.storage_dir:
        return f"{STORAGE_DIR_MESSAGE}: {path} is not writable by {who}"
    if path == config.depot_dir:
        return f"depot {path} is not writable by {who}"
    if path == config.log_dir:
        return f"log_dir {path} is not writable by {who}"
    return f"{path} is not writable by {who}"


# -- the component account ----------------------------------------------------

# Run as the component account: can it start our interpreter, import every
# component, and write where the components write? Exit 3 names a path.
_PROBE = """
import os, sys
import storscp.committer.main, storscp.logger.main, storscp.receiver.main
import storscp.supervisor.listener, storscp.metrics.main
for path in sys.argv[1:]:
    if not os.access(path, os.W_OK | os.X_OK):
        print(path)
        sys.exit(3)
"""


def require_root_for(account: Account | None) -> None:
    """Only root may start processes as another account."""
    if account is not None and os.geteuid() != 0:
        raise NotPermitted(
            f"key 'user' ({account.name}) needs storscp started as root, not uid {os.geteuid()}"
        )


def check_account(config: Config, account: Account | None) -> None:
    """Components running as `user` need an interpreter that account can run, and
    write access to storage, depot, logs and bus sockets.
    """
    if account is None:
        return
    paths = [config.storage_dir, config.depot_dir, config.log_dir, config.bus_dir]
    result = _probe(account, paths)
    if result.returncode == 3:
        path = Path(result.stdout.strip())
        raise CommandError(ExitCode.CANTCREAT, _not_writable_message(config, path, account))
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise CommandError(
            ExitCode.CANTCREAT,
            f"user {account.name} cannot run storscp with {sys.executable}: {detail}"
            " (install storscp where that account can read it)",
        )


def _probe(account: Account, paths: list[Path]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-c", _PROBE, *map(str, paths)],
            user=account.uid,
            group=account.gid,
            extra_groups=list(account.groups),
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
    except OSError as exc:
        # exec itself failed: the interpreter is out of that account's reach.
        return subprocess.CompletedProcess([], 126, "", exc.strerror or str(exc))


# -- the port ------------------------------------------------------------------


def with_ports(config: Config, running: Config | None = None) -> Config:
    """Fail early if a port is taken; turn port 0 into a free port (plain and TLS).

    A port the `running` service (being restarted) already listens on is
    kept without probing: our own receiver holds it.
    """
    with contextlib.ExitStack() as probes:
        # All probes stay bound until every port is known: never one free port twice.
        port = config.port
        if running is not None and port in (0, running.port):
            port = running.port
        else:
            port = _probe_port(probes, config.host, port, "port")
        tls = config.tls
        if tls is not None:
            held = running.tls.port if running is not None and running.tls else None
            if held is not None and tls.port in (0, held):
                tls = replace(tls, port=held)
            else:
                tls = replace(tls, port=_probe_port(probes, config.host, tls.port, "[tls] port"))
        metrics = config.metrics
        if config.metrics_address is not None:
            metrics = _metrics_port(probes, config.metrics_address, running)
    return replace(config, port=port, tls=tls, metrics=metrics)


def _metrics_port(
    probes: contextlib.ExitStack, address: tuple[str, int], running: Config | None
) -> str:
    """`metrics` with a concrete port: port 0 picks one, a restart keeps its own."""
    host, port = address
    held = running.metrics_address if running is not None else None
    if held is not None and held[0] == host and port in (0, held[1]):
        port = held[1]
    else:
        port = _probe_port(probes, host, port, "metrics")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _probe_port(probes: contextlib.ExitStack, host: str, port: int, key: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = probes.enter_context(socket.socket(family, socket.SOCK_STREAM))
    # As the receiver binds: TIME_WAIT leftovers must not count as "in use".
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
        probe.listen(1)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CommandError(
                ExitCode.UNAVAILABLE, f"{key} {port} on {host} is already in use"
            ) from None
        raise CommandError(
            ExitCode.UNAVAILABLE, f"cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    return int(probe.getsockname()[1])


# -- what a dead supervisord left behind ------------------------------------------


def leftover_components(config: Config) -> list[tuple[str, int]]:
    """(program, pid) of live components started for this run_dir's effective.toml.

    Only meaningful when no supervisord answers: then these are orphans of one
    that died, still draining after the kernel's SIGTERM (PR_SET_PDEATHSIG).
    """
    target = str(config.effective_path)
    found: list[tuple[str, int]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _cmdline(int(entry))
        if len(argv) == 5 and argv[1] == "-m" and argv[3] == "-c" and argv[4] == target:
            program = COMPONENT_MODULES.get(argv[2])
            if program is not None and not _is_zombie(int(entry)):
                found.append((program, int(entry)))
    return sorted(found)


def wait_for_leftovers(config: Config, timeout_s: float) -> list[tuple[str, int]]:
    """Wait for orphaned components to finish draining; return those still alive."""
    deadline = time.monotonic() + timeout_s
    left = leftover_components(config)
    if left:
        names = ", ".join(f"{name} pid {pid}" for name, pid in left)
        print(
            f"storscp: waiting for components of a previous run to stop ({names})",
            file=sys.stderr,
            flush=True,
        )
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftover_components(config)
    return left


def stale_supervisord_pid(pidfile: Path) -> int | None:
    """The pid in a pidfile that supervisord left behind when it was killed.

    supervisord removes its pidfile on a clean exit, so one that remains while
    no supervisord answers tells of a kill (or a crash).
    """
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is dead; another user's is alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0")[:-1]]


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
