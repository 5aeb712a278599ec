"""The single-writer lock of a log directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storscp.logger.lock import LOCK_NAME, LogDirLocked, check_log_dir_free, lock_log_dir


def test_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    fd = lock_log_dir(tmp_path)
    try:
        with pytest.raises(LogDirLocked, match=f"pid {os.getpid()}"):
            lock_log_dir(tmp_path)
        with pytest.raises(LogDirLocked, match="is in use"):
            check_log_dir_free(tmp_path)
    finally:
        os.close(fd)
    # Released with its descriptor, as when the logger dies.
    check_log_dir_free(tmp_path)
    os.close(lock_log_dir(tmp_path))


def test_lock_writes_only_the_lock_file(tmp_path: Path) -> None:
    os.close(lock_log_dir(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_NAME]
