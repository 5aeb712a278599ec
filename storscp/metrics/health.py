"""The health verdict: what `GET /healthz` and `storscp status` say.

Healthy means all four: a receiver accepts associations, the committer is
committing and its backlog is not stuck, the storage filesystem has at least
`min_free_bytes` free, and the logger is writing. The facts come from the
components' heartbeats (instruments.Heartbeat, read from their metric files)
and from the depot and the filesystem, looked at now. A pure function of
them, so each rule has a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from storscp.instruments import HEARTBEAT_STALE_S

# A ready file waiting this long while the committer beats: it is stuck (a
# healthy one commits within milliseconds; the bus is only the doorbell, the
# sweep finds what it missed within depot_scan_interval_s).
BACKLOG_STUCK_S = 30.0

CHECKS = ("receiver", "committer", "storage", "logger")


@dataclass(frozen=True, slots=True)
class Facts:
    """What the serving process knows at one instant (times are Unix seconds)."""

    now: float
    # component -> last beat of its live processes (0: stopping); absent: none alive
    heartbeats: dict[str, float]
    ready_files: int
    oldest_ready_age_s: float
    storage_dir: Path
    free_bytes: int | None  # None: statvfs failed
    min_free_bytes: int
    depot_scan_interval_s: float = 2.0


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str  # one line: "ok", or every failing check joined by "; "
    failing: dict[str, str] = field(default_factory=dict)  # check -> reason


def verdict(facts: Facts) -> Verdict:
    failing: dict[str, str] = {}
    silence = _silence("receiver", facts)
    if silence:
        failing["receiver"] = f"receiver not accepting associations: {silence}"
    backlog = f"{facts.ready_files} ready files waiting, oldest {facts.oldest_ready_age_s:.0f}s"
    silence = _silence("committer", facts)
    stuck_after_s = max(BACKLOG_STUCK_S, 3 * facts.depot_scan_interval_s)
    if silence:
        failing["committer"] = f"committer not committing: {silence}; {backlog}"
    elif facts.ready_files and facts.oldest_ready_age_s > stuck_after_s:
        failing["committer"] = f"committer stuck: {backlog}"
    if facts.free_bytes is None:
        failing["storage"] = f"storage_dir {facts.storage_dir}: cannot read its free space"
    elif facts.free_bytes < facts.min_free_bytes:
        failing["storage"] = (
            f"storage_dir {facts.storage_dir}: {facts.free_bytes} bytes free,"
            f" below min_free_bytes={facts.min_free_bytes}"
        )
    silence = _silence("logger", facts)
    if silence:
        failing["logger"] = f"logger not writing: {silence}"
    if not failing:
        return Verdict(True, "ok")
    return Verdict(False, "; ".join(failing.values()), failing)


def _silence(component: str, facts: Facts) -> str:
    """Why `component`'s heartbeat does not count as alive, or ''."""
    beat = facts.heartbeats.get(component)
    if not beat:
        return "not running"
    age = facts.now - beat
    if age > HEARTBEAT_STALE_S:
        return f"no heartbeat for {age:.0f}s"
    return ""
