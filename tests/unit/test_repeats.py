"""Repeating failures: per-item backoff and a bounded rate of "still failing" reports."""

from __future__ import annotations

import itertools

from storscp.repeats import Repeats, recovered_fields, still_failing_fields


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_failure_is_said_then_retries_back_off_per_item() -> None:
    clock = Clock()
    repeats = Repeats(retry_s=2, retry_max_s=60, clock=clock)
    assert repeats.due("a") and repeats.failed("a", "EIO")
    tries = []
    for _ in range(3600):  # an hour, looked at every second
        clock.now += 1
        if repeats.due("a"):
            tries.append(clock.now - 1000)
            assert not repeats.failed("a", "EIO")  # never the first again
    # 2, 4, 8, 16, 32 s apart, then every minute
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps[:5] == [4, 8, 16, 32, 60] and set(gaps[5:]) == {60}
    assert repeats.due("b")  # another item is not held back


def test_still_failing_is_said_at_a_halving_rate_for_all_items_together() -> None:
    clock = Clock()
    repeats = Repeats(remind_s=60, remind_max_s=3600, clock=clock)
    repeats.failed("old", "EACCES")
    clock.now += 5
    repeats.failed("new", "EACCES")
    said = []
    for _ in range(6 * 3600):  # six hours
        clock.now += 1
        for key in ("old", "new"):
            if repeats.due(key):
                repeats.failed(key, "EACCES")
        reminder = repeats.reminder()
        if reminder is not None:
            said.append((clock.now - 1000, reminder))
    times = [t for t, _ in said]
    assert times[:7] == [60, 180, 420, 900, 1860, 3780, 7380]
    assert len(said) == 10  # then one an hour
    first = said[0][1]
    assert (first.key, first.others, first.reason) == ("old", 1, "EACCES")
    fields = still_failing_fields(said[-1][1])
    assert fields["state"] == "still failing" and fields["others_failing"] == 1
    assert int(str(fields["attempts"])) > 300


def test_success_ends_the_story_and_resets_the_rate() -> None:
    clock = Clock()
    repeats = Repeats(retry_s=2, remind_s=60, clock=clock)
    repeats.failed("a", "ENOSPC")
    clock.now += 2
    repeats.failed("a", "ENOSPC")
    done = repeats.succeeded("a")
    assert done is not None and done.attempts == 2
    assert recovered_fields(done)["state"] == "recovered"
    assert repeats.succeeded("a") is None and repeats.failing == {}
    clock.now += 1000
    assert repeats.reminder() is None
    # A new failure starts a new story: said at once, reminded after remind_s again.
    assert repeats.failed("a", "EIO")
    clock.now += 59
    assert repeats.reminder() is None
    clock.now += 1
    assert repeats.reminder() is not None


def test_retry_all_now_after_something_like_them_worked() -> None:
    clock = Clock()
    repeats = Repeats(retry_s=2, clock=clock)
    for key in ("a", "b"):
        repeats.failed(key, "EROFS")
        repeats.failed(key, "EROFS")
    assert not repeats.due("a") and not repeats.due("b")
    repeats.retry_all_now()
    assert repeats.due("a") and repeats.due("b")
