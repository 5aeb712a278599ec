"""`storscp echo HOST PORT`: C-ECHO a remote node (see storscp.echo).

Takes no configuration: the node is someone else's. The TLS options are the
`[tls]` table's keys as flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from storscp.config import TLS_VERSIONS
from storscp.echo import EchoTls, echo

ECHO_HELP = "send a C-ECHO to a DICOM node, as DCMTK's echoscu does"


def add_echo_parser(sub: Any) -> None:
    """The `echo` subcommand on `sub` (argparse's subparsers action)."""
    p = sub.add_parser("echo", help=ECHO_HELP, description=ECHO_HELP)
    p.add_argument("host", help="the node's host name or IP address")
    p.add_argument("port", type=_port, help="its DICOM port")
    p.add_argument("--aec", default="ANY-SCP", metavar="AE", help="called AE title (ANY-SCP)")
    p.add_argument("--aet", default="ECHOSCU", metavar="AE", help="our AE title (ECHOSCU)")
    p.add_argument("--timeout", type=_seconds, default=30.0, metavar="S", help="per step (30)")
    p.add_argument("-v", "--verbose", action="store_true", help="say each step, as echoscu -v")
    tls = p.add_argument_group("TLS (the keys of the [tls] table)")
    tls.add_argument("--tls", action="store_true", help="speak TLS")
    tls.add_argument("--ca-file", type=Path, help="CA certificates the node's must chain to")
    tls.add_argument("--certificate", type=Path, help="our certificate, for a node that asks")
    tls.add_argument("--private-key", type=Path, help="the private key of --certificate")
    tls.add_argument("--min-version", choices=TLS_VERSIONS, default="1.2")


def cmd_echo(args: argparse.Namespace) -> int:
    tls = None
    if args.tls or args.ca_file or args.certificate:
        tls = EchoTls(args.certificate, args.private_key, args.ca_file, args.min_version)
    return echo(
        args.host,
        args.port,
        called_ae=args.aec,
        calling_ae=args.aet,
        timeout_s=args.timeout,
        tls=tls,
        verbose=args.verbose,
    )


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be 0-3600 seconds, got {text!r}")
    return value
