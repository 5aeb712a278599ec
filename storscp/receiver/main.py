"""Entry point of the receiver: listen, serve associations until told to stop, drain."""

from __future__ import annotations

import errno
import logging
import os
import warnings

from storscp import __version__, bus
from storscp.component import (
    StartupFailure,
    claim_node,
    load_component_config,
    make_depot,
    make_outbox,
    report_startup_failure,
)
from storscp.config import Config
from storscp.exitcodes import ExitCode
from storscp.instruments import HEARTBEAT_INTERVAL_S
from storscp.receiver.tls import TlsSetupError, make_tls_context
from storscp.runtime import StopFlag, die_with_parent

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


def quiet_peer_libraries() -> None:
    """Silence pynetdicom and pydicom, once imported (pydicom sets its level then).

    They only decode what peers send here, so all they log or warn about is
    a peer's bytes (a traceback for each non-ASCII AE title, a few lines
    quoting each invalid UID): any client could fill our stderr log. A
    refused request is already an ERROR event of ours with the library's
    reason in it; refused contexts are counted in the ASSOCIATION event.
    """
    for library in ("pynetdicom", "pydicom"):
        logging.getLogger(library).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"(pydicom|pynetdicom)(\.|$)")


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_component_config(PROC, argv)
        stop = StopFlag()
        stop.install()
        die_with_parent()
        check_depot(config)
        # The descriptor stays open until we exit: `storscp recover --node` waits for us.
        claim_node(config)
    except StartupFailure as exc:
        return report_startup_failure(PROC, exc)

    outbox = make_outbox(PROC, config, to_committer=True)
    try:
        if config.tls is not None:
            # Before pynetdicom's import (seconds on a busy machine): a key this
            # account cannot read must fail within startsecs, so Supervisor
            # marks it FATAL instead of restarting it for ever.
            try:
                make_tls_context(config.tls)
            except TlsSetupError as exc:
                outbox.event(bus.EventType.ERROR, what="receiver cannot start", reason=str(exc))
                return report_startup_failure(PROC, StartupFailure(ExitCode.CONFIG, str(exc)))
        from storscp.receiver.server import Receiver  # here: pynetdicom imports slowly

        quiet_peer_libraries()
        receiver = Receiver(config, outbox)
        try:
            host, port, tls_port = receiver.listen()
        except TlsSetupError as exc:
            outbox.event(bus.EventType.ERROR, what="receiver cannot start", reason=str(exc))
            return report_startup_failure(PROC, StartupFailure(ExitCode.CONFIG, str(exc)))
        except OSError as exc:
            code = ExitCode.UNAVAILABLE if exc.errno == errno.EADDRINUSE else ExitCode.CANTCREAT
            reason = f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
            outbox.event(bus.EventType.ERROR, what="receiver cannot start", reason=reason)
            return report_startup_failure(PROC, StartupFailure(code, reason))
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
        outbox.close()
