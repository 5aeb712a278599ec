"""Where the memory of storscp's process tree goes: `python -m bench.memory`.

A measurement for issue 16 (bench/README.md, "Where the memory goes"), not
part of the benchmark's report. It starts storscp as the benchmark does
(`storscp run`, production defaults) and reads, for every process of its
tree, /proc/<pid>/smaps_rollup:

- RSS: resident pages, shared ones (libpython, libzmq, page cache of .so and
  .pyc files) counted in every process that maps them; summing it overstates;
- PSS: each shared page divided among the processes that map it; the sum over
  the tree is the tree's real share of the machine's memory;
- USS: private pages (Private_Clean + Private_Dirty), what a process would
  give back if it exited.

First idle (after a settle time), then the peak of each figure while 4
storescu senders send the quick benchmark's tiny and small workloads and one
sends its large instances. Then, in fresh interpreters, what each heavy
import costs (`-X importtime` and the RSS it adds to a bare interpreter) and
which of them each component's entry module pulls in.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import data
from bench.procstat import cmdline, tree_pids
from bench.senders import send
from bench.servers import Storscp

BENCH_DIR = Path(__file__).resolve().parent
SETTLE_S = 5.0
SAMPLE_INTERVAL_S = 0.1
LOAD = (("tiny", 400, 4), ("small", 100, 4), ("large", 4, 1))  # workload, count, senders
HEAVY = (
    "pydicom",
    "pynetdicom",
    "zmq",
    "supervisor",
    "ssl",
    "sqlite3",
    "prometheus_client",
    "numpy",
)
IMPORTS = (
    "pydicom",
    "pynetdicom",
    "zmq",
    "supervisor.supervisord",
    "supervisor.childutils",
    "ssl",
    "prometheus_client",
    "storscp.logger.main",
    "storscp.committer.main",
    "storscp.feed.main",
    "storscp.commitment.main",
    "storscp.receiver.main",
    "storscp.supervisor.listener",
    "storscp.metrics.main",
    "storscp.cli",
)
IMPORT_RUNS = 5


@dataclass(slots=True)
class Memory:
    """KiB from smaps_rollup; as a peak, each figure's own maximum over samples."""

    rss: int = 0
    pss: int = 0
    uss: int = 0

    def peak(self, other: Memory) -> None:
        self.rss = max(self.rss, other.rss)
        self.pss = max(self.pss, other.pss)
        self.uss = max(self.uss, other.uss)


def read_memory(pid: int) -> Memory | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            values = {
                parts[0].rstrip(":"): int(parts[1])
                for parts in (line.split() for line in fh)
                if len(parts) == 3 and parts[2] == "kB"
            }
    except (FileNotFoundError, ProcessLookupError):
        return None
    if "Rss" not in values:
        return None  # a zombie
    return Memory(values["Rss"], values["Pss"], values["Private_Clean"] + values["Private_Dirty"])


def label(pid: int) -> str:
    """`storscp.receiver`, `supervisor.supervisord`, `storscp run`: what the process is."""
    words = cmdline(pid).split()
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1]
    if len(words) > 1 and Path(words[1]).name == "storscp":
        return "storscp " + (words[2] if len(words) > 2 else "")
    return Path(words[0]).name if words else "?"


@dataclass(slots=True)
class TreeSample:
    """Per process (label#n) the peak figures, and the peak of the tree's sums."""

    processes: dict[str, Memory] = field(default_factory=dict)
    total: Memory = field(default_factory=Memory)

    def add(self, root: int) -> None:
        sums = Memory()
        seen: dict[str, int] = {}
        for pid in sorted(tree_pids(root)):
            memory = read_memory(pid)
            if memory is None:
                continue
            name = label(pid)
            seen[name] = seen.get(name, 0) + 1
            key = f"{name} #{seen[name]}" if name == "storscp.receiver" else name
            self.processes.setdefault(key, Memory()).peak(memory)
            sums.rss, sums.pss, sums.uss = (
                sums.rss + memory.rss,
                sums.pss + memory.pss,
                sums.uss + memory.uss,
            )
        self.total.peak(sums)


