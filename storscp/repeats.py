"""Failures that repeat on a timer: try again less often, say so at a bounded rate.

A sweep or a periodic fsync that fails the same way every few seconds must
not write the same ERROR line every few seconds: two 250 KB log files would
lose their WRITE history within hours. `Repeats` keeps, per failing item
(a depot file, a log file), when it failed first, how often, and why:

- `due(key)`: whether to try the item now; retries back off from
  `retry_s`, doubling, up to `retry_max_s`.
- `failed(key, reason)`: True only for the item's first failure, which
  the caller reports in full at once.
- `reminder()`: at most one "still failing since ..., N attempts" for all
  items together per reminder interval, which doubles from `remind_s` up
  to `remind_max_s` while anything keeps failing.
- `succeeded(key)`: the item works again; returns what it went through,
  for a caller that reports the recovery.

Not thread-safe: each user owns its own, on the thread that retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from storscp.bus import FieldValue, now_iso


@dataclass(slots=True)
class Failing:
    """One item's failure so far."""

    since_iso: str
    since: float
    attempts: int
    reason: str
    next_try: float


@dataclass(frozen=True, slots=True)
class Reminder:
    """The oldest item still failing, and how many others fail too."""

    key: str
    since_iso: str
    attempts: int
    reason: str
    others: int


class Repeats:
    """Per-item backoff and bounded-rate reporting of repeating failures."""

    def __init__(
        self,
        *,
        retry_s: float = 2.0,
        retry_max_s: float = 60.0,
        remind_s: float = 60.0,
        remind_max_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.remind_s = remind_s
        self.remind_max_s = remind_max_s
        self.clock = clock
        self.failing: dict[str, Failing] = {}
        self._remind_interval = remind_s
        self._next_remind: float | None = None

    def due(self, key: str) -> bool:
        """Whether to try `key` now (always, unless it is failing and backing off)."""
        failing = self.failing.get(key)
        return failing is None or self.clock() >= failing.next_try

    def failed(self, key: str, reason: str) -> bool:
        """Record a failure of `key`; True if it is its first (say it now, in full)."""
        now = self.clock()
        failing = self.failing.get(key)
        if failing is None:
            self.failing[key] = Failing(now_iso(), now, 1, reason, now + self.retry_s)
            if self._next_remind is None:
                self._next_remind = now + self._remind_interval
            return True
        failing.attempts += 1
        failing.reason = reason
        backoff = self.retry_s * 2 ** min(failing.attempts - 1, 32)
        failing.next_try = now + min(backoff, self.retry_max_s)
        return False

    def succeeded(self, key: str) -> Failing | None:
        """`key` works again: forget it; what it went through if it had failed."""
        failing = self.failing.pop(key, None)
        self._reset_if_clear()
        return failing

    def forget(self, key: str) -> None:
        """`key` is gone (not failing, not working): stop tracking it."""
        self.failing.pop(key, None)
        self._reset_if_clear()

    def retry_all_now(self) -> None:
        """Something like them worked: the cause may be gone, try every item again."""
        now = self.clock()
        for failing in self.failing.values():
            failing.next_try = now

    def reminder(self) -> Reminder | None:
        """A "still failing" report if one is due now (at a halving rate), else None."""
        now = self.clock()
        if not self.failing or self._next_remind is None or now < self._next_remind:
            return None
        self._remind_interval = min(self._remind_interval * 2, self.remind_max_s)
        self._next_remind = now + self._remind_interval
        key, oldest = min(self.failing.items(), key=lambda item: item[1].since)
        return Reminder(
            key, oldest.since_iso, oldest.attempts, oldest.reason, len(self.failing) - 1
        )

    def _reset_if_clear(self) -> None:
        if not self.failing:
            self._remind_interval = self.remind_s
            self._next_remind = None


def still_failing_fields(reminder: Reminder) -> dict[str, FieldValue]:
    """The fields of an ERROR that says an item is still failing, and since when."""
    fields: dict[str, FieldValue] = {
        "state": "still failing",
        "since": reminder.since_iso,
        "attempts": reminder.attempts,
        "reason": reminder.reason,
    }
    if reminder.others:
        fields["others_failing"] = reminder.others
    return fields


def recovered_fields(failing: Failing) -> dict[str, FieldValue]:
    """The fields of an ERROR that closes a repeated failure: how long, how often, why."""
    return {
        "state": "recovered",
        "since": failing.since_iso,
        "attempts": failing.attempts,
        "reason": failing.reason,
    }
