"""`storscp echo HOST PORT`: is that DICOM node there? (C-ECHO, like DCMTK's echoscu)

The IDL service's "Echo" for the admin checking a remote node; pynetdicom is
the SCU. Output follows echoscu: `I:` lines for progress (all of them with
`--verbose`, else only the answer), one `F:` or `E:` line on stderr saying why
it failed. Exit status 0 when the node answered Success, 1 otherwise (as
echoscu does). TLS options are those of the `[tls]` table.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from storscp.config import TLS_VERSIONS

ECHO_FAILED = 1
TLS_VERSION = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class EchoTls:
    """TLS as the [tls] table says it; all optional for a client.

    `ca_file` verifies the node's certificate (else the system's CAs do);
    `certificate` and `private_key` are ours, for nodes that ask for one.
    """

    certificate: Path | None = None
    private_key: Path | None = None
    ca_file: Path | None = None
    min_version: str = "1.2"


def tls_context(tls: EchoTls) -> ssl.SSLContext:
    """A client context; ssl.SSLError or OSError if a file cannot be used."""
    if tls.min_version not in TLS_VERSIONS:
        raise ValueError(f"--min-version must be one of {', '.join(TLS_VERSIONS)}")
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    context.minimum_version = TLS_VERSION[tls.min_version]
    # DICOM nodes are addressed by IP as often as by name, as DCMTK does: the
    # chain is verified, the name in the certificate is not.
    context.check_hostname = False
    if tls.certificate is not None:
        key = str(tls.private_key) if tls.private_key else None
        context.load_cert_chain(str(tls.certificate), key)
    return context


class _Reasons(logging.Handler):
    """pynetdicom says why an association failed only in its log: keep the errors."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def echo(
    host: str,
    port: int,
    *,
    called_ae: str = "ANY-SCP",
    calling_ae: str = "ECHOSCU",
    timeout_s: float = 30.0,
    tls: EchoTls | None = None,
    verbose: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Associate, send one C-ECHO, release; 0 if the node answered Success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    def info(line: str) -> None:
        if verbose:
            print(f"I: {line}", file=out, flush=True)

    try:
        context = tls_context(tls) if tls is not None else None
    except (ssl.SSLError, OSError, ValueError) as exc:
        print(f"F: cannot set up TLS: {exc}", file=err)
        return ECHO_FAILED
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    reasons = _Reasons()
    library_log = logging.getLogger("pynetdicom")
    library_log.addHandler(reasons)
    propagate, library_log.propagate = library_log.propagate, False
    try:
        info("Requesting Association")
        try:
            tls_args = (context, host) if context is not None else None
            assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls_args)
        except (OSError, socket.gaierror) as exc:
            print(f"F: Association Request Failed: {exc}", file=err)
            return ECHO_FAILED
        if assoc.is_rejected:
            primitive = assoc.acceptor.primitive
            why = getattr(primitive, "reason_str", "") or "rejected"
            print(f"F: Association Rejected: {why}", file=err)
            return ECHO_FAILED
        if not assoc.is_established:
            # The last error is the cause ("TCP Initialisation Error: ... refused").
            why = reasons.messages[-1] if reasons.messages else "aborted"
            print(f"F: Association Request Failed: {why}", file=err)
            return ECHO_FAILED
        info("Association Accepted")
        info("Sending Echo Request (MsgID 1)")
        status = assoc.send_c_echo()
        code = int(status.Status) if "Status" in status else None
        if code is None:
            why = reasons.messages[-1] if reasons.messages else "no response"
            print(f"F: Echo Failed: {why}", file=err)
            assoc.abort()
            return ECHO_FAILED
        if code != 0:
            print(f"E: Echo Failed: status 0x{code:04X}", file=err)
            assoc.release()
            return ECHO_FAILED
        print("I: Received Echo Response (Success)", file=out, flush=True)
        info("Releasing Association")
        assoc.release()
        return 0
    finally:
        library_log.removeHandler(reasons)
        library_log.propagate = propagate
        ae.shutdown()
