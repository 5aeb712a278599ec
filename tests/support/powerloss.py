"""Crash points for the power-loss tests: store, cut the power, look at the disk, restart.

A crash point: four senders store fresh instances; at a random Success (at
once, or up to 50 ms later) the power goes (`cut_power`); a new LazyFS shows
what was synced. `look()` then checks, on the disk exactly as the cut left
it, that every acknowledged instance is in storage or a ready file in the
depot, byte-identical, and that nothing in storage (or about to be committed
to it) is partial. storscp starts again, the senders finish their batches on
it, and `look()` checks storage once more. A `Tally` adds up the points.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID

from storscp import depotfiles

from . import dicomfiles as df
from .lazyfs import LazyFS, cut_power
from .senders import Instance, SenderPool
from .service import Service, poll_for

SENDERS = 4
PER_SENDER = 40
# rows = columns: 0.5 KB to 512 KB of pixel data, so that a cut finds instances
# at every stage: first bytes, several writes, fsync, rename, commit.
SIZES = (16, 64, 256, 512)
STORAGE_EXTRAS = {"depot", ".storscp"}  # the depot and durable state, not instances
RESTART_TIMEOUT_S = 60.0  # two busy cores: supervisord and five components start again


def make_instances(directory: Path, count: int, seed: int) -> list[Instance]:
    """`count` CT images of the sizes in SIZES, in turn; the same for the same seed.

    One image per size is made with random pixels, once per directory; the
    instances are copies of it under their own UIDs (making 512 KB of random
    pixels costs more than sending it).
    """
    templates = {}
    for rows in SIZES:
        template = directory / f"template-{rows}.dcm"
        if not template.exists():
            df.make_image(template, df.CT, seed=rows, rows=rows, columns=rows)
        templates[rows] = dcmread(template)
    out = []
    for i in range(count):
        ds = templates[SIZES[i % len(SIZES)]]
        uid = UID(df.uid_for(f"power-{seed + i}"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = (seed + i) % 100_000
        path = directory / f"{seed}_{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(Instance(path, uid))
    return out


def intact(path: Path, dataset: bytes) -> bool:
    """Whether a stored file holds exactly the dataset that was sent (own file meta allowed)."""
    try:
        return df.dataset_bytes(path) == dataset
    except (OSError, ValueError):  # empty, cut short before the meta, gone
        return False


class Rig:
    """A LazyFS mounted on <root>/storage, and the storscp services that store onto it."""

    def __init__(self, root: Path, fs: LazyFS) -> None:
        self.root = root
        self.fs = fs
        self.services: list[Service] = []
        self.sent_dir = root / "sent"
        self.sent_dir.mkdir()
        # Stored files found intact: never rewritten, so never read again.
        self.verified: set[str] = set()

    def storscp(self, env: Mapping[str, str] | None = None) -> Service:
        """storscp with its storage (depot inside) on LazyFS, which reports 0 bytes free."""
        svc = Service(self.root, env=env, min_free_bytes=0)
        assert svc.storage_dir == self.fs.mount_dir
        self.services.append(svc)
        return svc

    def stop(self) -> None:
        """Stop every service (each checks that nothing it started survives)."""
        errors = []
        for svc in self.services:
            try:
                svc.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        assert not errors, errors


def service_pids(svc: Service) -> list[int]:
    """supervisord first (frozen first, it restarts nothing), then every component."""
    assert svc.proc is not None
    components = svc.live_components()
    expected = len(svc.singles) + int(svc.has_metrics) + svc.receiver_count()
    assert len(components) == expected, components
    return [svc.proc.pid, *components]


def reap(svc: Service) -> None:
    """After the cut: supervisord is our child, collect it; no component may be left."""
    assert svc.proc is not None
    svc.proc.wait(10)
    assert svc.live_components() == []


@dataclass
class Look:
    """What one look at the disk found about the acknowledged instances of one crash point."""

    checked: int = 0
    in_depot: int = 0  # acknowledged, found intact as a ready file not yet committed
    lost: list[str] = field(default_factory=list)  # acknowledged; missing or not intact
    partial: list[str] = field(default_factory=list)  # visible (or to be), not intact


def look(
    svc: Service,
    datasets: Mapping[str, bytes],
    acknowledged: set[str],
    verified: set[str],
    depot_counts: bool,
) -> Look:
    """Check storage and, on the disk a cut left (`depot_counts`), the depot's ready files.

    `verified` holds names found intact by an earlier look: a stored file is
    never rewritten, so it is not read again.
    """
    found: dict[str, str] = {}
    partial = []
    for name in sorted(os.listdir(svc.storage_dir)):
        uid = name[: -len(svc.extension)] if name.endswith(svc.extension) else ""
        if name in STORAGE_EXTRAS:
            continue
        if name in verified:
            found[uid] = "storage"
        elif uid in datasets and intact(svc.storage_dir / name, datasets[uid]):
            found[uid] = "storage"
            verified.add(name)
        else:
            partial.append(name)
    if depot_counts:
        for name in sorted(os.listdir(svc.depot_dir)):
            uid = depotfiles.uid_of_ready(name) or ""
            if not uid:
                continue  # a part file: never visible, removed by the sweep
            if uid in datasets and intact(svc.depot_dir / name, datasets[uid]):
                found.setdefault(uid, "depot")
            else:
                partial.append(f"depot/{name}")  # a ready file is committed as it is
    lost = sorted(acknowledged - found.keys())
    in_depot = sum(1 for uid in acknowledged if found.get(uid) == "depot")
    return Look(len(acknowledged), in_depot, lost, partial)


@dataclass
class Tally:
    """Crash points tried and what they found, for the report and the assertions."""

    name: str
    seed: int
    points: int = 0
    at_cut: Look = field(default_factory=Look)
    after_restart: Look = field(default_factory=Look)
    served_again: int = 0  # instances acknowledged by the restarted services

    def add(self, at_cut: Look, after: Look, served_again: int) -> None:
        self.points += 1
        for total, one in ((self.at_cut, at_cut), (self.after_restart, after)):
            total.checked += one.checked
            total.in_depot += one.in_depot
            total.lost += one.lost
            total.partial += [name for name in one.partial if name not in total.partial]
        self.served_again += served_again

    def line(self) -> str:
        examples = (self.at_cut.lost + self.after_restart.lost + self.after_restart.partial)[:3]
        return (
            f"power cut, {self.name}: crash points={self.points} seed={self.seed}"
            f" | at the cut: acknowledged={self.at_cut.checked}"
            f" (in the depot: {self.at_cut.in_depot}) lost={len(self.at_cut.lost)}"
            f" partial={len(self.at_cut.partial)}"
            f" | after restart: acknowledged={self.after_restart.checked}"
            f" lost={len(self.after_restart.lost)} partial={len(self.after_restart.partial)}"
            f" acknowledged by the restarted service={self.served_again}"
            + (f" e.g. {examples}" if examples else "")
        )


def run_crash_points(
    rig: Rig, svc: Service, points: int, right_after_success: bool, tally: Tally
) -> None:
    """Start `svc`, then `points` crash points; leaves the depot swept."""
    rng = random.Random(f"{tally.seed}-{tally.name}")
    svc.start()
    for point in range(points):
        tally.add(*crash_point(rig, svc, point, rng, right_after_success))
    # Parts fsynced but never renamed are swept after the committer's grace period.
    svc.wait_depot_swept()


def crash_point(
    rig: Rig, svc: Service, point: int, rng: random.Random, right_after_success: bool
) -> tuple[Look, Look, int]:
    """Store from four senders, cut the power, look, restart, let them finish, look again."""
    batches = [
        make_instances(rig.sent_dir, PER_SENDER, seed=1_000_000 * (point + 1) + s * PER_SENDER)
        for s in range(SENDERS)
    ]
    datasets = {i.uid: df.dataset_bytes(i.path) for batch in batches for i in batch}
    pids = service_pids(svc)
    pool = SenderPool(batches, port=svc.current_port).start()
    # The power goes at a random Success: at once, or a little later
    pool.wait_acknowledged(rng.randint(1, SENDERS * PER_SENDER * 3 // 4), 120)
    if not right_after_success:
        threading.Event().wait(rng.uniform(0.0, 0.05))
    cut_power(pids, rig.fs)
    reap(svc)
    rig.fs.remount()
    acknowledged = pool.acknowledged()  # every answer the dead service had sent
    at_cut = look(svc, datasets, acknowledged, rig.verified, depot_counts=True)
    # The restarted service commits what the depot holds and serves the rest
    svc.start(timeout_s=RESTART_TIMEOUT_S)
    pool.join(240)
    poll_for(lambda: not _ready_files(svc), 60, "the depot's ready files to be committed")
    after = look(svc, datasets, pool.acknowledged(), rig.verified, depot_counts=False)
    served_again = len(pool.acknowledged() - acknowledged)
    assert served_again > 0, "the restarted service acknowledged nothing"
    for batch in batches:
        for instance in batch:
            instance.path.unlink()
    return at_cut, after, served_again


def _ready_files(svc: Service) -> list[str]:
    return [name for name in os.listdir(svc.depot_dir) if depotfiles.uid_of_ready(name)]
