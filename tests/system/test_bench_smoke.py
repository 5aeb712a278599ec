"""The benchmark harness (bench/) still runs, verifies data and writes its report.

The real benchmark is `make bench`; this only proves the machinery works on a
handful of tiny instances, against DCMTK's storescp, Orthanc and storscp.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from bench import data, memory
from bench.orthanc import Orthanc
from bench.senders import send
from bench.servers import Dcmtk
from bench.verify import verify

REPO = Path(__file__).resolve().parents[2]
TRACKED_RESULTS = REPO / "bench" / "RESULTS.md"
HARNESS_TIMEOUT_S = 120


def _run_harness(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run bench.run; on timeout SIGTERM it, so that it stops the servers it started."""
    with subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=HARNESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the harness's finally stops every server
            out, err = proc.communicate(timeout=120)
            raise AssertionError(f"bench.run timed out: {out[-3000:]}{err[-3000:]}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_bench_runs_tiny_scenarios_verifies_and_reports(short_tmp: Path) -> None:
    # Given three servers, a handful of tiny instances and the tracked full-run report
    tracked_before = hashlib.sha256(TRACKED_RESULTS.read_bytes()).hexdigest()
    work = short_tmp / "w"
    argv = [
        sys.executable, "-m", "bench.run", "--quick", "--rounds", "1",
        "--servers", "dcmtk,orthanc,storscp", "--scenarios", "tiny-1,tiny-4",
        "--count", "tiny=8", "--count", "latency=8", "--work-dir", str(work),
    ]  # fmt: skip
    # When the harness runs in quick mode without --results (as `make bench` does)
    done = _run_harness(argv)
    # Then every run was verified; tiny x4 re-sent tiny x1's UIDs, so Orthanc was emptied
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    verified = [line for line in done.stdout.splitlines() if line.endswith(", verified")]
    assert len(verified) == 6, done.stdout
    # And the tracked bench/RESULTS.md (the full run's reference) is untouched
    assert hashlib.sha256(TRACKED_RESULTS.read_bytes()).hexdigest() == tracked_before
    # And the report went to the work directory, with ratios to DCMTK and to Orthanc
    report = (work / "RESULTS.md").read_text()
    rows = ("| tiny x1 (8) | dcmtk |", "| tiny x1 (8) | orthanc |", "| tiny x4 (8) | storscp |")
    for row in rows:
        assert row in report, report
    assert "time ÷ DCMTK | time ÷ Orthanc |" in report
    assert "p99 ms" in report
    assert (work / "results.json").exists()


def test_bench_assoc_splits_the_cpu_of_an_association(short_tmp: Path) -> None:
    # Given storscp and a few tiny files, one association each
    argv = [
        sys.executable, "-m", "bench.assoc", "--rounds", "1", "--count", "8",
        "--work-dir", str(short_tmp / "w"),
    ]  # fmt: skip
    # When bench.assoc runs
    done = _run_harness(argv)
    # Then it reports each part's CPU per association, the clients' too
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {
        line.split("  ")[1].strip(): float(line.split()[-2])
        for line in done.stdout.splitlines()
        if line.startswith("  ") and line.rstrip().endswith(")")
    }
    parts = ("receiver", "receiver: connection threads", "logger", "committer", "storscp total")
    for part in parts:
        assert part in rows, done.stdout
    assert rows["storscp total"] > 0 and rows["clients (sh + storescu)"] > 0, done.stdout


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


def test_orthanc_verification_reads_its_index_and_storage_area(short_tmp: Path) -> None:
    # Given the bench's Orthanc holding 3 tiny instances, verified intact
    workload = data.load_or_make(short_tmp / "data", "tiny", 3)
    files = [i.path for i in workload.instances]
    server = Orthanc(short_tmp / "orthanc")
    server.start()
    try:
        assert not send(server.port, files, 1, short_tmp / "logs1").failures
        assert verify(server, workload) == []
        stored = server.stored_files()

        # When one stored file changes, one disappears behind Orthanc's back,
        # and a file no instance owns appears in its storage area
        changed = bytearray(stored[workload.instances[0].uid].read_bytes())
        changed[-1] ^= 0xFF
        stored[workload.instances[0].uid].write_bytes(bytes(changed))
        stored[workload.instances[1].uid].unlink()
        (server.output_dir / "zz").mkdir()
        shutil.copyfile(workload.instances[2].path, server.output_dir / "zz" / "stray")

        # Then verification names all three problems
        problems = " | ".join(verify(server, workload))
        assert "dataset differs" in problems
        assert "unreadable" in problems
        assert "1 unexpected" in problems

        # When the harness empties Orthanc and the same instances come again
        server.clear_output()
        assert server.stored_files() == {}
        assert not send(server.port, files, 1, short_tmp / "logs2").failures
        # Then Orthanc stored them anew (its index forgot them), all intact
        assert verify(server, workload) == []
    finally:
        server.stop()


def test_memory_probe_reads_this_process_and_an_import() -> None:
    # Given this test's own process, When bench.memory reads it
    mine = memory.read_memory(os.getpid())
    # Then its figures are consistent: private <= proportional <= resident
    assert mine is not None and 0 < mine.uss <= mine.pss <= mine.rss
    # And a fresh interpreter's import of zmq is timed, sized and named
    ms, rss_kib, modules, heavy = memory.probe_import("zmq")
    assert ms > 0 and rss_kib > 1024 and modules > 10 and heavy == "zmq"
