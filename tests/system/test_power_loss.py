"""Power loss: an instance that got Success survives a power cut (LazyFS).

A `kill -9` leaves the kernel's page cache alone; a power cut does not. LazyFS
(support/lazyfs.py) keeps every write in its own cache until the writer
fsyncs, and `clear-cache` drops the rest. The power cut (`cut_power`): every
process of the service frozen, LazyFS' cache cleared, all killed with
SIGKILL; then a new LazyFS over the same backing directory shows only what
was synced, and storscp starts again on it.

- The contrast, every run: DCMTK's storescp answers Success before its data
  is synced, and after the cut its files are damaged; storscp's are intact.
- Crash points: four senders store; at a random point, or right after a
  Success, the power goes. On the disk the cut left, every acknowledged
  instance is in storage or a ready file in the depot, byte-identical, and
  nothing in storage is partial; after the restart all are in storage and
  the senders finish their batches on the restarted service.
- The control: the same run with os.fsync a no-op (bench/nofsync) must lose
  data, or these tests could not fail.

The crash points themselves are in support/powerloss.py. The counts go to
the end-of-run table. `make crash` runs many crash points (STORSCP_POWER_CUTS
per variant; STORSCP_POWER_SEED replays the random choices of a run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.servers import Dcmtk, StorscpWithoutFsync
from support import dicomfiles as df
from support.lazyfs import LazyFS, build, cut_power
from support.powerloss import (
    Rig,
    Tally,
    intact,
    make_instances,
    reap,
    run_crash_points,
    service_pids,
)
from support.scu import pynetdicom_store

SHORT_CUTS = 2
LONG_CUTS = int(os.environ.get("STORSCP_POWER_CUTS", "40"))
SEED = int(os.environ.get("STORSCP_POWER_SEED", str(time.time_ns() % 1_000_000)))
CONTRAST_INSTANCES = 20
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="session")
def lazyfs_binary() -> Path:
    """LazyFS, compiled on first use and cached under build/lazyfs/ (see vendor/README.md)."""
    return build()


@pytest.fixture
def rig(short_tmp: Path, lazyfs_binary: Path) -> Iterator[Rig]:
    """LazyFS on <tmp>/storage; at the end every service stops, then LazyFS."""
    fs = LazyFS(lazyfs_binary, short_tmp / "storage", short_tmp / "backing", short_tmp / "lazyfs")
    fs.mount()
    made = Rig(short_tmp, fs)
    try:
        yield made
        fs.check_alive()  # a test tool that crashed says so, rather than ENOTCONN
    finally:
        try:
            made.stop()
        finally:
            fs.close()


def report(crash_report: list[str], line: str) -> None:
    print(line)
    crash_report.append(line)


def test_dcmtk_storescp_acknowledges_data_that_a_power_cut_destroys(
    rig: Rig, crash_report: list[str]
) -> None:
    # Given DCMTK's storescp storing onto LazyFS, and 20 instances it acknowledged intact
    sent = make_instances(rig.sent_dir, CONTRAST_INSTANCES, seed=810_000)
    datasets = {i.uid: df.dataset_bytes(i.path) for i in sent}
    server = Dcmtk(rig.root)
    assert server.output_dir == rig.fs.mount_dir
    try:
        server.start()
        files = [(i.path, df.CT, EXPLICIT_LE) for i in sent]
        assert pynetdicom_store(server.port, files) == [0] * len(sent)
        stored = server.stored_files()
        assert all(intact(stored[uid], data) for uid, data in datasets.items())
        # When the power goes
        assert server.proc is not None
        cut_power([server.proc.pid], rig.fs)
    finally:
        server.stop()
    rig.fs.remount()
    # Then what it acknowledged is damaged: this harness really drops unsynced data
    stored = server.stored_files()
    damaged = [u for u, data in datasets.items() if u not in stored or not intact(stored[u], data)]
    empty = [u for u in damaged if u in stored and stored[u].stat().st_size == 0]
    line = (
        f"power cut, DCMTK storescp: acknowledged={len(sent)} damaged={len(damaged)}"
        f" (empty files: {len(empty)})"
    )
    report(crash_report, line)
    assert len(damaged) == len(sent), line


def test_storscp_keeps_what_it_acknowledged_through_a_power_cut(
    rig: Rig, crash_report: list[str]
) -> None:
    # Given storscp on LazyFS, and the same 20 instances stored and committed
    sent = make_instances(rig.sent_dir, CONTRAST_INSTANCES, seed=810_000)
    svc = rig.storscp().start()
    files = [(i.path, df.CT, EXPLICIT_LE) for i in sent]
    assert pynetdicom_store(svc.port, files) == [0] * len(sent)
    svc.wait_stored(i.uid for i in sent)
    # When the power goes
    cut_power(service_pids(svc), rig.fs)
    reap(svc)
    rig.fs.remount()
    # Then every one is intact in storage, on the disk exactly as the cut left it
    damaged = [i.uid for i in sent if not intact(svc.stored_path(i.uid), df.dataset_bytes(i.path))]
    line = f"power cut, storscp: acknowledged={len(sent)} damaged={len(damaged)}"
    report(crash_report, line)
    assert damaged == [], line
    # And it serves again
    svc.start()
    (extra,) = make_instances(rig.sent_dir, 1, seed=820_000)
    assert pynetdicom_store(svc.port, [(extra.path, df.CT, EXPLICIT_LE)]) == [0]
    svc.wait_stored([extra.uid])
    # And the killed receiver's spare parts are swept once their grace period is over
    svc.wait_depot_swept()


CUTS = [
    pytest.param(SHORT_CUTS, id="short"),
    pytest.param(LONG_CUTS, id="long", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("points", CUTS)
@pytest.mark.parametrize("right_after_success", [False, True], ids=["random", "after-success"])
def test_power_cuts_lose_no_acknowledged_instance(
    rig: Rig, crash_report: list[str], points: int, right_after_success: bool
) -> None:
    when = "right after a Success" if right_after_success else "at random"
    tally = Tally(f"storscp, cut {when}", SEED)
    try:
        run_crash_points(rig, rig.storscp(), points, right_after_success, tally)
    finally:
        report(crash_report, tally.line())
    assert tally.at_cut.lost == [], tally.line()
    assert tally.at_cut.partial == [], tally.line()
    assert tally.after_restart.lost == [], tally.line()
    assert tally.after_restart.partial == [], tally.line()


def test_without_fsync_the_same_power_cut_loses_acknowledged_instances(
    rig: Rig, crash_report: list[str]
) -> None:
    # Given storscp exactly as shipped except that os.fsync does nothing (diagnostic only)
    tally = Tally("storscp with os.fsync a no-op (control)", SEED)
    svc = rig.storscp(env=StorscpWithoutFsync.env)
    # When the power goes, as in the test above
    try:
        run_crash_points(rig, svc, 1, False, tally)
    finally:
        report(crash_report, tally.line())
    # Then acknowledged instances are lost, and damaged files become visible
    assert tally.at_cut.lost, tally.line()
    assert tally.after_restart.lost, tally.line()
    assert tally.after_restart.partial, tally.line()
