"""Every Prometheus metric storscp exports: its name, help, labels and kind.

The components count with prometheus_client in its multiprocess mode: each
process writes its own small memory-mapped files in `<run_dir>/bus/metrics/`
(PROMETHEUS_MULTIPROC_DIR, which supervisord.conf sets for every program
when `metrics` is not empty), and the `metrics` component sums them at each
scrape. An update is a write into shared memory, about a microsecond, never
a message or a file write on the C-STORE path. The file of a process that
died stays, so a restarted receiver or committer never makes a counter go
backwards; the directory is emptied when the whole service starts. Without
`metrics` the same objects count in private memory that nobody reads.

Metrics the serving process computes at each scrape (depot backlog, free
space, health) are listed here too (`SCRAPED`), so this module names them all.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from storscp import processid


def _counting_half() -> ModuleType:
    """prometheus_client.metrics, without running the package's `__init__`.

    That `__init__` imports the exposition half too (http.server, urllib,
    email, ssl): 7.5 MiB RSS in each of the seven processes that only count
    (bench/README.md, "Where the memory goes"). `prometheus_client.metrics`
    itself needs only its siblings (values, mmap_dict, registry), so it is
    loaded under a package module whose `__init__` is not executed, which is
    then taken out of sys.modules again: a later `import prometheus_client`
    (the metrics program serves with it) runs the real `__init__`, which
    finds the submodules already loaded and uses the same classes.
    """
    if "prometheus_client" in sys.modules:
        return importlib.import_module("prometheus_client.metrics")
    spec = importlib.util.find_spec("prometheus_client")
    assert spec is not None and spec.submodule_search_locations is not None
    sys.modules["prometheus_client"] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module("prometheus_client.metrics")
    finally:
        del sys.modules["prometheus_client"]


def _cached_pid_values() -> None:
    """Multiprocess values that ask `processid.current`, set before any metric exists.

    prometheus_client asks for the pid at every increment (to notice a
    fork): os.getpid() two to three times per C-STORE was the largest single
    item of the receiver's Python time in a profile of tiny instances.
    """
    values = sys.modules["prometheus_client.values"]
    if values.ValueClass is not values.MutexValue:  # PROMETHEUS_MULTIPROC_DIR is set
        cached = values.MultiProcessValue(process_identifier=processid.current)
        values.__dict__["ValueClass"] = cached


if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram
else:
    _metrics = _counting_half()
    _cached_pid_values()
    Counter, Gauge, Histogram = _metrics.Counter, _metrics.Gauge, _metrics.Histogram

# Seconds: a tiny instance takes about a millisecond (two fsyncs), a 50 MB one
# about a second on loopback; a slow network stretches the tail.
RECEIVE_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
# Success -> visible: the committer's batch window is 4 ms, plus one directory fsync.
VISIBLE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# How often a component says it is doing its job, and when silence means it is not.
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_STALE_S = 5.0

HELP: dict[str, str] = {
    # receiver
    "storscp_associations_total": "Associations by calling AE and outcome: accepted,"
    " rejected (with reason), released, aborted (with reason)",
    "storscp_associations_open": "Associations open now, all receiver processes together",
    "storscp_tls_handshake_failures_total": "TLS handshakes that failed on the TLS port",
    "storscp_cstore_failures_total": "C-STORE requests answered with a failure status,"
    " by calling AE and status",
    "storscp_cstore_receive_seconds": "Time from a C-STORE request to its Success response"
    " (dataset received, checked and durable)",
    # committer
    "storscp_instances_stored_total": "Instances made visible in storage_dir, by calling AE",
    "storscp_stored_bytes_total": "Bytes of the instances made visible in storage_dir,"
    " by calling AE",
    "storscp_instances_replaced_total": "Stored instances that replaced a file of the same"
    " SOP Instance UID",
    "storscp_success_to_visible_seconds": "Time from the durable ready file (just before"
    " Success) to the file visible in storage_dir",
    "storscp_last_stored_timestamp_seconds": "When an instance was last made visible (Unix time)",
    # listener
    "storscp_component_exits_total": "Component exits seen by Supervisor, by program and"
    " whether the exit was expected",
    "storscp_component_restarts_total": "Automatic restarts of a program after it exited"
    " or failed to start",
    # logger and every sender
    "storscp_log_lines_written_total": "Lines written to storscp1.log / storscp2.log",
    "storscp_log_write_failures_total": "Times writing the log started failing"
    " (disk full, I/O error)",
    "storscp_events_dropped_total": "Events dropped by a full queue, by component and queue",
    # every component
    "storscp_heartbeat_timestamp_seconds": "When a component last showed it does its job"
    " (receiver accepting, committer loop turning, logger writing); 0: stopped",
}

# Computed by the serving process at each scrape (storscp/metrics/collect.py).
SCRAPED: dict[str, str] = {
    "storscp_depot_ready_files": "Ready files in the depot waiting for the committer",
    "storscp_depot_oldest_ready_age_seconds": "Age of the oldest ready file in the depot (0: none)",
    "storscp_storage_free_bytes": "Free bytes of the storage filesystem (for unprivileged users)",
    "storscp_storage_free_inodes": "Free inodes of the storage filesystem",
    "storscp_storage_min_free_bytes": "The configured min_free_bytes: below it stores are"
    " refused with 0xA700",
    "storscp_start_time_seconds": "When the service (supervisord) was started (Unix time)",
    "storscp_uptime_seconds": "Seconds since the service was started",
    "storscp_build_info": "The storscp version that runs (always 1)",
    "storscp_healthy": "1 when /healthz answers 200, by check (receiver, committer,"
    " storage, logger); 0 otherwise",
}


def _counter(name: str, labels: tuple[str, ...] = ()) -> Counter:
    # registry=None: nothing in this process serves them; the files do.
    return Counter(name, HELP[name], labels, registry=None)


class Heartbeat:
    """A component's sign of life, written at most every HEARTBEAT_INTERVAL_S."""

    def __init__(self, component: str, interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        gauge = Gauge(
            "storscp_heartbeat_timestamp_seconds",
            HELP["storscp_heartbeat_timestamp_seconds"],
            ["component"],
            registry=None,
            # Any live process of the program will do; a dead one's beat goes with it.
            multiprocess_mode="livemax",
        )
        self.gauge = gauge
        self._gauge = gauge.labels(component)
        self._next = 0.0

    def beat(self) -> None:
        """Called from the component's loop, as often as it likes: cheap when early."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval_s
            self._gauge.set(time.time())

    def stopped(self) -> None:
        """Stopping on purpose: say so now rather than going stale."""
        self._gauge.set(0)
        self._next = float("inf")


@dataclass(frozen=True, slots=True)
class ReceiverMetrics:
    associations: Counter  # calling_ae, outcome, reason
    associations_open: Gauge
    tls_handshake_failures: Counter
    store_failures: Counter  # calling_ae, status
    receive_seconds: Histogram
    heartbeat: Heartbeat


def receiver_metrics() -> ReceiverMetrics:
    return ReceiverMetrics(
        associations=_counter("storscp_associations_total", ("calling_ae", "outcome", "reason")),
        associations_open=Gauge(
            "storscp_associations_open",
            HELP["storscp_associations_open"],
            registry=None,
            multiprocess_mode="livesum",  # a dead receiver's associations are gone
        ),
        tls_handshake_failures=_counter("storscp_tls_handshake_failures_total"),
        store_failures=_counter("storscp_cstore_failures_total", ("calling_ae", "status")),
        receive_seconds=Histogram(
            "storscp_cstore_receive_seconds",
            HELP["storscp_cstore_receive_seconds"],
            registry=None,
            buckets=RECEIVE_BUCKETS_S,
        ),
        heartbeat=Heartbeat("receiver"),
    )


@dataclass(frozen=True, slots=True)
class CommitterMetrics:
    stored: Counter  # calling_ae
    stored_bytes: Counter  # calling_ae
    replaced: Counter
    visible_seconds: Histogram
    last_stored: Gauge
    heartbeat: Heartbeat


def committer_metrics() -> CommitterMetrics:
    return CommitterMetrics(
        stored=_counter("storscp_instances_stored_total", ("calling_ae",)),
        stored_bytes=_counter("storscp_stored_bytes_total", ("calling_ae",)),
        replaced=_counter("storscp_instances_replaced_total"),
        visible_seconds=Histogram(
            "storscp_success_to_visible_seconds",
            HELP["storscp_success_to_visible_seconds"],
            registry=None,
            buckets=VISIBLE_BUCKETS_S,
        ),
        last_stored=Gauge(
            "storscp_last_stored_timestamp_seconds",
            HELP["storscp_last_stored_timestamp_seconds"],
            registry=None,
            multiprocess_mode="max",  # survives committer restarts
        ),
        heartbeat=Heartbeat("committer"),
    )


@dataclass(frozen=True, slots=True)
class LoggerMetrics:
    lines_written: Counter
    write_failures: Counter
    heartbeat: Heartbeat


def logger_metrics() -> LoggerMetrics:
    return LoggerMetrics(
        lines_written=_counter("storscp_log_lines_written_total"),
        write_failures=_counter("storscp_log_write_failures_total"),
        heartbeat=Heartbeat("logger"),
    )


@dataclass(frozen=True, slots=True)
class ListenerMetrics:
    exits: Counter  # program, expected
    restarts: Counter  # program


def listener_metrics() -> ListenerMetrics:
    return ListenerMetrics(
        exits=_counter("storscp_component_exits_total", ("program", "expected")),
        restarts=_counter("storscp_component_restarts_total", ("program",)),
    )


def sample_value(metric: Counter | Gauge | Histogram, name: str, **labels: str) -> float | None:
    """The value of one sample as this process counted it (for tests and diagnostics)."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def events_dropped() -> Counter:
    """Labels: component (the process whose queue was full), queue (logger, committer, ...)."""
    return _counter("storscp_events_dropped_total", ("component", "queue"))
