"""The feed benchmark (issue 11): what a consumer costs, and how fast the feed is.

`python -m bench.feed` starts storscp (and, with `--baseline DIR`, the
storscp of another checkout, e.g. main without the feed), then, round after
round and in a rotating order, sends the same files with 4 storescu senders:

- to the baseline, if given;
- to storscp with no feed consumer;
- to storscp with a consumer process following the feed.

Each run is verified (every instance stored, dataset intact). Receive rate =
instances / wall time from the first sender's spawn to the last one's exit.
Feed latency = the moment the consumer process received an instance's message
minus the moment its file appeared in storage (inotify, see bench/inotify.py);
both are time.time() of this machine. The report goes to stdout and
`--results` (default bench/out/feed.md, not tracked).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import data
from bench.inotify import DirectoryWatcher
from bench.procstat import process_cpu_s, tree_cpu_s
from bench.senders import send
from bench.servers import Storscp
from bench.stats import percentile
from bench.verify import verify, wait_visible
from tests.support.feedconsumer import endpoints
from tests.support.service import poll_for

BENCH_DIR = Path(__file__).resolve().parent
SENDERS = 4


class BaselineStorscp(Storscp):
    """storscp as another checkout builds it (its own .venv), for before/after."""

    name = "baseline"

    def __init__(self, root: Path, checkout: Path) -> None:
        super().__init__(root)
        self.checkout = checkout
        self.service.cli_argv = [str(checkout / ".venv" / "bin" / "storscp")]
        self.service.singles.discard("feed")  # it may predate the feed process


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def start_consumer(server: Storscp, out: Path) -> subprocess.Popen[str]:
    live, replay = endpoints(server.service.run_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.feedconsumer", live, replay, str(out), "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=BENCH_DIR.parent,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"feed consumer did not start: {line!r}")
    return proc


def components(server: Storscp) -> list[tuple[str, int]]:
    """(proc, pid) of every component, from the START events (read once: the log alternates)."""
    return [(e["proc"], int(e["pid"])) for e in server.service.events("START") if "pid" in e.fields]


def component_cpu_s(procs: list[tuple[str, int]]) -> dict[str, float]:
    """CPU seconds used so far by each component (receivers summed), from /proc."""
    out: dict[str, float] = {}
    for proc, pid in procs:
        used = process_cpu_s(pid)
        if used is not None:
            out[proc] = out.get(proc, 0.0) + used
    return out


def run(
    server: Storscp,
    procs: list[tuple[str, int]],
    workload: data.Workload,
    log_dir: Path,
    consumer: bool,
) -> tuple[float, dict[str, float], list[float]]:
    """One verified run: (instances/s, server CPU ms/instance by component, latencies in s)."""
    files = [i.path for i in workload.instances]
    log_dir.mkdir(parents=True, exist_ok=True)
    received = log_dir / "consumer.txt"
    proc = start_consumer(server, received) if consumer else None
    cpu_before = component_cpu_s(procs)
    tree_before = tree_cpu_s(server.pid)
    try:
        with DirectoryWatcher(server.output_dir) as watcher:
            sent = send(server.port, files, SENDERS, log_dir)
            wait_visible(server, workload)
            cpu_after = component_cpu_s(procs)
            tree_after = tree_cpu_s(server.pid)
            if proc is not None:
                poll_for(
                    lambda: len(received.read_text().splitlines()) >= len(files),
                    120,
                    "the consumer to receive every instance",
                )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    problems = list(sent.failures) + verify(server, workload)
    if watcher.overflowed:
        problems.append("inotify queue overflowed")
    latencies: list[float] = []
    if proc is not None:
        ext = server.service.extension
        for line in received.read_text().splitlines():
            at, _seq, uid = line.split()
            seen = watcher.first_seen.get(f"{uid}{ext}")
            if seen is None:
                problems.append(f"no inotify event for {uid}")
            else:
                latencies.append(float(at) - seen)
    if problems:
        raise SystemExit(f"BENCHMARK FAILED ({server.name}): " + "; ".join(problems[:5]))
    server.clear_output()
    per_instance = {
        proc: 1000 * (cpu_after[proc] - cpu_before.get(proc, 0.0)) / len(files)
        for proc in cpu_after
    }
    per_instance["total"] = 1000 * (tree_after - tree_before) / len(files)
    return len(files) / sent.wall_s, per_instance, latencies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.feed", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--count", type=int, default=2000, help="tiny instances per run")
    p.add_argument("--workload", default="tiny", choices=sorted(data.SHAPES))
    p.add_argument("--baseline", type=Path, help="a checkout with .venv to compare with")
    p.add_argument("--work-dir", type=Path, default=BENCH_DIR / "out")
    p.add_argument("--results", type=Path, default=BENCH_DIR / "out" / "feed.md")
    args = p.parse_args(argv)

    workload = data.load_or_make(args.work_dir / "data", args.workload, args.count)
    root = args.work_dir / "feed"
    servers: list[Storscp] = [Storscp(root / "storscp")]
    if args.baseline is not None:
        servers.insert(0, BaselineStorscp(root / "baseline", args.baseline.resolve()))
    modes = [(s, False) for s in servers] + [(servers[-1], True)]
    rates: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    latencies: list[float] = []
    try:
        procs: dict[str, list[tuple[str, int]]] = {}
        for server in servers:
            server.start()
            procs[server.name] = components(server)
        for rnd in range(args.rounds):
            shift = rnd % len(modes)
            for server, consumer in modes[shift:] + modes[:shift]:
                label = server.name + (" + consumer" if consumer else "")
                logs = root / "logs" / f"{rnd}-{label}"
                rate, ms, lat = run(server, procs[server.name], workload, logs, consumer)
                rates.setdefault(label, []).append(rate)
                for proc, value in ms.items():
                    cpu.setdefault(label, {}).setdefault(proc, []).append(value)
                latencies += lat
                log(f"round {rnd + 1}: {label}: {rate:.0f} instances/s, {ms['total']:.3f} CPU ms")
    finally:
        for server in servers:
            server.stop()
            server.empty_trash()
    report = render(args, workload, rates, cpu, latencies)
    print(report)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(report)
    (args.results.with_suffix(".json")).write_text(
        json.dumps({"rates": rates, "cpu_ms_per_instance": cpu, "latencies_s": latencies})
    )
    return 0


def render(
    args: argparse.Namespace,
    workload: data.Workload,
    rates: dict[str, list[float]],
    cpu: dict[str, dict[str, list[float]]],
    latencies: list[float],
) -> str:
    lines = [
        "# Feed benchmark",
        "",
        f"`python -m bench.feed {' '.join(sys.argv[1:])}`: {args.rounds} rounds,"
        f" {SENDERS} storescu senders, {len(workload.instances)} {args.workload} instances per run,"
        f" {time.strftime('%Y-%m-%d %H:%M:%S')}, load average {os.getloadavg()[0]:.2f}.",
        "",
        "| server | instances/s median (min-max) | vs storscp without consumer |",
        "| --- | ---: | ---: |",
    ]
    reference = statistics.median(rates.get("storscp", [1.0]))
    for label, values in rates.items():
        med = statistics.median(values)
        lines.append(
            f"| {label} | {med:.0f} ({min(values):.0f}-{max(values):.0f})"
            f" | {100 * (med / reference - 1):+.1f} % |"
        )
    procs = sorted({p for by_proc in cpu.values() for p in by_proc} - {"total"})
    lines += [
        "",
        "Server CPU ms per instance, median over rounds (the whole tree, then by component;"
        " the consumer process is not the server's):",
        "",
        "| server | total | " + " | ".join(procs) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in procs) + " |",
    ]
    for label, by_proc in cpu.items():
        cells = [f"{statistics.median(by_proc[p]):.3f}" if p in by_proc else "" for p in procs]
        total = statistics.median(by_proc["total"])
        lines.append(f"| {label} | {total:.3f} | " + " | ".join(cells) + " |")
    if latencies:
        ms = [1000 * v for v in latencies]
        lines += [
            "",
            f"Feed latency, file visible -> consumer received ({len(ms)} instances):"
            f" p50 {percentile(ms, 50):.2f} ms, p90 {percentile(ms, 90):.2f} ms,"
            f" p99 {percentile(ms, 99):.2f} ms, max {max(ms):.2f} ms.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
