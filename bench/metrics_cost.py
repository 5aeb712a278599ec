"""What metrics cost the receive path: `python -m bench.metrics_cost` (make bench-metrics).

One benchmark run, three variants of storscp, the same files, interleaved
round by round (the order rotates, so a drifting load hits all alike):

- **off**: `metrics = ""`: no endpoint, the counters count in private memory;
- **on**: the default (endpoint on loopback), nobody scrapes it;
- **scraped**: the same service as *on*, while a client GETs /metrics every
  second (what a Prometheus with `scrape_interval: 1s` does to it).

*scraped* against *on* is the price of being watched (issue 13 allows 3 %);
*on* against *off* is the price of counting on the hot path. Each run is
bench.run's: DCMTK storescu senders, wall time and the server tree's CPU,
every instance verified. On a shared machine those differences drown in
noise, so the counting itself is also timed alone (`hot_path_us`): what the
receiver and the committer do per instance, in a process of their own,
with and without the multiprocess files. Results go to stdout and
`<work-dir>/metrics-cost.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench import data
from bench.run import BENCH_DIR, SCENARIOS, Scenario, log, run_scenario
from bench.servers import Server, Storscp
from bench.stats import Run

SCRAPE_INTERVAL_S = 1.0
HOT_PATH_INSTANCES = 200_000
BATCH = 64  # instances per committer batch (it takes up to 256)

# The per-instance counting of the receiver (one observation per Success) and of
# the committer (per batch: a few counter updates; per instance: one observation),
# timed in a fresh interpreter so that prometheus_client picks its mode at import.
_HOT_PATH = """
import json, sys, time
from dataclasses import dataclass
from pathlib import Path
from storscp.config import load
from storscp.committer.counting import CommitCounter
from storscp.receiver.counting import ReceiverCounter

@dataclass(frozen=True)
class Item:
    replaced: bool
    ready_ctime: float
    calling_ae: str
    size_bytes: int

n, batch, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
config = load(None, {"run_dir": run_dir})
config.metrics_dir.mkdir(parents=True, exist_ok=True)
receiver, committer = ReceiverCounter(config), CommitCounter(config)
items = [Item(False, time.time(), f"MODALITY{i % 4}", 2800) for i in range(batch)]
t = time.perf_counter()
for _ in range(n):
    receiver.stored(0.0012)
