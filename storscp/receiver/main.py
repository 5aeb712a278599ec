"""Entry point of the receiver: listen, serve associations until told to stop, drain.

The DICOM libraries (pydicom, pynetdicom) take most of a second to import,
several seconds on a busy machine, longer than Supervisor's startsecs. So
the ports and the TLS certificate are tried first (`probe_listen`) and the
server is imported only then: a receiver that cannot serve exits at once,
and Supervisor sees a failed start, not a running process that dies later.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import warnings

from storscp import __version__, bus
from storscp.component import (
    StartupFailure,
    begin_component,
    claim_node,
    make_depot,
    make_outbox,
    open_arrival,
    prepare_commitment_dir,
    report_startup_failure,
)
from storscp.config import Config
from storscp.exitcodes import ExitCode
from storscp.instruments import HEARTBEAT_INTERVAL_S
from storscp.outbox import Outbox
from storscp.receiver.commitment_reports import Mailboxes, ReportMail, remove_stale_endpoints
from storscp.receiver.tls import TlsSetupError, make_tls_context

PROC = "receiver"


def check_depot(config: Config) -> None:
    """The storage directory must exist; the depot inside it is ours to create."""
    if not config.storage_dir.is_dir():
        raise StartupFailure(
            ExitCode.CANTCREAT,
            f"An existing Storage SCP directory must be specified: {config.storage_dir}"
            " does not exist or is not a directory",
        )
    try:
        make_depot(config)
    except OSError as exc:
        raise StartupFailure(
            ExitCode.CANTCREAT, f"cannot create depot {config.depot_dir}: {exc.strerror}"
        ) from None
    if not os.access(config.depot_dir, os.W_OK | os.X_OK):
        raise StartupFailure(
            ExitCode.CANTCREAT,
            f"depot {config.depot_dir} is not writable by uid {os.geteuid()}",
        )
    prepare_commitment_dir(config)


def quiet_dicom_libraries() -> None:
    """Silence pydicom and pynetdicom; call after importing them (pydicom sets
    its logger's level when imported).

    They only decode what peers send here, so all they log or warn about is
    a peer's bytes (a traceback for each non-ASCII AE title, a few lines
    quoting each invalid UID): any client could fill our stderr log. A
    refused request is already an ERROR event of ours with the library's
    reason in it; refused contexts are counted in the ASSOCIATION event.
    """
    for library in ("pynetdicom", "pydicom"):
        logging.getLogger(library).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"(pydicom|pynetdicom)(\.|$)")


def probe_listen(config: Config) -> None:
    """Bind each port as the server will (then let go), load the TLS certificate.

    Raises OSError or TlsSetupError, as `Receiver.listen()` would.
    """
    if config.tls is not None:
        make_tls_context(config.tls)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    for port in (config.port, config.tls.port if config.tls is not None else None):
        if port is None:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((config.host, port))


def listen_failure(config: Config, outbox: Outbox, exc: OSError | TlsSetupError) -> int:
    """Say why the receiver cannot listen (event and stderr); the exit code."""
    if isinstance(exc, TlsSetupError):
        code, reason = ExitCode.CONFIG, str(exc)
    else:
        code = ExitCode.UNAVAILABLE if exc.errno == errno.EADDRINUSE else ExitCode.CANTCREAT
        reason = f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
    outbox.event(bus.EventType.ERROR, what="receiver cannot start", reason=reason)
    return report_startup_failure(PROC, StartupFailure(code, reason))


def main(argv: list[str] | None = None) -> int:
    try:
        config, stop = begin_component(PROC, argv)
        check_depot(config)
        # The descriptor stays open until we exit: `storscp recover --node` waits for us.
        claim_node(config)
        arrival = open_arrival(config)
    except StartupFailure as exc:
        return report_startup_failure(PROC, exc)

    outbox = make_outbox(PROC, config, to_committer=True, to_commitment=True)
    # Storage Commitment reports for associations still open come back here.
    mailboxes = Mailboxes()
    mail = ReportMail(bus.receiver_endpoint(config.run_dir, os.getpid()), mailboxes, outbox)
    try:
        try:
            probe_listen(config)
        except (OSError, TlsSetupError) as exc:
            return listen_failure(config, outbox, exc)
        from storscp.receiver.server import Receiver  # the DICOM libraries, only now

        quiet_dicom_libraries()
        receiver = Receiver(config, outbox, arrival, mailboxes, mail.endpoint)
        try:
            host, port, tls_port = receiver.listen()
        except (OSError, TlsSetupError) as exc:
            return listen_failure(config, outbox, exc)
        remove_stale_endpoints(config.bus_dir)
        if not mail.start():
            # Reports then always go on a new association; nothing else is lost.
            outbox.event(bus.EventType.ERROR, what="report endpoint unavailable", reason=mail.error)
            receiver.services.commitment.reply_to = ""
        receiver.start()
        listening: dict[str, bus.FieldValue] = {"host": host, "port": port}
        if tls_port is not None:
            listening["tls_port"] = tls_port
        outbox.event(
            bus.EventType.START,
            pid=os.getpid(),
            version=__version__,
            ae_title=config.ae_title,
            **listening,
            storage_dir=str(config.storage_dir),
            log_dir=str(config.log_dir),
        )
        heartbeat = receiver.counter.metrics.heartbeat
        heartbeat.beat()  # accepting from now on
        while not stop.wait(HEARTBEAT_INTERVAL_S):
            if receiver.accepting():
                heartbeat.beat()  # stale when an acceptor or this thread is gone
        heartbeat.stopped()  # accepting -> draining: /healthz says so at once
        aborted = receiver.stop(config.drain_timeout_s, stop.urgent)
        if aborted:
            outbox.event(
                bus.EventType.ERROR,
                what="associations aborted at stop",
                count=aborted,
                reason=f"still running after drain_timeout_s={config.drain_timeout_s}",
            )
        return ExitCode.OK
    finally:
        mail.stop()
        # The arrival lock stays open until exit: a connection thread the drain
        # left behind may still be making a file ready.
        outbox.close()
