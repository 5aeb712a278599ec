"""Where the CPU of one association goes (issue 16): `python -m bench.assoc`.

The bench's "assoc/instance" scenario (4 clients, each runs storescu once per
tiny file) gives one number per server. This splits storscp's into its
components, and the receivers' into their long-lived threads (acceptor,
outbox, ZeroMQ I/O...) and the connection threads, per association; beside
it the clients' own CPU (sh and storescu, from RUSAGE_CHILDREN), which on a
2-core machine bounds what any server can gain in that scenario. With
`--baseline DIR` (a checkout with its .venv) both builds run side by side,
interleaved, for before/after.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
from pathlib import Path

from bench import data
from bench.feed import BaselineStorscp, component_cpu_s, components, log
from bench.procstat import CLOCK_TICKS_PER_S, _stat_fields, tree_cpu_s
from bench.senders import send
from bench.servers import Storscp
from bench.verify import verify, wait_visible

BENCH_DIR = Path(__file__).resolve().parent
SENDERS = 4


def thread_ticks(pids: list[int]) -> dict[tuple[int, int], int]:
    """(pid, tid) -> CPU ticks of every thread of these processes."""
    out: dict[tuple[int, int], int] = {}
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except FileNotFoundError:
            continue
        for tid in tids:
            fields = _stat_fields(f"{pid}/task/{tid}")
            if fields is not None:
                out[(pid, tid)] = int(fields[11]) + int(fields[12])
    return out


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(
    server: Storscp, procs: list[tuple[str, int]], workload: data.Workload, log_dir: Path
) -> dict[str, float]:
    """One verified run: CPU ms per association by component, threads, clients; assoc/s."""
    files = [i.path for i in workload.instances]
    receivers = [pid for proc, pid in procs if proc == "receiver"]
    before, threads_before = component_cpu_s(procs), thread_ticks(receivers)
    tree_before, clients_before = tree_cpu_s(server.pid), children_cpu_s()
    sent = send(server.port, files, SENDERS, log_dir, per_instance=True)
    clients = children_cpu_s() - clients_before
    wait_visible(server, workload)
    after, threads_after = component_cpu_s(procs), thread_ticks(receivers)
    tree = tree_cpu_s(server.pid) - tree_before
    problems = list(sent.failures) + verify(server, workload)
    if problems:
        raise SystemExit(f"BENCHMARK FAILED ({server.name}): " + "; ".join(problems[:5]))
    server.clear_output()
    n = len(files)
    out = {proc: 1000 * (after[proc] - before.get(proc, 0.0)) / n for proc in after}
    # Threads there before and after (main, acceptor, outbox, ZeroMQ I/O, ...);
    # the rest of the receivers' CPU is their connection threads'.
    lasting = sum(
        ticks - threads_before[key] for key, ticks in threads_after.items() if key in threads_before
    )
    out["receiver: long-lived threads"] = 1000 * lasting / CLOCK_TICKS_PER_S / n
    out["receiver: connection threads"] = (
        out.get("receiver", 0.0) - out["receiver: long-lived threads"]
    )
    out["storscp total"] = 1000 * tree / n
    out["clients (sh + storescu)"] = 1000 * clients / n
    out["associations/s"] = n / sent.wall_s
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.assoc", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--count", type=int, default=400, help="associations (tiny files) per run")
    p.add_argument("--baseline", type=Path, help="a checkout with .venv to compare with")
    p.add_argument("--work-dir", type=Path, default=BENCH_DIR / "out")
    args = p.parse_args(argv)

    workload = data.load_or_make(args.work_dir / "data", "tiny", args.count)
    root = args.work_dir / "assoc"
    servers: list[Storscp] = [Storscp(root / "storscp")]
    if args.baseline is not None:
        servers.insert(0, BaselineStorscp(root / "baseline", args.baseline.resolve()))
    results: dict[str, dict[str, list[float]]] = {}
    procs: dict[str, list[tuple[str, int]]] = {}
    load = [os.getloadavg()[0]]
    try:
        for server in servers:
            server.start()
            procs[server.name] = components(server)  # once: the log alternates
        for rnd in range(args.rounds):
            shift = rnd % len(servers)
            for server in servers[shift:] + servers[:shift]:
                logs = root / "logs" / f"{rnd}-{server.name}"
                out = run(server, procs[server.name], workload, logs)
                for key, value in out.items():
                    results.setdefault(server.name, {}).setdefault(key, []).append(value)
                log(f"round {rnd + 1}: {server.name}: {out['storscp total']:.2f} ms/association")
        load.append(os.getloadavg()[0])
    finally:
        for server in servers:
            server.stop()
            server.empty_trash()
    print(
        f"\nCPU ms per association, median (min-max) of {args.rounds} rounds;"
        f" load average {load[0]:.2f} at start, {load[-1]:.2f} at end\n"
    )
    for name, table in results.items():
        print(f"{name}:")
        for key, values in table.items():
            print(
                f"  {key:32s} {statistics.median(values):8.3f}"
                f" ({min(values):.3f}-{max(values):.3f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
