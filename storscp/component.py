"""Start-up shared by the four component processes.

Each component is started by supervisord as `python -m storscp.<name> -c
<run_dir>/effective.toml`. This module parses that, loads the Config, sets
up stderr logging (Supervisor keeps it as the child log) and the outbox
that carries events to the logger.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from storscp import bus
from storscp.config import Config, ConfigError, load
from storscp.errors import StorscpError
from storscp.exitcodes import ExitCode
from storscp.outbox import Outbox


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
        return load(args.config)
    except ConfigError as exc:
        raise StartupFailure(ExitCode.CONFIG, str(exc)) from None


def make_outbox(proc: str, config: Config, *, to_committer: bool = False) -> Outbox:
    """An outbox to the logger (and the committer for receivers), started."""
    endpoints = {"logger": bus.logger_endpoint(config.run_dir)}
    if to_committer:
        endpoints["committer"] = bus.committer_endpoint(config.run_dir)
    outbox = Outbox(proc, endpoints)
    outbox.start()
    return outbox


def report_startup_failure(proc: str, exc: StartupFailure) -> int:
    """Say why on stderr (Supervisor's child log) and return the exit code."""
    print(f"storscp {proc}: {exc}", file=sys.stderr, flush=True)
    return int(exc.code)
