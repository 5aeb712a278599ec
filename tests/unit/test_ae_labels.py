"""Calling AE titles as label values: configured ones, a few others, then `other`."""

from __future__ import annotations

from pathlib import Path

from storscp.ae_labels import OTHER, UNKNOWN, AeLabels


def test_configured_titles_then_a_fixed_number_of_others(tmp_path: Path) -> None:
    labels = AeLabels(["CT_ROOM3", "MR_1"], tmp_path, max_others=3)
    seen = {labels(f"RANDOM{i}") for i in range(1000)}
    # Given 1000 peer-chosen titles, only the first 3 get a value of their own
    assert seen == {"RANDOM0", "RANDOM1", "RANDOM2", OTHER}
    # A configured title keeps its own value however many others came first
    assert labels("CT_ROOM3") == "CT_ROOM3" and labels("MR_1") == "MR_1"
    assert labels("RANDOM1") == "RANDOM1"
    assert labels("") == UNKNOWN


def test_the_others_are_shared_by_every_process_and_survive_a_restart(tmp_path: Path) -> None:
    # Given two receivers and a committer (three instances on one directory)
    first, second = AeLabels([], tmp_path, max_others=2), AeLabels([], tmp_path, max_others=2)
    assert first("A") == "A"
    assert second("B") == "B"
    # Then the list is full for both: a third title is `other` everywhere
    assert first("C") == OTHER and second("C") == OTHER
    # And a restarted process (a new instance) sees the same two
    restarted = AeLabels([], tmp_path, max_others=2)
    assert (restarted("B"), restarted("A"), restarted("D")) == ("B", "A", OTHER)
    assert (tmp_path / "ae_titles").read_text().splitlines() == ['"A"', '"B"']


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "ae_titles").write_bytes(b'"A"\n"B')  # a crash in the middle of an append
    labels = AeLabels([], tmp_path, max_others=2)
    assert labels("A") == "A"
    assert labels("B") == "B"
    assert labels("C") == OTHER


def test_titles_with_any_characters_are_kept_exactly(tmp_path: Path) -> None:
    # prometheus_client escapes label values; we only bound them
    odd = 'A"\\\nZ\u2028'
    assert AeLabels([], tmp_path)(odd) == odd
    assert AeLabels([], tmp_path)(odd) == odd


def test_without_a_directory_the_bound_holds_in_one_process() -> None:
    labels = AeLabels(["CONF"], None, max_others=2)
    assert [labels(t) for t in ("X", "Y", "Z", "X", "CONF")] == ["X", "Y", OTHER, "X", "CONF"]
