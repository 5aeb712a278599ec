"""The `storscp` command: run, start, stop, restart, status, config, logs, feed, echo, recover.

Every command takes `-c/--config FILE` and one flag per configuration key,
so `start`, `status` and `stop` given the same options address the same
service (its run_dir). Answers are the original service's: `start request
issued`, `service already running`, `start failed: <reason>`, `stop request
issued`, `service not running`, `service running`. Messages for the admin go
to stdout/stderr, never into storscp1.log / storscp2.log, and never as a
traceback.

Here: the parser and `main()`, the boundary that turns every refusal into a
message and an exit code. `prepare` readies a start, `service` holds the
commands that go through supervisord, `logs` reads the two log files,
`feed` prints the stored-instance feed, `echo` checks another DICOM node,
`nodes` serves several gateways on one storage (`recover`, `haproxy-check`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from storscp import __version__
from storscp.cli.echo import add_echo_parser, cmd_echo
from storscp.cli.feed import cmd_feed
from storscp.cli.logs import cmd_logs
from storscp.cli.nodes import cmd_haproxy_check, cmd_recover
from storscp.cli.service import (
    STATUS_UNKNOWN,
    cmd_restart,
    cmd_run,
    cmd_start,
    cmd_status,
    cmd_stop,
)
from storscp.config import KEYS, Config, ConfigError, ConfigNotReadable, flag_for, load
from storscp.errors import CommandRefused, NotPermitted
from storscp.exitcodes import ExitCode
from storscp.supervisor import control

PRIVILEGES_MESSAGE = "Failed. Administrator privileges may be needed."

FAILED_PREFIX = {
    "run": "start failed: ",
    "start": "start failed: ",
    "restart": "restart failed: ",
    "feed": "storscp feed: ",
}
CONTROL_COMMANDS = {"start", "stop", "restart", "status"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def _common(*, without: str = "") -> _Parser:
    """-c and one flag per configuration key (but `without`)."""
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", type=Path, help="configuration file (TOML)")
    for key, (_kind, help_text) in KEYS.items():
        if key != without:
            common.add_argument(flag_for(key), dest=key, metavar=key.upper(), help=help_text)
    return common


def build_parser() -> _Parser:
    common = _common()

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
    feed_help = "print the stored-instance feed as JSON lines"
    feed = sub.add_parser("feed", parents=[common], help=feed_help, description=feed_help)
    feed.add_argument(
        "--since", type=_count, default=0, metavar="SEQ", help="only what came after SEQ (0: all)"
    )
    feed.add_argument("-f", "--follow", action="store_true", help="then keep printing new ones")
    add_echo_parser(sub)
    recover_help = "commit a dead node's acknowledged instances here (several gateways)"
    # Here --node names the dead node; this node's own name comes from -c.
    recover = sub.add_parser(
        "recover", parents=[_common(without="node")], help=recover_help, description=recover_help
    )
    recover.add_argument("--node", dest="dead_node", required=True, metavar="NAME")
    check_help = "print HAProxy's tcp-check lines for this ae_title (deploy/haproxy.cfg)"
    sub.add_parser("haproxy-check", parents=[common], help=check_help, description=check_help)
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
    if command == "echo":
        return cmd_echo(args)  # another node: no configuration of ours involved
    failed = FAILED_PREFIX.get(command, "storscp: ")
    overrides = {key: getattr(args, key, None) for key in KEYS}
    try:
        config = load(args.config, overrides)
        if command == "logs":
            return cmd_logs(config, args.follow, args.lines)
        if command == "feed":
            return cmd_feed(config, args.since, args.follow)
        if command == "recover":
            return cmd_recover(config, args.dead_node)
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
    except CommandRefused as exc:
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


def _not_permitted(command: str, detail: str) -> int:
    print(PRIVILEGES_MESSAGE, file=sys.stderr)
    print(f"storscp: {detail}", file=sys.stderr)
    return STATUS_UNKNOWN if command == "status" else ExitCode.NOPERM


def cmd_config(config: Config) -> int:
    sys.stdout.write(config.to_toml())
    return ExitCode.OK


COMMANDS: dict[str, Callable[[Config], int]] = {
    "run": cmd_run,
    "start": cmd_start,
    "stop": cmd_stop,
    "restart": cmd_restart,
    "status": cmd_status,
    "config": cmd_config,
    "haproxy-check": cmd_haproxy_check,
}
