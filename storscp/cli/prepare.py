"""Preparing a start: what `storscp run|start|restart` does before supervisord.

Preflight checks and creates the directories, ports and account; then the
effective configuration and supervisord.conf are written atomically, so a
running supervisord never reads half a file.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from storscp.config import Config
from storscp.errors import CommandRefused
from storscp.exitcodes import ExitCode
from storscp.logger.lock import LogDirLocked, check_log_dir_free
from storscp.metrics import files as metrics_files
from storscp.preflight import (
    component_account,
    directories,
    leftovers,
    named,
    ports,
    service_account,
)
from storscp.supervisor import conf


def prepare(config: Config, *, running: Config | None = None) -> Config:
    """Check and create what the components need; write effective.toml and the conf.

    Returns the config with concrete ports (port 0 picks a free one, or keeps
    the port of the `running` service being restarted, which our receiver holds).
    """
    directories.check_run_dir_is_ours(config)
    named.check_accounts(config)
    account = service_account(config)
    component_account.require_root_for(account)
    if account is None:
        named.check_tls_files(config)  # with `user`, check_account reads them as that account
    directories.prepare_storage(config, account)
    directories.prepare_log_dir(config, account)
    if running is None or running.log_dir != config.log_dir:
        _check_log_dir_free(config)  # a service being restarted holds its own
    directories.prepare_run_dir(config, account)
    if config.metrics_address is not None:
        metrics_files.reset(config, (account.uid, account.gid) if account else None)
    component_account.check_account(config, account)
    config = ports.with_ports(config, running)
    _write_atomically(config.effective_path, config.to_toml(), 0o644)
    _write_atomically(conf.conf_path(config), conf.render(config), 0o644)
    return config


def _check_log_dir_free(config: Config) -> None:
    """Another service (another run_dir) logging there would make two writers."""
    try:
        check_log_dir_free(config.log_dir)
    except LogDirLocked as exc:
        raise CommandRefused(ExitCode.UNAVAILABLE, str(exc)) from None
    except OSError as exc:
        raise CommandRefused(
            ExitCode.CANTCREAT, f"log_dir {config.log_dir} is not usable: {exc}"
        ) from None


def _write_atomically(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _leftovers_timeout_s(config: Config) -> float:
    """A draining receiver of a dead supervisord takes up to drain_timeout_s."""
    return math.ceil(config.drain_timeout_s) + 15.0


def refuse_leftovers(config: Config) -> None:
    left = leftovers.wait_for_leftovers(config, _leftovers_timeout_s(config))
    if left:
        names = ", ".join(f"{name} pid {pid}" for name, pid in left)
        raise CommandRefused(
            ExitCode.UNAVAILABLE,
            f"components of a previous run are still running ({names}); stop them first",
        )


def supervisord_argv(config: Config, nodaemon: bool) -> list[str]:
    argv = [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf.conf_path(config))]
    if nodaemon:
        argv.insert(3, "-n")
    return argv
