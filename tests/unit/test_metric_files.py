"""prometheus_client's multiprocess files, written by real processes and read as the server does.

Each component process counts into its own files; the metrics process sums
them. A process that exits leaves its counters behind (a restart must not
make a counter go backwards) but its live gauges are dropped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import CollectorRegistry

from storscp.metrics.collect import heartbeats
from storscp.metrics.main import forget_dead_processes

# A receiver's worth of counting, in a process of its own; argv[1] marks it as
# "ours" (the real ones carry the effective.toml path on their command line).
COUNT = """
import sys
from storscp.instruments import receiver_metrics
m = receiver_metrics()
m.associations.labels("CT_1", "accepted", "").inc()
m.associations_open.inc()
m.receive_seconds.observe(0.002)
m.heartbeat.beat()
print("counted", flush=True)
if sys.argv[2] == "stay":
    sys.stdin.read()
"""


def counting_process(metrics_dir: Path, marker: Path, stay: bool) -> subprocess.Popen[str]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-c", COUNT, str(marker), "stay" if stay else "exit"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "counted\n"
    return proc


def samples(metrics_dir: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    out = {}
    for metric in registry.collect():
        for s in metric.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_counters_of_a_dead_process_stay_and_its_live_gauges_go(tmp_path: Path) -> None:
    marker = tmp_path / "effective.toml"
    # Given a receiver that counted and exited (a restart), and one still running
    gone = counting_process(tmp_path, marker, stay=False)
    gone.wait(10)
    alive = counting_process(tmp_path, marker, stay=True)
    try:
        before = samples(tmp_path)
        assert before["storscp_associations_open{}"] == 2
        # When the metrics process does its housekeeping
        assert forget_dead_processes(tmp_path, marker) == [gone.pid]
        after = samples(tmp_path)
        # Then the dead one's open associations are gone, its counts are not
        assert after["storscp_associations_open{}"] == 1
        key = "storscp_associations_total{calling_ae=CT_1,outcome=accepted,reason=}"
        assert after[key] == before[key] == 2
        assert after["storscp_cstore_receive_seconds_count{}"] == 2
        beats = heartbeats(tmp_path)
        assert set(beats) == {"receiver"} and beats["receiver"] > 0  # the live one's
    finally:
        assert alive.stdin is not None
        alive.stdin.close()
        alive.wait(10)
