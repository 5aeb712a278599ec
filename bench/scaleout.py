"""Scale-out benchmark: 4 senders straight to one node, through HAProxy to 1 node, to 2 nodes.

    python -m bench.scaleout [--rounds 3] [--count small=200] [--count tiny=2000]

Same files, same four DCMTK storescu senders (bench/senders.py), in the
same run, rounds interleaved (direct, haproxy-1, haproxy-2, direct, ...):

- direct: one storscp node, no PROXY protocol, senders on its port;
- haproxy-1: Debian's HAProxy (tests/support/haproxy.py: mode tcp,
  leastconn, send-proxy-v2, the association health check) in front of
  one node with `proxy_protocol`;
- haproxy-2: the same in front of two nodes (`node` a and b) sharing one
  storage directory.

Throughput is instances per second from the first sender's start to the
last Success, then every instance is checked in storage (dataset SHA-256).
Beside it: how busy the whole machine was (/proc/stat: all cores, all
processes, ours or not), and the CPU seconds of the senders (reaped
children), of HAProxy's and of the nodes' process trees (bench/procstat.py),
also as a share of what the cores could give in that time. On a machine
whose cores are all busy the ceiling is the CPU, and a second node on the
same cores can only share it: this says how close each run is to it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import procstat
from bench.data import Workload, dataset_sha256, load_or_make
from bench.senders import send
from tests.support.haproxy import Backend, HAProxy
from tests.support.service import Service, poll_for, short_tempdir

SENDERS = 4
SCENARIOS = ("direct", "haproxy-1", "haproxy-2")
DEFAULT_COUNTS = {"small": 200, "tiny": 2000}
VISIBLE_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Run:
    scenario: str
    workload: str
    instances: int
    total_bytes: int
    wall_s: float
    machine_busy_percent: float
    haproxy_cpu_s: float
    nodes_cpu_s: float
    senders_cpu_s: float
    served_by: tuple[int, ...]  # sessions HAProxy sent to each node (empty: direct)

    @property
    def our_cpu_s(self) -> float:
        return self.haproxy_cpu_s + self.nodes_cpu_s + self.senders_cpu_s

    @property
    def our_share_percent(self) -> float:
        """Senders + HAProxy + nodes, as a share of all cores during the run."""
        return 100.0 * self.our_cpu_s / (self.wall_s * (os.cpu_count() or 1))

    @property
    def cpu_ms_per_instance(self) -> float:
        return 1000.0 * self.our_cpu_s / self.instances

    @property
    def ceiling_per_s(self) -> float:
        """Instances/s if every core did nothing but this: the CPU ceiling."""
        return (os.cpu_count() or 1) * 1000.0 / self.cpu_ms_per_instance

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.wall_s

    @property
    def mb_per_s(self) -> float:
        return self.total_bytes / self.wall_s / 1e6


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


@contextmanager
def topology(root: Path, scenario: str) -> Iterator[tuple[int, list[Service], HAProxy | None]]:
    """(port the senders use, the nodes, HAProxy or None), all stopped afterwards."""
    storage = root / "storage"
    storage.mkdir(parents=True)
    names = ["a", "b"] if scenario == "haproxy-2" else ["a"]
    proxied = scenario != "direct"
    nodes: list[Service] = []
    haproxy: HAProxy | None = None
    try:
        for name in names:
            (root / name).mkdir()
            node = Service(
                root / name,
                storage_dir=storage,
                node=name,
                depot_scan_interval_s=2.0,
                proxy_protocol=proxied,
                trusted_proxies=["127.0.0.1"] if proxied else [],
            )
            nodes.append(node)
            node.launch()
        for node in nodes:
            node.wait_started(set(), timeout_s=60)
        port = nodes[0].port
        if proxied:
            haproxy = HAProxy(
                root, [Backend(n, "127.0.0.1", s.port) for n, s in zip(names, nodes, strict=True)]
            )
            haproxy.check_inter_ms = 2000  # as deploy/haproxy.cfg: not a load of its own
            haproxy.start()
            for name in names:
                haproxy.wait_status(name, "UP")
            port = haproxy.port
        yield port, nodes, haproxy
    finally:
        if haproxy is not None:
            haproxy.stop()
        for node in nodes:
            node.stop(clean_depot=False)


def run_once(work: Path, scenario: str, workload: Workload, index: int) -> Run:
    root = work / f"{scenario}-{workload.name}-{index}"
    with topology(root, scenario) as (port, nodes, haproxy):
        trees = [node.supervisord_pid() for node in nodes]
        node_cpu = sum(procstat.tree_cpu_s(pid) for pid in trees)
        haproxy_cpu = procstat.tree_cpu_s(haproxy.proc.pid) if haproxy and haproxy.proc else 0.0
        busy0, total0 = machine_ticks()
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = send(port, [i.path for i in workload.instances], SENDERS, root / "senders")
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy1, total1 = machine_ticks()
        senders_cpu = (children1.ru_utime + children1.ru_stime) - (
            children0.ru_utime + children0.ru_stime
        )
        node_cpu = sum(procstat.tree_cpu_s(pid) for pid in trees) - node_cpu
        if haproxy and haproxy.proc:
            haproxy_cpu = procstat.tree_cpu_s(haproxy.proc.pid) - haproxy_cpu
        if result.failures:
            raise RuntimeError(f"{scenario}: senders failed: {result.failures[:2]}")
        storage = root / "storage"
        poll_for(
            lambda: all((storage / f"{i.uid}.dcm").exists() for i in workload.instances),
            VISIBLE_TIMEOUT_S,
            f"{scenario}: every instance in storage",
            interval_s=0.05,
        )
        for instance in workload.instances:
            if dataset_sha256(storage / f"{instance.uid}.dcm") != instance.dataset_sha256:
                raise RuntimeError(f"{scenario}: {instance.uid} differs from what was sent")
        served = (
            tuple(int(row["stot"]) for row in haproxy.server_stats().values()) if haproxy else ()
        )
    return Run(
        scenario,
        workload.name,
        len(workload.instances),
        workload.total_bytes,
        result.wall_s,
        100.0 * (busy1 - busy0) / max(1, total1 - total0),
        haproxy_cpu,
        node_cpu,
        senders_cpu,
        served,
    )


def report(runs: list[Run], rounds: int, counts: dict[str, int]) -> str:
    lines = [
        "# Scale-out: 4 senders direct, through HAProxy to 1 node, to 2 nodes",
        "",
        f"`python -m bench.scaleout --rounds {rounds} "
        + " ".join(f"--count {k}={v}" for k, v in counts.items())
        + "`; medians of the rounds, each round in the order direct, haproxy-1, haproxy-2.",
        "",
        "*machine busy*: all cores, all processes (other work on the machine included);"
        " *ours*: CPU of senders, HAProxy and nodes over cores x wall time; *CPU ceiling*:"
        " cores x 1000 / CPU ms per instance, the rate if these processes had every core"
        " to themselves and only the CPU limited them.",
        "",
        "| workload | scenario | instances/s | MB/s | machine busy | ours of the cores"
        " | CPU s: senders / HAProxy / nodes | CPU ms per instance | CPU ceiling /s"
        " | sessions per node |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for workload in counts:
        for scenario in SCENARIOS:
            mine = [r for r in runs if r.workload == workload and r.scenario == scenario]
            if not mine:
                continue
            lines.append(
                f"| {workload} x{mine[0].instances} | {scenario}"
                f" | {statistics.median(r.instances_per_s for r in mine):.0f}"
                f" | {statistics.median(r.mb_per_s for r in mine):.1f}"
                f" | {statistics.median(r.machine_busy_percent for r in mine):.0f} %"
                f" | {statistics.median(r.our_share_percent for r in mine):.0f} %"
                f" | {statistics.median(r.senders_cpu_s for r in mine):.1f}"
                f" / {statistics.median(r.haproxy_cpu_s for r in mine):.1f}"
                f" / {statistics.median(r.nodes_cpu_s for r in mine):.1f}"
                f" | {statistics.median(r.cpu_ms_per_instance for r in mine):.2f}"
                f" | {statistics.median(r.ceiling_per_s for r in mine):.0f}"
                f" | {' / '.join(str(n) for n in mine[-1].served_by) or '-'} |"
            )
    lines += ["", "Every round:", ""]
    lines += [
        f"- {r.workload} {r.scenario}: {r.instances_per_s:.0f}/s, {r.wall_s:.2f} s,"
        f" machine busy {r.machine_busy_percent:.0f} %, ours {r.our_share_percent:.0f} %"
        for r in runs
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--count", action="append", default=[], metavar="WORKLOAD=N", help="small, tiny"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("bench/out"))
    parser.add_argument("--results", type=Path, default=Path("bench/SCALEOUT.md"))
    args = parser.parse_args(argv)
    counts = dict(DEFAULT_COUNTS)
    if args.count:
        counts = {k: int(v) for k, v in (item.split("=", 1) for item in args.count)}
    workloads = [load_or_make(args.work_dir / "data", name, n) for name, n in counts.items()]
    work = short_tempdir("bso")  # short: nodes' ipc socket paths
    runs: list[Run] = []
    try:
        for index in range(args.rounds):
            for workload in workloads:
                for scenario in SCENARIOS:
                    run = run_once(work, scenario, workload, index)
                    print(
                        f"round {index + 1} {workload.name} {scenario}:"
                        f" {run.instances_per_s:.0f}/s busy {run.machine_busy_percent:.0f} %"
                        f" ours {run.our_share_percent:.0f} %"
                        f" served {run.served_by}",
                        flush=True,
                    )
                    runs.append(run)
                    shutil.rmtree(work / f"{scenario}-{workload.name}-{index}")
                    time.sleep(1.0)  # let the last run's exit settle before the next
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(runs, args.rounds, counts)
    args.results.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
