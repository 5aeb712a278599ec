"""Group commit of the depot directory's fsync (storscp/receiver/dirsync.py), on real files."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from storscp.receiver.dirsync import DirectorySync

THREADS = 8
RENAMES = 100


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_one_thread_alone_fsyncs_once_per_rename(tmp_path: Path, dir_fd: int) -> None:
    sync = DirectorySync(dir_fd)
    for n in range(3):
        (tmp_path / f"{n}.part").touch()
        os.rename(tmp_path / f"{n}.part", tmp_path / f"{n}.ready")
        sync.sync(sync.renamed())
    assert sync.fsyncs == 3


def test_concurrent_renames_share_fsyncs_and_each_waits_for_one_that_covers_it(
    tmp_path: Path, dir_fd: int
) -> None:
    # Given 8 threads that each rename 100 files and wait until their rename is durable
    sync = DirectorySync(dir_fd)
    durable_after: list[tuple[int, int]] = []  # (ticket, fsyncs completed when it returned)
    lock = threading.Lock()

    def work(t: int) -> None:
        for n in range(RENAMES):
            part = tmp_path / f"{t}-{n}.part"
            part.touch()
            os.rename(part, tmp_path / f"{t}-{n}.ready")
            ticket = sync.renamed()
            sync.sync(ticket)
            with lock:
                durable_after.append((ticket, sync.fsyncs))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then every rename was answered, with fewer fsyncs than renames
    assert len(durable_after) == THREADS * RENAMES
    assert 0 < sync.fsyncs < THREADS * RENAMES
    # and none returned before an fsync had run since its ticket was taken
    assert all(fsyncs >= 1 for _, fsyncs in durable_after)


def test_a_failed_fsync_fails_every_rename_it_was_to_cover_even_after_a_later_success(
    tmp_path: Path,
) -> None:
    # Given a directory fd whose fsync fails (EINVAL on /proc: the fault a failing disk gives)
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    good = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sync = DirectorySync(fd)
        first = sync.renamed()
        with pytest.raises(OSError):
            sync.sync(first)
        # When the same fd number now names a directory whose fsync works
        os.dup2(good, fd)
        second = sync.renamed()
        sync.sync(second)
        # Then the later rename is durable, the earlier one still not
        with pytest.raises(OSError):
            sync.sync(first)
        assert sync.fsyncs == 2
    finally:
        os.close(fd)
        os.close(good)


def test_waiters_on_a_failing_directory_all_get_the_error(tmp_path: Path) -> None:
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    sync = DirectorySync(fd)
    outcomes: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            try:
                sync.sync(sync.renamed())
                result = "durable"
            except OSError:
                result = "failed"
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=work) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        os.close(fd)
    assert outcomes == ["failed"] * 80