receiver_s = time.perf_counter() - t
t = time.perf_counter()
for _ in range(n // batch):
    committer.committed(items)
committer_s = time.perf_counter() - t
print(json.dumps({"receiver_us": receiver_s / n * 1e6, "committer_us": committer_s / n * 1e6}))
"""


def hot_path_us(multiprocess: bool, instances: int = HOT_PATH_INSTANCES) -> dict[str, float]:
    """Microseconds per instance of the receiver's and the committer's counting."""
    with tempfile.TemporaryDirectory(prefix="mcost") as run_dir:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(Path(run_dir) / "bus" / "metrics")
        result = subprocess.run(
            [sys.executable, "-c", _HOT_PATH, str(instances), str(BATCH), run_dir],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    return dict(json.loads(result.stdout))


class StorscpMetricsOff(Storscp):
    name = "off"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.service.keys["metrics"] = ""


class Scraper:
    """GET /metrics every SCRAPE_INTERVAL_S on a thread, while in its `with` block."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.scrapes = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            with urllib.request.urlopen(self.url, timeout=10) as rsp:
                self.bytes += len(rsp.read())
            self.scrapes += 1
            if self._stop.wait(SCRAPE_INTERVAL_S):
                return


def scrape_cpu_ms(server: Storscp, scrapes: int = 100) -> float:
    """CPU milliseconds the metrics process spends per scrape (it does nothing else)."""
    # From Supervisor: after thousands of WRITE lines the START events have alternated away.
    pid = server.service.running_pids("metrics")[0]
    url = f"http://127.0.0.1:{server.service.metrics_port}/metrics"
    before = _cpu_ticks(pid)
    for _ in range(scrapes):
        with urllib.request.urlopen(url, timeout=10) as rsp:
            rsp.read()
    return (_cpu_ticks(pid) - before) * 1000 / os.sysconf("SC_CLK_TCK") / scrapes


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--count", type=int, default=2000, help="tiny instances per run")
    p.add_argument(
        "--scenarios", default="tiny-4,tiny-1", help="bench.run scenario keys (tiny ones)"
    )
    p.add_argument("--work-dir", type=Path, default=BENCH_DIR / "out" / "metrics-cost")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    micro = {mode: hot_path_us(mode == "files") for mode in ("memory", "files")}
    log(f"counting per instance: {micro}")
    scenarios = [s for s in SCENARIOS if s.key in args.scenarios.split(",")]
    work = args.work_dir.resolve()
    if (work / "servers").exists():
        shutil.rmtree(work / "servers")
    workloads = {
        s.key: data.load_or_make(BENCH_DIR / "out" / "data", s.workload, args.count)
        for s in scenarios
    }
    off, on = StorscpMetricsOff(work / "servers" / "off"), Storscp(work / "servers" / "on")
    variants = ["off", "on", "scraped"]
    runs: dict[tuple[str, str], list[Run]] = {}
    scrapes = 0
    try:
        for server in (off, on):
            server.start()
            server.clear_output()
        metrics_port = on.service.metrics_port
        log(f"off on port {off.port}, on on port {on.port} (metrics {metrics_port})")
        for round_ in range(args.rounds):
            for index, scenario in enumerate(scenarios):
                shift = (round_ + index) % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    run = one_run(variant, off, on, scenario, workloads[scenario.key], round_, work)
                    if variant == "scraped":
                        scrapes += run[1]
                    runs.setdefault((scenario.key, variant), []).append(run[0])
                    log(
                        f"round {round_ + 1}/{args.rounds} {scenario.name:<8} {variant:<8}"
                        f" {run[0].instances_per_s:7.1f} inst/s"
                        f" cpu {run[0].cpu_ms_per_instance:.3f} ms/inst"
                    )
        per_scrape_ms = scrape_cpu_ms(on)
        log(f"one scrape: {per_scrape_ms:.2f} ms of the metrics process's CPU")
    finally:
        for server in (off, on):
            server.stop()
            server.empty_trash()
    text = report(runs, scenarios, args, scrapes, micro, per_scrape_ms)
    (work / "metrics-cost.md").write_text(text)
    print(text)
    return 0


def one_run(
    variant: str,
    off: Server,
    on: Storscp,
    scenario: Scenario,
    workload: data.Workload,
    round_: int,
    work: Path,
) -> tuple[Run, int]:
    logs = work / "logs" / variant / scenario.key
    if variant == "off":
        return run_scenario(off, scenario, workload, round_, logs), 0
    if variant == "on":
        return run_scenario(on, scenario, workload, round_, logs), 0
    with Scraper(on.service.metrics_port) as scraper:
        time.sleep(SCRAPE_INTERVAL_S)  # the first scrape is in before the senders start
        run = run_scenario(on, scenario, workload, round_, logs)
    return run, scraper.scrapes


def report(
    runs: dict[tuple[str, str], list[Run]],
    scenarios: list[Scenario],
    args: argparse.Namespace,
    scrapes: int,
    micro: dict[str, dict[str, float]],
    per_scrape_ms: float,
) -> str:
    lines = [
        "# What metrics cost the receive path",
        "",
        f"`python -m bench.metrics_cost --rounds {args.rounds} --count {args.count}"
        f" --scenarios {args.scenarios}`, {time.strftime('%Y-%m-%d %H:%M')};"
        f" {scrapes} scrapes in the scraped runs. Medians over rounds (min-max).",
        "",
        "| scenario | variant | instances/s | server CPU ms/instance | rate vs on |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for scenario in scenarios:
        base = [r.instances_per_s for r in runs[(scenario.key, "on")]]
        for variant in ("off", "on", "scraped"):
            mine = runs[(scenario.key, variant)]
            rate = [r.instances_per_s for r in mine]
            cpu = [r.cpu_ms_per_instance for r in mine]
            ratios = [a / b for a, b in zip(rate, base, strict=True)]
            lines.append(
                f"| {scenario.name} | {variant} | {_spread(rate, '.1f')} | {_spread(cpu, '.3f')}"
                f" | {(statistics.median(ratios) - 1) * 100:+.1f} % |"
            )
    lines += [
        "",
        "*rate vs on*: per round, this variant's instances/s divided by *on*'s in the"
        " same round, median over rounds, minus one. Negative: slower.",
        "",
        f"Counting alone, per instance ({HOT_PATH_INSTANCES} instances, committer batches"
        f" of {BATCH}, one process each):",
        "",
        "| counts into | receiver µs/instance | committer µs/instance |",
        "| --- | ---: | ---: |",
    ]
    for mode, label in (("files", "multiprocess files (metrics on)"), ("memory", "memory (off)")):
        lines.append(
            f"| {label} | {micro[mode]['receiver_us']:.2f} | {micro[mode]['committer_us']:.2f} |"
        )
    on_cpu = statistics.median(
        r.cpu_ms_per_instance * r.instances_per_s / 1000
        for key, group in runs.items()
        if key[1] == "on"
        for r in group
    )
    lines += [
        "",
        f"One scrape costs the metrics process {per_scrape_ms:.2f} ms of CPU (100 scrapes"
        " after the runs); scraped every second that is"
        f" {per_scrape_ms / 10:.2f} % of one core, or {per_scrape_ms / 10 / on_cpu:.2f} % of"
        f" the {on_cpu * 100:.0f} % of a core the service uses while receiving (median of"
        " the *on* runs).",
    ]
    return "\n".join(lines) + "\n"


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


if __name__ == "__main__":
    sys.exit(main())
