"""Per-run measurements and their summaries across rounds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Run:
    """One server, one scenario, one round."""

    round: int
    server: str
    scenario: str
    instances: int
    bytes: int
    wall_s: float  # first sender spawned -> last sender exited
    visible_s: float  # last sender exited -> every file in the output directory
    cpu_s: float  # server process tree, whole window
    peak_rss_kib: int  # largest single server process
    peak_rss_cmd: str
    sum_rss_kib: int  # largest sum over processes alive together
    processes: int  # server processes seen during the window

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.wall_s

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.wall_s

    @property
    def cpu_ms_per_instance(self) -> float:
        return 1000 * self.cpu_s / self.instances

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_s / self.wall_s


@dataclass(frozen=True, slots=True)
class LatencyRun:
    """One round of the latency scenario: seconds from Success to visible, per instance."""

    round: int
    instances: int
    wall_s: float
    latencies_s: list[float]


@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed value, no interpolation."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n*q/100), at least 1
    return ordered[int(rank) - 1]


def time_ratios(runs: list[Run], server: str, scenario: str, reference: str) -> list[float]:
    """Per round: server wall time / reference wall time, both from the same round."""
    walls = {(r.round, r.server): r.wall_s for r in runs if r.scenario == scenario}
    return [
        walls[(rnd, server)] / walls[(rnd, reference)]
        for rnd in sorted({rnd for rnd, _ in walls})
        if (rnd, server) in walls and (rnd, reference) in walls
    ]
