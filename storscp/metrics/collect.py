"""What the serving process looks at on each scrape and health check.

The components' counters come from their files (prometheus_client's
MultiProcessCollector sums them). Beside those, this collector looks at what
no component has to report: the depot backlog and the storage filesystem
(so they are right even when the committer is down), the heartbeats, the
health verdict, uptime and the version. Everything is read fresh on each
request; nothing here writes.
"""

from __future__ import annotations

import glob
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from storscp import __version__
from storscp.config import Config
from storscp.depotfiles import ready_names
from storscp.instruments import SCRAPED
from storscp.metrics.files import STARTED_FILE
from storscp.metrics.health import CHECKS, Facts, Verdict, verdict

HEARTBEAT = "storscp_heartbeat_timestamp_seconds"


def heartbeats(metrics_dir: Path) -> dict[str, float]:
    """component -> last beat, the most recent over its live processes."""
    files = glob.glob(os.path.join(metrics_dir, "gauge_livemax_*.db"))
    out: dict[str, float] = {}
    for metric in MultiProcessCollector.merge(files, accumulate=False):
        if metric.name != HEARTBEAT:
            continue
        for sample in metric.samples:
            out[sample.labels["component"]] = sample.value
    return out


def depot_backlog(depot_dir: Path, now: float) -> tuple[int, float]:
    """(ready files, age in seconds of the oldest), from a listing made now."""
    try:
        names = ready_names(depot_dir)
    except OSError:
        return 0, 0.0
    for name in names[:16]:  # the oldest may be committed while we look
        try:
            # A ready file's ctime is its rename to .ready, just before Success.
            return len(names), max(0.0, now - os.stat(depot_dir / name).st_ctime)
        except FileNotFoundError:
            continue
    return len(names), 0.0


def storage_space(storage_dir: Path) -> tuple[int | None, int | None]:
    """(free bytes, free inodes) for an unprivileged writer; None if unknown."""
    try:
        st = os.statvfs(storage_dir)
    except OSError:
        return None, None
    return st.f_bavail * st.f_frsize, st.f_favail


def service_start_time(metrics_dir: Path, fallback: float) -> float:
    try:
        return float((metrics_dir / STARTED_FILE).read_text().strip())
    except (OSError, ValueError):
        return fallback


class ServiceCollector(Collector):
    """The scraped metrics of instruments.SCRAPED, and the health verdict."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = service_start_time(config.metrics_dir, time.time())

    def facts(self) -> Facts:
        return self._look()[0]

    def _look(self) -> tuple[Facts, int | None]:
        """The facts of now, and the free inodes (which health does not judge)."""
        now = time.time()
        ready, oldest = depot_backlog(self.config.depot_dir, now)
        free_bytes, free_inodes = storage_space(self.config.storage_dir)
        facts = Facts(
            now=now,
            heartbeats=heartbeats(self.config.metrics_dir),
            ready_files=ready,
            oldest_ready_age_s=oldest,
            storage_dir=self.config.storage_dir,
            free_bytes=free_bytes,
            min_free_bytes=self.config.min_free_bytes,
            depot_scan_interval_s=self.config.depot_scan_interval_s,
        )
        return facts, free_inodes

    def health(self) -> Verdict:
        return verdict(self.facts())

    def collect(self) -> Iterator[Metric]:
        facts, free_inodes = self._look()
        health = verdict(facts)
        yield _gauge("storscp_depot_ready_files", facts.ready_files)
        yield _gauge("storscp_depot_oldest_ready_age_seconds", facts.oldest_ready_age_s)
        if facts.free_bytes is not None and free_inodes is not None:
            yield _gauge("storscp_storage_free_bytes", facts.free_bytes)
            yield _gauge("storscp_storage_free_inodes", free_inodes)
        yield _gauge("storscp_storage_min_free_bytes", self.config.min_free_bytes)
        yield _gauge("storscp_start_time_seconds", self.started)
        yield _gauge("storscp_uptime_seconds", max(0.0, facts.now - self.started))
        info = InfoMetricFamily("storscp_build", SCRAPED["storscp_build_info"])
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield info
        healthy = GaugeMetricFamily("storscp_healthy", SCRAPED["storscp_healthy"], labels=["check"])
        for check in CHECKS:
            healthy.add_metric([check], 0.0 if check in health.failing else 1.0)
        yield healthy


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, SCRAPED[name], value=value)