def measure_tree(work: Path) -> tuple[TreeSample, TreeSample]:
    """(idle, under load) for a storscp started with the benchmark's production defaults."""
    server = Storscp(work / "storscp")
    server.start()
    try:
        time.sleep(SETTLE_S)
        idle = TreeSample()
        idle.add(server.pid)
        loaded = TreeSample()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(SAMPLE_INTERVAL_S):
                loaded.add(server.pid)

        sampler = threading.Thread(target=sample, name="sampler", daemon=True)
        sampler.start()
        try:
            for name, count, senders in LOAD:
                workload = data.load_or_make(BENCH_DIR / "out" / "data", name, count)
                files = [i.path for i in workload.instances]
                result = send(server.port, files, senders, work / "logs" / name)
                if result.failures:
                    raise SystemExit(f"bench.memory: {name}: {result.failures[:3]}")
                server.clear_output()
        finally:
            stop.set()
            sampler.join()
        return idle, loaded
    finally:
        server.stop()
        server.empty_trash()


_PROBE = """\
import importlib, sys
if sys.argv[1]:
    importlib.import_module(sys.argv[1])
rss = next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1]
print(rss, len(sys.modules), ",".join(h for h in sys.argv[2:] if h in sys.modules))
"""


@dataclass(frozen=True, slots=True)
class ImportCost:
    module: str
    ms: float  # fastest of the runs (least disturbed by a busy machine), top-level imports
    rss_kib: int  # median RSS after the import
    modules: int  # len(sys.modules) after it
    heavy: str  # which HEAVY packages it pulled in


def probe_import(module: str) -> tuple[float, int, int, str]:
    """(import ms of the top-level imports, RSS KiB, len(sys.modules), heavy packages loaded)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _PROBE, module, *HEAVY],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    top_us = 0
    for line in out.stderr.splitlines():
        parts = line.split("|")
        # Top level only: nested imports are indented and already in their parent's total.
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2][1:].startswith(" "):
            top_us += int(parts[1])
    rss, count, heavy = [*out.stdout.split(), ""][:3]
    return top_us / 1000, int(rss), int(count), heavy


def import_cost(module: str) -> ImportCost:
    runs = [probe_import(module) for _ in range(IMPORT_RUNS)]
    return ImportCost(
        module or "(bare interpreter)",
        min(r[0] for r in runs),
        int(statistics.median(r[1] for r in runs)),
        runs[0][2],
        runs[0][3] or "-",
    )


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def _tree_table(idle: TreeSample, loaded: TreeSample) -> str:
    lines = [
        "| process | idle RSS | idle PSS | idle USS | load RSS | load PSS | load USS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in sorted(idle.processes.keys() | loaded.processes.keys()):
        i = idle.processes.get(key, Memory())
        p = loaded.processes.get(key, Memory())
        lines.append(
            f"| {key} | {mib(i.rss)} | {mib(i.pss)} | {mib(i.uss)} "
            f"| {mib(p.rss)} | {mib(p.pss)} | {mib(p.uss)} |"
        )
    i, p = idle.total, loaded.total
    lines.append(
        f"| **tree (sum)** | {mib(i.rss)} | {mib(i.pss)} | {mib(i.uss)} "
        f"| {mib(p.rss)} | {mib(p.pss)} | {mib(p.uss)} |"
    )
    return "\n".join(lines)


def _import_table(costs: list[ImportCost]) -> str:
    base = costs[0]
    lines = [
        "| import (fresh interpreter) | import ms | RSS MiB after | RSS added MiB | modules "
        "| heavy packages loaded |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in costs:
        added = (c.rss_kib - base.rss_kib) / 1024
        lines.append(
            f"| `{c.module}` | {c.ms - (0 if c is base else base.ms):.0f} "
            f"| {c.rss_kib / 1024:.1f} | {added:.1f} | {c.modules} | {c.heavy} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    p.add_argument("--no-tree", action="store_true", help="only the import costs")
    args = p.parse_args(argv)
    print(f"# storscp memory, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n", flush=True)
    if not args.no_tree:
        with tempfile.TemporaryDirectory(prefix="mem", dir=BENCH_DIR / "out") as tmp:
            idle, loaded = measure_tree(Path(tmp))
        print("MiB from /proc/<pid>/smaps_rollup; load columns are each figure's peak")
        print(f"over {SAMPLE_INTERVAL_S:g} s samples while sending {LOAD}.\n")
        print(_tree_table(idle, loaded) + "\n", flush=True)
    costs = [import_cost(m) for m in ("", *IMPORTS)]
    print(f"{IMPORT_RUNS} fresh interpreters each: import ms is the fastest run's `-X importtime`")
    print("total, RSS the median; both relative to the bare interpreter (its row: absolute).\n")
    print(_import_table(costs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
