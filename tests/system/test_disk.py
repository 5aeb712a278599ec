"""Full disks and read-only storage: a clear status, nothing partial, and recovery."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import dicomfiles as df
from support.rawscu import EXPLICIT_LE, RawAssociation, minimal_dataset
from support.service import Service, poll_for

CT = df.CT.encode()

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def small_tmpfs(short_tmp: Path) -> Iterator[Path]:
    """A 3 MiB filesystem for the storage directory."""
    target = short_tmp / "tmpfs"
    target.mkdir()
    mount("-t", "tmpfs", "-o", "size=3m,mode=0750", "tmpfs", str(target))
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def store(svc: Service, uid: bytes, payload_bytes: int) -> tuple[int, str]:
    with RawAssociation(svc.port) as assoc:
        assoc.associate(contexts=[(df.CT, [EXPLICIT_LE])])
        rsp = assoc.c_store(
            assoc.context_for(df.CT), CT, uid, minimal_dataset(CT, uid, b"p" * payload_bytes)
        )
        assoc.release()
    return rsp.status, rsp.comment


def test_disk_full_gives_a700_removes_the_partial_and_recovers(
    service_factory: type[Service], small_tmpfs: Path
) -> None:
    svc = service_factory(storage_dir=str(small_tmpfs), min_free_bytes=0, receivers=1)
    svc.storage_dir = small_tmpfs
    svc.start()
    # When an instance does not fit ...
    status, comment = store(svc, b"1.2.3.1", 4 * 1024 * 1024)
    assert status == 0xA700, (hex(status), comment)
    assert "No space left" in comment or "cannot write" in comment
    svc.wait_event("ERROR", what="C-STORE failed", status="0xA700")
    # ... the partial file is gone at once, and a fitting instance is stored.
    assert svc.depot_entries() == []
    assert store(svc, b"1.2.3.2", 100_000)[0] == 0
    svc.wait_stored(["1.2.3.2"])


def test_min_free_bytes_refuses_before_the_disk_is_full(
    service_factory: type[Service], small_tmpfs: Path
) -> None:
    svc = service_factory(storage_dir=str(small_tmpfs), min_free_bytes=1024 * 1024, receivers=1)
    svc.storage_dir = small_tmpfs
    svc.start()
    assert store(svc, b"1.2.3.10", 2300 * 1024)[0] == 0  # leaves < 1 MiB free
    svc.wait_stored(["1.2.3.10"])
    status, comment = store(svc, b"1.2.3.11", 1000)
    assert status == 0xA700 and "min_free_bytes" in comment
    # Given the admin frees space, the next store succeeds without a restart.
    svc.stored_path("1.2.3.10").unlink()
    assert store(svc, b"1.2.3.12", 1000)[0] == 0
    svc.wait_stored(["1.2.3.12"])


def test_read_only_depot_at_runtime_fails_cleanly_and_recovers(
    service_factory: type[Service],
) -> None:
    svc = service_factory(receivers=1).start()
    depot = str(svc.depot_dir)
    mount("--bind", depot, depot)
    try:
        mount("-o", "remount,ro,bind", depot)
        status, comment = store(svc, b"1.2.3.20", 1000)
        assert status in (0xA700, 0x0110), (hex(status), comment)
        svc.wait_event("ERROR", what="C-STORE failed")
        assert not svc.stored_path("1.2.3.20").exists()
    finally:
        subprocess.run(["umount", depot], check=True, capture_output=True)
    # Writable again: the service recovers by itself; leftovers are swept.
    assert store(svc, b"1.2.3.21", 1000)[0] == 0
    svc.wait_stored(["1.2.3.21"])
    poll_for(lambda: svc.depot_entries() == [], 30, "the depot to be swept")
