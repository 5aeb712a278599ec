"""The benchmark harness: `python -m bench.run --quick` or `--full`.

Round after round, every scenario runs once against every server, in an
order that rotates with the round and the scenario, so slow drifts of a
shared machine hit all servers alike. Each run is measured (wall time,
server CPU and memory over its whole process tree), then verified: every
instance must be in the server's output directory with its dataset intact,
or the benchmark stops with an error. The report goes to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import data, report
from bench.floor import durable_write_ms
from bench.inotify import DirectoryWatcher
from bench.orthanc import Orthanc
from bench.procstat import TreeMeter, tree_pids
from bench.senders import send
from bench.servers import Dcmtk, Pynetdicom, Server, Storscp, StorscpWithoutFsync
from bench.stats import LatencyRun, Run
from bench.verify import verify, wait_visible

BENCH_DIR = Path(__file__).resolve().parent
# Each gets a "time ÷" column: the fast reference and the durable peer.
REFERENCES = ("dcmtk", "orthanc")
RESULTS_NAME = "RESULTS.md"

SERVER_TYPES: dict[str, type[Server]] = {
    "dcmtk": Dcmtk,
    "orthanc": Orthanc,
    "pynetdicom": Pynetdicom,
    "storscp": Storscp,
    "storscp-nofsync": StorscpWithoutFsync,
}
LATENCY_SENDERS = 4

# Directories of an earlier benchmark, deleted only after this one has measured.
OLD_PREFIX = "old-"


class BenchmarkFailed(Exception):
    """A server lost or changed data, or a client failed: the numbers mean nothing."""


@dataclass(frozen=True, slots=True)
class Scenario:
    workload: str
    senders: int
    per_instance: bool = False

    @property
    def name(self) -> str:
        suffix = " assoc/instance" if self.per_instance else ""
        return f"{self.workload} x{self.senders}{suffix}"

    @property
    def key(self) -> str:
        return f"{self.workload}-{self.senders}{'-per-instance' if self.per_instance else ''}"


SCENARIOS = [
    Scenario("tiny", 1),
    Scenario("tiny", 4),
    Scenario("small", 1),
    Scenario("small", 4),
    Scenario("large", 1),
    Scenario("large", 4),
    Scenario("tiny", 4, per_instance=True),
]


@dataclass(frozen=True, slots=True)
class Mode:
    """Counts per workload and rounds; the per-instance scenario has its own count."""

    rounds: int
    counts: dict[str, int]
    per_instance_count: int
    latency_count: int


MODES = {
    "quick": Mode(
        rounds=3,
        counts={"tiny": 400, "small": 100, "large": 4},
        per_instance_count=40,
        latency_count=200,
    ),
    "full": Mode(
        rounds=5,
        counts={"tiny": 2000, "small": 500, "large": 12},
        per_instance_count=400,
        latency_count=1000,
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="modest counts, 3 rounds, under 2 minutes (default)",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="larger counts, 5 rounds (10-20 minutes)",
    )
    p.add_argument("--rounds", type=int, help="override the mode's number of rounds")
    p.add_argument(
        "--count",
        action="append",
        default=[],
        metavar="WORKLOAD=N",
        help="override a workload's instance count (tiny, small, large, per-instance, latency)",
    )
    p.add_argument(
        "--servers",
        default=",".join(SERVER_TYPES),
        help="comma-separated subset of " + ", ".join(SERVER_TYPES),
    )
    p.add_argument(
        "--scenarios",
        default=",".join(s.key for s in SCENARIOS),
        help="comma-separated subset of " + ", ".join(s.key for s in SCENARIOS),
    )
    p.add_argument("--no-latency", action="store_true", help="skip the storscp latency scenario")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=BENCH_DIR / "out",
        help="data cache and server directories (default bench/out, git-ignored)",
    )
    p.add_argument(
        "--results",
        type=Path,
        help=f"where to write the report (default WORK_DIR/{RESULTS_NAME}; "
        "make bench-full gives bench/RESULTS.md, the tracked reference)",
    )
    p.add_argument("--note", default="", help="a remark for the report (e.g. machine was busy)")
    p.set_defaults(mode="quick")
    return p.parse_args(argv)


def effective_mode(args: argparse.Namespace) -> Mode:
    base = MODES[args.mode]
    counts = dict(base.counts)
    per_instance, latency = base.per_instance_count, base.latency_count
    for item in args.count:
        name, _, value = item.partition("=")
        if name == "per-instance":
            per_instance = int(value)
        elif name == "latency":
            latency = int(value)
        elif name in counts:
            counts[name] = int(value)
        else:
            raise SystemExit(f"bench: unknown workload in --count {item!r}")
    return Mode(args.rounds or base.rounds, counts, per_instance, latency)


def scenario_workload(work: Path, scenario: Scenario, mode: Mode) -> data.Workload:
    """The (cached) files a scenario sends; the per-instance scenario has its own count."""
    count = mode.per_instance_count if scenario.per_instance else mode.counts[scenario.workload]
    return data.load_or_make(work / "data", scenario.workload, count)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_scenario(
    server: Server, scenario: Scenario, workload: data.Workload, round_: int, log_dir: Path
) -> Run:
    """Send, measure, verify; raise BenchmarkFailed on any loss or difference."""
    files = [i.path for i in workload.instances]
    meter = TreeMeter(server.pid)
    with meter:
        sent = send(
            server.port, files, scenario.senders, log_dir, per_instance=scenario.per_instance
        )
        # A failed client means files will never come: do not wait for them.
        visible_s = wait_visible(server, workload) if not sent.failures else float("nan")
    usage = meter.finish()
    problems = list(sent.failures) + verify(server, workload)
    if problems:
        raise BenchmarkFailed(
            f"{server.name}, {scenario.name}, round {round_ + 1}: " + "; ".join(problems[:5])
        )
    server.clear_output()
    return Run(
        round=round_,
        server=server.name,
        scenario=scenario.key,
        instances=len(files),
        bytes=workload.total_bytes,
        wall_s=sent.wall_s,
        visible_s=visible_s,
        cpu_s=usage.cpu_s,
        peak_rss_kib=usage.peak_rss_kib,
        peak_rss_cmd=usage.peak_rss_cmd,
        sum_rss_kib=usage.sum_rss_kib,
        processes=len(usage.processes),
    )


def run_latency(server: Storscp, workload: data.Workload, round_: int, log_dir: Path) -> LatencyRun:
    """4 storescu senders; latency = file visible (inotify) - Success logged by storescu."""
    files = [i.path for i in workload.instances]
    with DirectoryWatcher(server.output_dir) as watcher:
        sent = send(server.port, files, LATENCY_SENDERS, log_dir, timed=True)
        if not sent.failures:  # a failed client means files will never come
            wait_visible(server, workload)
    problems = list(sent.failures) + verify(server, workload)
    if watcher.overflowed:
        problems.append("inotify queue overflowed")
    latencies: list[float] = []
    for instance in workload.instances:
        seen = watcher.first_seen.get(f"{instance.uid}{server.service.extension}")
        success = sent.success_at.get(str(instance.path))
        if seen is None or success is None:
            problems.append(f"no inotify event or no Success time for {instance.path.name}")
        else:
            latencies.append(seen - success)
    if problems:
        raise BenchmarkFailed(f"storscp latency, round {round_ + 1}: " + "; ".join(problems[:5]))
    server.clear_output()
    return LatencyRun(round_, len(files), sent.wall_s, latencies)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = effective_mode(args)
    names = [n for n in args.servers.split(",") if n]
    unknown = [n for n in names if n not in SERVER_TYPES]
    keys = [k for k in args.scenarios.split(",") if k]
    scenarios = [s for s in SCENARIOS if s.key in keys]
    if unknown or len(scenarios) != len(keys) or not names:
        raise SystemExit(f"bench: unknown server or scenario in {names} / {keys}")
    work = args.work_dir.resolve()
    results: Path = args.results or work / RESULTS_NAME
    started = time.time()
    machine_before = report.machine_info()
    busy_before, mine_before = report.cpu_busy_s()
    log(f"mode {args.mode}: {mode}; work dir {work}")

    workloads = {s.key: scenario_workload(work, s, mode) for s in scenarios}
    latency_workload = None
    if not args.no_latency and "storscp" in names:
        latency_workload = data.load_or_make(work / "data", "small", mode.latency_count)
    log(
        "data ready: "
        + ", ".join(
            f"{k} {len(w.instances)}x{w.mean_bytes / 1e6:.3f} MB" for k, w in workloads.items()
        )
    )

    # SIGTERM ends the benchmark like Ctrl-C: the finally below stops the servers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # Fresh server directories: storscp's old logs would hold stale START events.
    # Old ones are moved aside and deleted at the end (see Server.clear_output).
    for stale in (work / "servers", work / "logs", work / "floor"):
        if stale.exists():
            stale.rename(work / f"{OLD_PREFIX}{stale.name}-{time.time_ns()}")
    floor_dir = work / "floor"
    floor_ms = durable_write_ms(floor_dir)
    log(f"durable write floor: median {statistics.median(floor_ms):.3f} ms per instance")
    servers: list[Server] = [SERVER_TYPES[n](work / "servers" / n) for n in names]
    runs: list[Run] = []
    latency_runs: list[LatencyRun] = []
    try:
        for server in servers:
            server.start()
            log(f"{server.name} up on port {server.port} (pid {server.pid})")
            server.clear_output()
            if isinstance(server, Storscp):
                missing = set(server.component_pids().values()) - set(tree_pids(server.pid))
                if missing:
                    raise BenchmarkFailed(
                        f"storscp components outside the measured tree: {missing}"
                    )
        for round_ in range(mode.rounds):
            for index, scenario in enumerate(scenarios):
                shift = (round_ + index) % len(servers)
                workload = workloads[scenario.key]
                for server in servers[shift:] + servers[:shift]:
                    run = run_scenario(
                        server,
                        scenario,
                        workload,
                        round_,
                        work / "logs" / server.name / scenario.key,
                    )
                    runs.append(run)
                    log(
                        f"round {round_ + 1}/{mode.rounds} {scenario.name:<22} {server.name:<10} "
                        f"{run.wall_s:7.3f} s {run.instances_per_s:8.1f} inst/s "
                        f"{run.mb_per_s:7.1f} MB/s cpu {run.cpu_s:6.2f} s, "
                        f"all visible +{run.visible_s * 1000:.0f} ms, verified"
                    )
            if latency_workload is not None:
                storscp = next(s for s in servers if isinstance(s, Storscp))
                lat = run_latency(storscp, latency_workload, round_, work / "logs" / "latency")
                latency_runs.append(lat)
                log(
                    f"round {round_ + 1}/{mode.rounds} latency: {lat.instances} in "
                    f"{lat.wall_s:.2f} s, max {max(lat.latencies_s) * 1000:.1f} ms"
                )
    except BenchmarkFailed as exc:
        log(f"BENCHMARK FAILED: {exc}")
        # Keep what was measured and where to look; no report from a failed run.
        partial: dict[str, object] = {
            "failed": str(exc),
            "runs": [asdict(r) for r in runs],
            "latency": [asdict(r) for r in latency_runs],
        }
        (work / "results.json").write_text(json.dumps(partial, indent=1))
        log(
            f"server directories and logs kept in {work / 'servers'}, client logs in "
            f"{work / 'logs'}, measurements so far in {work / 'results.json'}"
        )
        return 1
    finally:
        for server in servers:
            server.terminate()  # all at once: Orthanc alone takes ~3 s to stop
        for server in servers:
            try:
                server.stop()
            except Exception as exc:  # report every server that would not stop
                log(f"{server.name}: stop failed: {exc}")
            server.empty_trash()
        for old in [floor_dir, *work.glob(f"{OLD_PREFIX}*")]:
            shutil.rmtree(old, ignore_errors=True)
    elapsed = time.time() - started
    busy_after, mine_after = report.cpu_busy_s()
    context = report.Context(
        mode=args.mode,
        argv=["python", "-m", "bench.run", *(sys.argv[1:] if argv is None else argv)],
        started=started,
        elapsed_s=elapsed,
        machine_before=machine_before,
        machine_after=report.machine_info(),
        foreign_cpu_s=max(0.0, (busy_after - busy_before) - (mine_after - mine_before)),
        servers={s.name: s.describe() for s in servers},
        workloads={
            s.name: (len(workloads[s.key].instances), workloads[s.key].mean_bytes)
            for s in scenarios
        },
        latency_count=len(latency_workload.instances) if latency_workload else 0,
        rounds=mode.rounds,
        note=args.note,
        floor_ms=floor_ms,
    )
    scenario_names = {s.key: s.name for s in scenarios}
    references = [r for r in REFERENCES if r in names]
    text = report.render(context, runs, scenario_names, names, references, latency_runs)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text)
    raw: dict[str, object] = {
        "context": asdict(context),
        "runs": [asdict(r) for r in runs],
        "latency": [asdict(r) for r in latency_runs],
    }
    (work / "results.json").write_text(json.dumps(raw, indent=1))
    print(text)
    log(f"done in {elapsed:.0f} s; report {results}, raw data {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
