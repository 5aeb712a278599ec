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
every instance verified. Results go to stdout and `<work-dir>/metrics-cost.md`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

from bench import data
from bench.run import BENCH_DIR, SCENARIOS, Scenario, log, run_scenario
from bench.servers import Server, Storscp
from bench.stats import Run

SCRAPE_INTERVAL_S = 1.0


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
    finally:
        for server in (off, on):
            server.stop()
            server.empty_trash()
    text = report(runs, scenarios, args, scrapes)
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
    ]
    return "\n".join(lines) + "\n"


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


if __name__ == "__main__":
    sys.exit(main())
