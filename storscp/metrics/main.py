"""Entry point of the metrics process: serve `/metrics` and `/healthz` on `metrics`.

Reads the other components' prometheus_client files in `<run_dir>/bus/metrics/`
and sums them at each scrape; writes nothing there except removing the
live-gauge files of processes that are gone (prometheus_client's
`mark_process_dead`), so a killed receiver's open associations stop
counting. Owns no socket of the bus; pushes its START and errors to the logger.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from pathlib import Path

from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import CollectorRegistry

from storscp import __version__, bus
from storscp.component import (
    StartupFailure,
    begin_component,
    make_outbox,
    report_startup_failure,
)
from storscp.exitcodes import ExitCode
from storscp.metrics.collect import ServiceCollector
from storscp.metrics.server import listen, make_app

PROC = "metrics"
HOUSEKEEPING_S = 1.0
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_([0-9]+)\.db$")


def forget_dead_processes(metrics_dir: Path, effective_path: Path) -> list[int]:
    """Drop the live gauges of processes that are gone; return their pids.

    A process is ours while its command line names our effective.toml: a pid
    reused by some other program does not keep a dead receiver's gauges.
    """
    pids = set()
    try:
        names = os.listdir(metrics_dir)
    except OSError:
        return []
    for name in names:
        match = _LIVE_GAUGE_FILE.match(name)
        if match:
            pids.add(int(match.group(1)))
    dead = sorted(pid for pid in pids if not _is_ours(pid, effective_path))
    for pid in dead:
        mark_process_dead(pid, str(metrics_dir))
    return dead


def _is_ours(pid: int, effective_path: Path) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return str(effective_path).encode() in fh.read()
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    try:
        config, stop = begin_component(PROC, argv)
        address = config.metrics_address
        if address is None:
            raise StartupFailure(ExitCode.CONFIG, "key 'metrics' is empty: nothing to serve")
    except StartupFailure as exc:
        return report_startup_failure(PROC, exc)

    outbox = make_outbox(PROC, config)
    try:
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry, path=str(config.metrics_dir))
        service = ServiceCollector(config)
        registry.register(service)
        host, port = address
        try:
            server = listen(host, port, make_app(registry, service.health))
        except OSError as exc:
            code = ExitCode.UNAVAILABLE if exc.errno == errno.EADDRINUSE else ExitCode.CANTCREAT
            reason = f"cannot listen on {config.metrics}: {exc.strerror}"
            outbox.event(bus.EventType.ERROR, what="metrics cannot start", reason=reason)
            return report_startup_failure(PROC, StartupFailure(code, reason))
        thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        thread.start()
        bound_host, bound_port = server.server_address[:2]
        outbox.event(
            bus.EventType.START,
            pid=os.getpid(),
            version=__version__,
            host=str(bound_host),
            port=int(bound_port),
        )
        while not stop.wait(HOUSEKEEPING_S):
            forget_dead_processes(config.metrics_dir, config.effective_path)
        server.shutdown()
        server.server_close()
        return ExitCode.OK
    finally:
        outbox.close()
