"""The health verdict of /healthz and `storscp status`, rule by rule."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from storscp.metrics.health import BACKLOG_STUCK_S, Facts, verdict

NOW = 1_800_000_000.0

HEALTHY = Facts(
    now=NOW,
    heartbeats={"receiver": NOW - 1, "committer": NOW - 0.2, "logger": NOW - 0.5},
    ready_files=3,
    oldest_ready_age_s=0.01,
    storage_dir=Path("/srv/dicom"),
    free_bytes=10**9,
    min_free_bytes=16 * 1024 * 1024,
)


def test_healthy_when_every_check_passes() -> None:
    result = verdict(HEALTHY)
    assert result.ok and result.reason == "ok" and not result.failing


@pytest.mark.parametrize(
    ("change", "check", "words"),
    [
        ({"heartbeats": {"committer": NOW, "logger": NOW}}, "receiver", "not running"),
        (
            {"heartbeats": {"receiver": 0, "committer": NOW, "logger": NOW}},
            "receiver",
            "not running",
        ),
        (
            {"heartbeats": {"receiver": NOW - 9, "committer": NOW, "logger": NOW}},
            "receiver",
            "no heartbeat for 9s",
        ),
        (
            {"heartbeats": {"receiver": NOW, "committer": 0, "logger": NOW}, "ready_files": 40},
            "committer",
            "committer not committing: not running; 40 ready files waiting",
        ),
        (
            {"ready_files": 2, "oldest_ready_age_s": BACKLOG_STUCK_S + 1},
            "committer",
            "committer stuck: 2 ready files waiting, oldest 31s",
        ),
        ({"free_bytes": 1000}, "storage", "1000 bytes free, below min_free_bytes=16777216"),
        ({"free_bytes": None}, "storage", "cannot read its free space"),
        (
            {"heartbeats": {"receiver": NOW, "committer": NOW, "logger": NOW - 60}},
            "logger",
            "logger not writing: no heartbeat for 60s",
        ),
    ],
)
def test_each_failing_check_is_named_in_one_line(
    change: dict[str, object], check: str, words: str
) -> None:
    result = verdict(replace(HEALTHY, **change))  # type: ignore[arg-type]
    assert not result.ok
    assert list(result.failing) == [check]
    assert words in result.reason and "\n" not in result.reason


def test_several_failures_share_the_line() -> None:
    result = verdict(replace(HEALTHY, heartbeats={}, free_bytes=0))
    assert list(result.failing) == ["receiver", "committer", "storage", "logger"]
    assert result.reason.count("; ") >= 3


def test_an_empty_backlog_is_never_stuck() -> None:
    assert verdict(replace(HEALTHY, ready_files=0, oldest_ready_age_s=0)).ok
