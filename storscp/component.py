"""Start-up shared by the four component processes.

Each component is started by supervisord as `python -m storscp.<name> -c
<run_dir>/effective.toml`. This module parses that, loads the Config, sets
up stderr logging (Supervisor keeps it as the child log) and the outbox
that carries events to the logger.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from storscp import bus, depotfiles, nodelock
from storscp.arrival import Arrival
from storscp.commitmentfiles import RequestStore
from storscp.config import Config, ConfigError, load
from storscp.errors import StorscpError
from storscp.exitcodes import ExitCode
from storscp.outbox import Outbox
from storscp.runtime import StopFlag, die_with_parent


class StartupFailure(StorscpError):
    """A component cannot start; carries the exit code Supervisor will see."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def load_component_config(proc: str, argv: list[str] | None) -> Config:
    """Parse `-c FILE` and load it; StartupFailure(CONFIG) if that fails."""
    parser = argparse.ArgumentParser(prog=f"python -m storscp.{proc}")
    parser.add_argument("-c", "--config", type=Path, help="effective configuration (TOML)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s {proc}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        config = load(args.config)
    except ConfigError as exc:
        raise StartupFailure(ExitCode.CONFIG, str(exc)) from None
    prepare_metrics_dir(config)
    return config


def begin_component(proc: str, argv: list[str] | None) -> tuple[Config, StopFlag]:
    """What every long-running component does first: its configuration, a stop
    flag set by SIGTERM/SIGINT, and death with its parent (supervisord)."""
    config = load_component_config(proc, argv)
    stop = StopFlag()
    stop.install()
    die_with_parent()
    return config, stop


def prepare_metrics_dir(config: Config) -> None:
    """prometheus_client writes there as soon as a metric is made: make sure it exists.

    The CLI empties it when the service starts; this only covers a component
    started some other way. Without `metrics` nothing is written anywhere.
    """
    if config.metrics_address is None:
        return
    try:
        config.metrics_dir.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StartupFailure(
            ExitCode.CANTCREAT, f"cannot create {config.metrics_dir}: {exc.strerror}"
        ) from None


def make_outbox(
    proc: str, config: Config, *, to_committer: bool = False, to_commitment: bool = False
) -> Outbox:
    """An outbox to the logger (and the committer, the commitment process), started."""
    endpoints = {"logger": bus.logger_endpoint(config.run_dir)}
    if to_committer:
        endpoints["committer"] = bus.committer_endpoint(config.run_dir)
    if to_commitment:
        endpoints["commitment"] = bus.commitment_endpoint(config.run_dir)
    outbox = Outbox(proc, endpoints)
    outbox.start()
    return outbox


def make_depot(config: Config) -> None:
    """The depot with `dir_mode` (for a node, depot/ above its own too); OSError if not."""
    for path in (config.depots_dir, config.depot_dir):
        path.mkdir(mode=int(config.dir_mode), exist_ok=True)


def claim_node(config: Config) -> int | None:
    """With `node`: hold the node's lock for this process's life (see storscp.nodelock).

    Returns the descriptor, which must stay open; StartupFailure while a
    `storscp recover` of this node runs.
    """
    if not config.node:
        return None
    try:
        return nodelock.hold_shared(config.depot_dir, int(config.file_mode))
    except nodelock.NodeLockHeld as exc:
        raise StartupFailure(ExitCode.UNAVAILABLE, str(exc)) from None
    except OSError as exc:
        raise StartupFailure(
            ExitCode.CANTCREAT,
            f"cannot open {nodelock.lock_path(config.depot_dir)}: {exc.strerror}",
        ) from None


def report_startup_failure(proc: str, exc: StartupFailure) -> int:
    """Say why on stderr (Supervisor's child log) and return the exit code."""
    print(f"storscp {proc}: {exc}", file=sys.stderr, flush=True)
    return int(exc.code)


def prepare_commitment_dir(config: Config) -> None:
    """The storage directory must exist; the pending commitment requests' directory
    (in state_dir) is ours to create and must be writable."""
    if not config.storage_dir.is_dir():
        raise StartupFailure(
            ExitCode.CANTCREAT,
            f"An existing Storage SCP directory must be specified: {config.storage_dir}"
            " does not exist or is not a directory",
        )
    path = config.commitment_dir
    try:
        RequestStore(path, dir_mode=int(config.dir_mode)).create_dirs()
    except OSError as exc:
        raise StartupFailure(ExitCode.CANTCREAT, f"cannot create {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupFailure(ExitCode.CANTCREAT, f"{path} is not writable by uid {os.geteuid()}")


def open_arrival(config: Config) -> Arrival:
    """The arrival clock of this node's depot; makes `state_dir` if it is missing.

    StartupFailure(CANTCREAT) if the state directory or boot counter cannot be written.
    """
    try:
        config.state_dir.mkdir(mode=int(config.dir_mode), parents=True, exist_ok=True)
        return Arrival(config.state_dir, depotfiles.highest_boot(config.depot_dir))
    except OSError as exc:
        raise StartupFailure(
            ExitCode.CANTCREAT, f"cannot use state directory {config.state_dir}: {exc}"
        ) from None
