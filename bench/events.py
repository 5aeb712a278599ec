"""What one service event costs on its way to the log, in CPU time.

Runs the real logger component (`python -m storscp.logger`) on a temporary
log directory and a separate sender process that posts numbered events
through the components' own Outbox at a steady rate, below saturation, so
that nothing is dropped and the numbers are per event written. Reports the
CPU time (user + system, from /proc) of the sender process and of the
logger per event, and checks that every event reached the log.

CPU time, not wall time: on a machine shared with other work it is the
figure that moves least. The sender's pacing loop is counted too; it is the
same before and after a change of the protocol.

    .venv/bin/python -m bench.events                 # 20000 events at 5000/s, 3 rounds
    .venv/bin/python -m bench.events --count 50000 --rate 10000 --rounds 5
    # before/after: each interpreter's own storscp install, rounds interleaved
    .venv/bin/python -m bench.events --python /work/main/.venv/bin/python --python .venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 30.0
TICK_S = 0.005


def cpu_s_of(pid: int) -> float:
    """utime + stime of a live process, in seconds (resolution 1/CLK_TCK)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def send(endpoint: str, count: int, rate: float) -> None:
    """The sender process: post `count` events at `rate`/s, then close; print CPU seconds."""
    from storscp import bus
    from storscp.outbox import Outbox

    outbox = Outbox("bench", {"logger": endpoint}, linger_ms=60_000)
    outbox.start()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    seq = 0
    while seq < count:
        # Post what is due, then sleep a tick: the generator's own cost stays small.
        due = min(count, int((time.monotonic() - started) * rate) + 1)
        while seq < due:
            outbox.event(
                bus.EventType.WRITE, run="bench", n=seq, path=f"/srv/dicom/1.2.3.{seq}.dcm"
            )
            seq += 1
        time.sleep(TICK_S)  # the load generator's pace, not a wait for a result
    outbox.close(timeout_s=120.0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"cpu_s": cpu, "dropped": outbox.dropped}), flush=True)


def count_lines(log_dir: Path, marker: bytes) -> int:
    total = 0
    for name in ("storscp1.log", "storscp2.log"):
        path = log_dir / name
        if path.exists():
            total += path.read_bytes().count(marker)
    return total


def one_round(root: Path, count: int, rate: float, python: str) -> dict[str, float]:
    """Start a logger, send, wait for every line, stop; CPU per event in µs."""
    log_dir, run_dir = root / "log", root / "run"
    (run_dir / "bus").mkdir(parents=True)
    log_dir.mkdir()
    config = root / "storscp.toml"
    config.write_text(
        f'log_dir = "{log_dir}"\nrun_dir = "{run_dir}"\nlog_max_bytes = 256000000\n'
        f'storage_dir = "{root}"\n'
    )
    # Each interpreter imports its own storscp: run this file as a script, not from the checkout.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    logger = subprocess.Popen(
        [python, "-m", "storscp.logger", "-c", str(config)],
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=root,  # `-m` imports from the working directory first
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while count_lines(log_dir, b" START proc=logger ") == 0:
            if time.monotonic() > deadline or logger.poll() is not None:
                raise RuntimeError("the logger did not start")
            time.sleep(0.05)
        logger_before = cpu_s_of(logger.pid)
        endpoint = f"ipc://{run_dir}/bus/logger.sock"
        out = subprocess.run(
            [python, str(Path(__file__).resolve()), "--send", endpoint, str(count), str(rate)],
            capture_output=True,
            text=True,
            env=env,
            cwd=root,
            check=True,
            timeout=count / rate + 180,
        ).stdout
        sender = json.loads(out.strip().splitlines()[-1])
        marker = b" run=bench "
        deadline = time.monotonic() + 60
        while count_lines(log_dir, marker) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        written = count_lines(log_dir, marker)
        logger_cpu = cpu_s_of(logger.pid) - logger_before
    finally:
        logger.terminate()
        logger.wait(30)
    return {
        "sender_us": sender["cpu_s"] / count * 1e6,
        "logger_us": logger_cpu / count * 1e6,
        "written": written,
        "dropped": sender["dropped"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=5_000.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--python",
        action="append",
        help="interpreter whose storscp to measure (repeat to compare; default: this one)",
    )
    parser.add_argument("--send", nargs=3, metavar=("ENDPOINT", "COUNT", "RATE"))
    args = parser.parse_args(argv)
    if args.send:
        send(args.send[0], int(args.send[1]), float(args.send[2]))
        return 0
    pythons: list[str] = [os.path.abspath(p) for p in args.python or [sys.executable]]
    rows: dict[str, list[dict[str, float]]] = {p: [] for p in pythons}
    for round_ in range(args.rounds):
        for python in pythons[round_ % len(pythons) :] + pythons[: round_ % len(pythons)]:
            root = Path(tempfile.mkdtemp(prefix="bev", dir="/tmp"))
            try:
                rows[python].append(one_round(root, args.count, args.rate, python))
            finally:
                shutil.rmtree(root, ignore_errors=True)
            print(python, json.dumps(rows[python][-1]), flush=True)
    complete = True
    for python, results in rows.items():
        print(f"{python}: {args.count} events at {args.rate:.0f}/s, {len(results)} rounds")
        for key in ("sender_us", "logger_us"):
            values = [r[key] for r in results]
            print(f"  {key}: median {statistics.median(values):.1f} (min {min(values):.1f})")
        complete = complete and all(r["written"] == args.count for r in results)
    print(f"every event written: {complete}")
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
