"""The report (RESULTS.md): the machine, the versions, the method and the table."""

from __future__ import annotations

import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pynetdicom

from bench.orthanc import ORTHANC
from bench.stats import LatencyRun, Run, Spread, percentile, time_ratios

LATENCY_TARGET_P99_S = 0.100
REPO = Path(__file__).resolve().parent.parent
# How the table names a reference server in its "time ÷" columns.
REFERENCE_LABELS = {"dcmtk": "DCMTK", "orthanc": "Orthanc"}


@dataclass(frozen=True, slots=True)
class Context:
    mode: str
    argv: list[str]
    started: float
    elapsed_s: float
    machine_before: dict[str, str]
    machine_after: dict[str, str]
    foreign_cpu_s: float  # CPU time other programs used during the run
    servers: dict[str, str]
    workloads: dict[str, tuple[int, float]]
    latency_count: int
    rounds: int
    note: str
    floor_ms: list[float]  # bench.floor: create, write, fsync, rename, fsync(dir)


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def cpu_busy_s() -> tuple[float, float]:
    """(all CPUs' busy seconds from /proc/stat, this harness's and its children's CPU seconds).

    The difference of two readings is what *other* programs used meanwhile:
    the benchmark's own servers and clients are all children of the harness
    (reaped by the end), so they are in the second figure. Steal time (the
    hypervisor's) counts as busy: it is noise too.
    """
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest is already in user)
    busy = sum(fields[:3]) + sum(fields[5:8])
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    mine = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return busy / os.sysconf("SC_CLK_TCK"), mine


