"""Arrival tokens: strictly increasing across processes and threads, boots counted durably."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from storscp import arrival, depotfiles
from storscp.arrival import Arrival, format_token, parse_token


def take_tokens(state_dir: Path, count: int) -> list[str]:
    clock = Arrival(state_dir)
    out = []
    for _ in range(count):
        with clock.ordered():
            out.append(clock.take())
    clock.close()
    return out


def test_tokens_from_several_processes_and_threads_never_repeat_and_sort_as_taken(
    tmp_path: Path,
) -> None:
    # Given two processes and two threads taking tokens at once
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.starmap(take_tokens, [(tmp_path, 500), (tmp_path, 500)])
    clock = Arrival(tmp_path)
    mine: list[str] = []

    def worker() -> None:
        for _ in range(300):
            with clock.ordered():
                mine.append(clock.take())

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then: no token twice, each taker's tokens increase, and all share one boot number
    every = [t for r in results for t in r] + mine
    assert len(set(every)) == len(every) == 1600
    for r in results:
        assert r == sorted(r, key=depotfiles.arrival_key)
    assert mine == sorted(mine)
    assert {parse_token(t)[0] for t in every} == {clock.boot}  # type: ignore[index]
    clock.close()


def test_a_token_is_never_below_the_last_one_even_if_the_clock_lags(tmp_path: Path) -> None:
    clock = Arrival(tmp_path)
    # Given a last tick far ahead of CLOCK_MONOTONIC (left by an earlier process)
    with clock.ordered():
        first = clock.take()
    boot, tick = parse_token(first)  # type: ignore[misc]
    ahead = tick + 10**15
    (tmp_path / arrival.ARRIVAL_FILE).write_bytes(arrival._LAST.pack(boot, ahead))
    # When the next token is taken, Then it is above it
    with clock.ordered():
        assert parse_token(clock.take()) == (boot, ahead + 1)
    clock.close()


def test_the_boot_counter_grows_once_per_boot_and_survives_a_lost_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("aaaa\n")
    monkeypatch.setattr(arrival, "BOOT_ID_PATH", boot_id)
    state = tmp_path / "state"
    state.mkdir()
    assert Arrival(state).boot == 1
    assert Arrival(state).boot == 1  # same boot: same number
    boot_id.write_text("bbbb\n")  # the machine rebooted
    assert Arrival(state).boot == 2
    assert (state / arrival.BOOT_FILE).read_text() == "bbbb 2\n"
    # A lost boot file never numbers a boot below files still waiting in the depot.
    (state / arrival.BOOT_FILE).unlink()
    assert Arrival(state, seed_boot=7).boot == 8


def test_ready_names_sort_by_arrival_and_old_wall_clock_names_come_first() -> None:
    old = "1764000000000000000-12-3_1.2.ready"
    a = depotfiles.ready_name(format_token(2, 5), "1.2")
    b = depotfiles.ready_name(format_token(2, 40), "1.2")
    c = depotfiles.ready_name(format_token(3, 1), "1.2")  # next boot, clock restarted
    assert sorted([c, b, old, a], key=depotfiles.arrival_key) == [old, a, b, c]
    assert depotfiles.uid_of_ready(a) == "1.2"
