"""The benchmark harness (bench/) still runs, verifies data and writes its report.

The real benchmark is `make bench`; this only proves the machinery works on a
handful of tiny instances, against DCMTK's storescp and storscp.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench import data
from bench.servers import Dcmtk
from bench.verify import verify

REPO = Path(__file__).resolve().parents[2]


def test_bench_runs_tiny_scenarios_verifies_and_reports(short_tmp: Path) -> None:
    # Given two servers and a handful of tiny instances
    results = short_tmp / "RESULTS.md"
    argv = [
        sys.executable, "-m", "bench.run", "--quick", "--rounds", "1",
        "--servers", "dcmtk,storscp", "--scenarios", "tiny-1,tiny-4",
        "--count", "tiny=8", "--count", "latency=8",
        "--work-dir", str(short_tmp / "w"), "--results", str(results),
    ]  # fmt: skip
    # When the harness runs
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    # Then every run was verified and the report has both servers and the latency
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    verified = [line for line in done.stdout.splitlines() if line.endswith(", verified")]
    assert len(verified) == 4, done.stdout
    report = results.read_text()
    for row in ("| tiny x1 (8) | dcmtk |", "| tiny x4 (8) | storscp |"):
        assert row in report, report
    assert "p99 ms" in report and "DCMTK" in report
    assert (short_tmp / "w" / "results.json").exists()


def test_verify_catches_missing_extra_and_changed_instances(short_tmp: Path) -> None:
    # Given a server directory holding a correct copy of each of 3 instances
    workload = data.load_or_make(short_tmp / "data", "tiny", 3)
    server = Dcmtk(short_tmp / "srv")
    server.output_dir.mkdir(parents=True)
    copies = []
    for instance in workload.instances:
        copies.append(server.output_dir / f"CT.{instance.uid}")
        shutil.copyfile(instance.path, copies[-1])
    assert verify(server, workload) == []

    # When one copy loses its last byte's value, one disappears and a stranger appears
    changed = bytearray(copies[0].read_bytes())
    changed[-1] ^= 0xFF
    copies[0].write_bytes(bytes(changed))
    copies[1].unlink()
    shutil.copyfile(workload.instances[2].path, server.output_dir / "CT.1.2.3.4")

    # Then verification names all three problems
    problems = " | ".join(verify(server, workload))
    assert "1 missing" in problems
    assert "1 unexpected" in problems
    assert "dataset differs" in problems
