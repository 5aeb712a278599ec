"""Check that every instance sent arrived intact: a benchmark that does not
check the data measures nothing.

A stored copy is correct when the server's output directory holds exactly one
file per sent SOP Instance UID, named the server's way, and the bytes after
its file meta information equal the source's (by SHA-256). Servers may write
their own file meta (DCMTK and the pynetdicom app do) but must keep the
dataset. Missing, extra or different files fail the run.
"""

from __future__ import annotations

import time

from bench.data import Workload, dataset_sha256
from bench.servers import Server

VISIBLE_TIMEOUT_S = 120.0


class VerificationError(Exception):
    """What a server stored is not what was sent."""


def wait_visible(server: Server, workload: Workload, timeout_s: float = VISIBLE_TIMEOUT_S) -> float:
    """Seconds until all UIDs are visible (storscp commits after Success)."""
    start = time.monotonic()
    expected = {i.uid for i in workload.instances}
    while True:
        if server.visible(expected):
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            return float("inf")
        time.sleep(0.01)


def verify(server: Server, workload: Workload) -> list[str]:
    """Problems found (empty: every instance is there, byte-identical in its dataset)."""
    expected = workload.by_uid()
    stored = server.stored_files()
    problems = []
    missing = sorted(expected.keys() - stored.keys())
    extra = sorted(stored.keys() - expected.keys())
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if extra:
        problems.append(f"{len(extra)} unexpected files, e.g. {stored[extra[0]]}")
    for uid, path in sorted(stored.items()):
        source = expected.get(uid)
        if source is None:
            continue
        try:
            digest = dataset_sha256(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: unreadable: {exc}")
            continue
        if digest != source.dataset_sha256:
            problems.append(f"{path}: dataset differs from {source.path}")
    return problems
