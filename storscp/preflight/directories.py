"""run_dir, storage, depot, state and log directories: who may start, and what is created.

Each directory storscp creates gets exactly its mode, whatever the umask;
when the components run as `user`, the directories they write are given to
that account, while run_dir itself stays the starter's.
"""

from __future__ import annotations

import grp
import os
from pathlib import Path

from storscp.config import Config
from storscp.errors import CommandRefused, NotPermitted
from storscp.exitcodes import ExitCode
from storscp.preflight import STORAGE_DIR_MESSAGE, Account, not_writable_message


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
            raise CommandRefused(
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


def prepare_storage(config: Config, account: Account | None) -> None:
    """The storage directory must exist (unless it is the default); the depot and
    the durable state (pending Storage Commitment requests) are ours."""
    storage = config.storage_dir
    if not storage.is_dir():
        if storage.exists() or config.is_explicit("storage_dir"):
            why = "is not a directory" if storage.exists() else "does not exist"
            raise CommandRefused(ExitCode.CANTCREAT, f"{STORAGE_DIR_MESSAGE}: {storage} {why}")
        _mkdir("storage_dir", storage, int(config.dir_mode))  # the default ./storage, first run
        _give(storage, account)
    if not os.access(storage, os.W_OK | os.X_OK):
        raise CommandRefused(ExitCode.CANTCREAT, not_writable_message(config, storage, None))
    for depot in dict.fromkeys((config.depots_dir, config.depot_dir)):  # a node's: both
        _mkdir("depot", depot, int(config.dir_mode))
        if account is not None and depot.stat().st_uid != account.uid:
            _give(depot, account)
    prepare_state_dir(config, account)


def prepare_state_dir(config: Config, account: Account | None) -> None:
    """`<storage_dir>/.storscp` (`/<node>` with `node`): boot counter, arrival lock, feed
    history, pending Storage Commitment requests.

    All of it is written by the components, so all of it is the component
    account's: a service first run as root and then with `user` hands over
    the files too, or its committer could not write the history. With
    `node`, the shared `.storscp` above it is made the account's as well (as
    the depot's parent is), so that every node's account can reach its own.
    """
    state = config.state_dir
    _mkdir("state directory", state, int(config.dir_mode))
    # Pending Storage Commitment requests: a node's own, like the rest.
    _mkdir("commitment directory", config.commitment_dir, int(config.dir_mode))
    if account is None:
        return
    if state.parent != config.storage_dir and state.parent.stat().st_uid != account.uid:
        _give(state.parent, account)
    try:
        for directory, subdirs, files in os.walk(state):
            for name in [directory, *(os.path.join(directory, n) for n in subdirs + files)]:
                if os.lstat(name).st_uid != account.uid:
                    os.lchown(name, account.uid, account.gid)
    except OSError as exc:
        raise CommandRefused(
            ExitCode.CANTCREAT,
            f"state directory {state} cannot be given to user {account.name}: {exc.strerror}",
        ) from None


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
        raise CommandRefused(
            ExitCode.CANTCREAT, f"{key} {path} cannot be created: {exc.strerror}"
        ) from None
    if not path.is_dir():
        raise CommandRefused(ExitCode.CANTCREAT, f"{key} {path} cannot be created: not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise CommandRefused(
            ExitCode.CANTCREAT, f"{key} {path} is not writable by uid {os.geteuid()}"
        )


def _give(path: Path, account: Account | None) -> None:
    if account is not None:
        os.chown(path, account.uid, account.gid)