def machine_info() -> dict[str, str]:
    """What the numbers depend on, captured at start and end (load changes)."""
    storscp_bin = str(Path(sys.executable).with_name("storscp"))
    commit = _first_line(["git", "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "uname": _first_line(["uname", "-a"]),
        "cpu": f"{_cpu_model()}, {os.cpu_count()} logical CPUs",
        "memory": _mem_total(),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "dcmtk": _first_line(["storescp", "--version"]).strip("$ "),
        "orthanc": _first_line([ORTHANC, "--version"]),
        "storscp": _first_line([storscp_bin, "--version"])
        + f" (git {commit}{', uncommitted changes' if dirty and dirty != 'unknown' else ''})",
    }


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _spread(values: list[float]) -> str:
    s = Spread.of(values)
    if len(values) == 1:
        return _fmt(s.median)
    return f"{_fmt(s.median)} ({_fmt(s.low)}-{_fmt(s.high)})"


def _ratio(runs: list[Run], server: str, scenario: str, reference: str) -> str:
    if server == reference:
        return "1"
    ratios = time_ratios(runs, server, scenario, reference)
    return _spread(ratios) if ratios else "-"


def _table(
    runs: list[Run], scenarios: dict[str, str], servers: list[str], references: list[str]
) -> str:
    ratio_heads = "".join(f" time ÷ {REFERENCE_LABELS.get(r, r)} |" for r in references)
    head = (
        "| scenario | server | instances/s | MB/s | server CPU ms/instance | server CPU % "
        f"| peak RSS MiB (largest / sum) |{ratio_heads}\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(references) + "\n"
    )
    rows = []
    for key, label in scenarios.items():
        for server in servers:
            mine = [r for r in runs if r.scenario == key and r.server == server]
            if not mine:
                continue
            ratios = "".join(f" {_ratio(runs, server, key, r)} |" for r in references)
            largest = Spread.of([r.peak_rss_kib / 1024 for r in mine]).median
            total = Spread.of([r.sum_rss_kib / 1024 for r in mine]).median
            rows.append(
                f"| {label} ({mine[0].instances}) | {server} "
                f"| {_spread([r.instances_per_s for r in mine])} "
                f"| {_spread([r.mb_per_s for r in mine])} "
                f"| {_spread([r.cpu_ms_per_instance for r in mine])} "
                f"| {_spread([r.cpu_percent for r in mine])} "
                f"| {largest:.1f} / {total:.1f} |{ratios}"
            )
    largest_of = "; ".join(
        f"{server}: `{_most_common([r.peak_rss_cmd for r in runs if r.server == server])}`"
        for server in servers
        if any(r.server == server for r in runs)
    )
    return head + "\n".join(rows) + f"\n\nLargest process (most often): {largest_of}.\n"


def _most_common(commands: list[str]) -> str:
    """A short name for a command line: the program, or python's -m module."""
    shorts = []
    for command in commands:
        words = command.split()
        if "-m" in words[:-1]:
            shorts.append(words[words.index("-m") + 1])
        else:
            shorts.append(Path(words[0]).name if words else "?")
    return max(set(shorts), key=shorts.count) if shorts else "?"


def _latency(latency_runs: list[LatencyRun], count: int) -> str:
    if not latency_runs:
        return "Not run.\n"
    pooled = [x for run in latency_runs for x in run.latencies_s]
    p99 = percentile(pooled, 99)
    verdict = "meets" if p99 < LATENCY_TARGET_P99_S else "**misses**"
    per_round = ", ".join(f"{1000 * percentile(r.latencies_s, 99):.1f}" for r in latency_runs)
    rates = _spread([r.instances / r.wall_s for r in latency_runs])
    return (
        f"storscp only; {len(latency_runs)} round(s) of {count} small instances sent by "
        f"4 storescu processes (one association each, {rates} instances/s). "
        f"Latency = the moment inotify reports `<UID>.dcm` in the storage directory "
        f"minus the moment storescu logged the Success response (both wall-clock, "
        f"microsecond resolution). Negative values: the file was visible before "
        f"storescu had logged the response.\n\n"
        f"| samples | p50 ms | p90 ms | p99 ms | max ms | min ms | p99 per round ms |\n"
        f"| ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
        f"| {len(pooled)} | {1000 * percentile(pooled, 50):.1f} "
        f"| {1000 * percentile(pooled, 90):.1f} | {1000 * p99:.1f} "
        f"| {1000 * max(pooled):.1f} | {1000 * min(pooled):.1f} | {per_round} |\n\n"
        f"Target (issue 6, item 4): p99 under {LATENCY_TARGET_P99_S * 1000:.0f} ms — "
        f"this run {verdict} it.\n"
    )


METHOD = """\
- **Interleaving.** All servers run side by side for the whole benchmark (idle
  ones cost nothing measurable). In each round every scenario runs once per
  server, in an order rotated by round and scenario. Figures are the median
  over rounds with min-max in brackets; *time ÷ DCMTK* and *time ÷ Orthanc*
  are computed per round (this server's wall time / the reference's in the
  same round), then summarised: 0.5 means twice as fast as the reference.
- **Clients.** DCMTK `storescu`, `TCP_NODELAY=1` in its environment, default
  negotiation: it proposes every storage SOP class it knows (~120
  presentation contexts), like a real modality. *x4* means 4 storescu processes
  in parallel, each with a round-robin share of the files on one association.
  *assoc/instance* means 4 clients that each run storescu once per file (one
  association per instance; storescu has no option for that), so the
  per-process start of storescu is part of that scenario's time, for every
  server alike.
- **Throughput.** Wall time from spawning the first sender to the exit of
  the last one. MB = 10⁶ bytes of source files.
- **Server CPU.** User + system time of the server's whole process tree during
  the run, from `/proc/<pid>/stat`: utime + stime + cutime + cstime of every
  process below the one the harness started (supervisord and all storscp
  components; the DCMTK parent and its per-association `--fork` children;
  Orthanc is one process with threads).
  Children that exit during the run are counted through their parent's
  cutime/cstime once reaped, or through their own entry while still zombies;
  readings are repeated until stable so a reap during a reading cannot count
  twice. The window includes waiting until every file is visible in the
  output directory (storscp's committer moves files after Success). *CPU %* is
  CPU time / wall time (100 % = one core).
- **Memory.** Peak RSS (VmHWM) per process, reset at the start of each run
  (`/proc/<pid>/clear_refs`), sampled every 50 ms. *largest*: the biggest
  single process (storscp: normally the receiver; DCMTK: an association
  child); *sum*: the largest sum of the peaks of processes alive at the same
  time. RSS counts shared library pages in every process that maps them.
- **Verification.** After every run each sent SOP Instance UID must be in the
  server's output directory exactly once (DCMTK and the pynetdicom app name files
  `<modality>.<UID>`, storscp `<UID>.dcm`; Orthanc names them after its own
  attachment UUIDs, so its index, read through its REST API on loopback, maps
  each SOP Instance UID to its file, and every file in its storage area must
  belong to an indexed instance), and the bytes after the file meta
  information must hash (SHA-256) to the source's. Any missing, extra or
  different file, or a client error, stops the benchmark with an error.
- **Not equal work.** storscp fsyncs every instance (and the directories)
  before answering Success; Orthanc fsyncs every file (`SyncStorageArea`,
  its default) and commits each instance to its SQLite index before it
  answers; DCMTK and the pynetdicom app do not fsync. The pynetdicom app
  decodes and re-encodes each dataset with pydicom; Orthanc parses each
  dataset to index it. Each server runs with its own default maximum PDU
  (DCMTK 16384, Orthanc 16384, pynetdicom app 16382, storscp 4 MiB). The
  *durable write floor* above is storscp's extra work alone: create a 2.8 KB
  file, write, fsync, rename, fsync the directory, measured in the work
  directory before the rounds.
- **Between runs.** Output files are truncated and moved to a trash directory,
  which is deleted only after the last round (Orthanc: its whole storage
  area is moved, then its index emptied through the REST API). Deleting them
  at once made the next run slower for whoever came next: on ext4 without a
  journal, creating a file skips every inode freed in the last minutes, one
  by one. Start a new
  benchmark a few minutes after the previous one ended (or after deleting many
  files on the same disk) for the same reason.
"""


def _floor(times_ms: list[float]) -> str:
    if not times_ms:
        return "not measured"
    median = statistics.median(times_ms)
    return (
        f"{median:.3f} ms median, {percentile(times_ms, 90):.3f} ms p90 per instance "
        f"({len(times_ms)} cycles): at most {1000 / median:.0f} instances/s for one sender "
        "with storscp's fsyncs, before any network or DICOM work"
    )


def render(
    context: Context,
    runs: list[Run],
    scenarios: dict[str, str],
    servers: list[str],
    references: list[str],
    latency_runs: list[LatencyRun],
) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(context.started))
    mb, ma = context.machine_before, context.machine_after
    workloads = "\n".join(
        f"| {name} | {count} | {mean / 1e6:.4f} MB | {count * mean / 1e6:.1f} MB |"
        for name, (count, mean) in context.workloads.items()
    )
    servers_md = "\n".join(f"- **{name}**: `{cmd}`" for name, cmd in context.servers.items())
    notes = [context.note] if context.note else []
    cpus = os.cpu_count() or 1
    foreign_share = context.foreign_cpu_s / (cpus * context.elapsed_s)
    if foreign_share > 0.05:
        notes.append(
            f"Other programs used {context.foreign_cpu_s:.0f} CPU-seconds during this run "
            f"({100 * foreign_share:.0f} % of the machine's {cpus} CPUs): the machine was "
            "shared, so these numbers are noisy."
        )
    note = "".join(f"\n> {n}\n" for n in notes)
    return f"""# storscp benchmark results

Generated by `{shlex.join(context.argv)}` ({context.mode} mode, {context.rounds} rounds,
{context.elapsed_s:.0f} s) on {when}.
{note}
## Machine and versions

| | |
| --- | --- |
| machine | `{mb["uname"]}` |
| CPU | {mb["cpu"]} |
| memory | {mb["memory"]} |
| load average (1/5/15 min) at start / end | {mb["load average"]} / {ma["load average"]} |
| CPU used by other programs during the run | {context.foreign_cpu_s:.1f} s |
| Python | {mb["python"]} |
| pynetdicom | {mb["pynetdicom"]} |
| pydicom | {mb["pydicom"]} |
| DCMTK | {mb["dcmtk"]} |
| Orthanc | {mb["orthanc"]} |
| storscp | {mb["storscp"]} |
| durable write floor (bench/floor.py) | {_floor(context.floor_ms)} |

## Servers

{servers_md}

## Workloads

| workload | instances | size each | total |
| --- | ---: | ---: | ---: |
{workloads}

tiny: 32x32 16-bit CT; small: 512x512 16-bit CT; large: 96 frames of 512x512
16-bit multi-frame secondary capture. Pixel data are seeded pseudo-random bytes.

## Throughput, CPU and memory

Every instance of every run was verified (see Method).

{_table(runs, scenarios, servers, references)}
## Latency: Success to visible file (issue 6, item 4)

{_latency(latency_runs, context.latency_count)}
## Method

{METHOD}"""
