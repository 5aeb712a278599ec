from __future__ import annotations

from storscp import bus
from storscp.logger.lines import cut_line, format_event, parse_line


def test_plain_and_quoted_values_round_trip() -> None:
    event = bus.Event(
        bus.EventType.ASSOCIATION,
        "receiver",
        {"state": "accepted", "calling_ae": "MY SCU", "n": 5, "ok": True, "empty": ""},
        time="2026-11-27T10:00:00.000+01:00",
    )
    line = format_event(event)
    assert line == (
        "2026-11-27T10:00:00.000+01:00 ASSOCIATION proc=receiver state=accepted"
        ' calling_ae="MY SCU" n=5 ok=true empty=""\n'
    )
    parsed = parse_line(line)
    assert parsed is not None
    assert parsed.fields == {
        "proc": "receiver",
        "state": "accepted",
        "calling_ae": "MY SCU",
        "n": "5",
        "ok": "true",
        "empty": "",
    }


def test_hostile_ae_title_cannot_split_or_forge_a_line() -> None:
    hostile = 'X\n2026-01-01T00:00:00+00:00 WRITE proc=committer path="/etc" \\'
    event = bus.Event(bus.EventType.ASSOCIATION, "receiver", {"calling_ae": hostile, "k=v": "a=b"})
    line = format_event(event)
    assert line.count("\n") == 1 and line.endswith("\n")
    parsed = parse_line(line)
    assert parsed is not None and parsed.type == "ASSOCIATION"
    assert parsed["calling_ae"] == hostile
    assert parsed["k_v"] == "a=b"


def test_cut_line_marks_and_respects_utf8() -> None:
    line = ("é" * 100 + "\n").encode()
    cut = cut_line(line, 51)
    assert len(cut) <= 51 and cut.endswith(b" [cut]\n")
    cut.decode("utf-8")
