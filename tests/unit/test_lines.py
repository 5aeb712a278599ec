"""Formatting events into lines: injection, cutting, parsing back."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from storscp import bus
from storscp.logger.lines import cut_line, encode_event, format_event, format_key, parse_line


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


def test_issue_10_a_trailing_newline_is_escaped_in_proc_values_and_the_time() -> None:
    # Given values that are plain ASCII up to a trailing newline ("$" matches before it)
    event = bus.Event(
        bus.EventType.WRITE, "0\n", {"path": "/x\n", "n": "1"}, time="2026-11-27T10:00:00+00:00\n"
    )
    # When formatted, then the line is one line and every value reads back as sent
    line = format_event(event)
    assert line.count("\n") == 1, line
    parsed = parse_line(line)
    assert parsed is not None and parsed.type == "WRITE"
    assert (parsed["proc"], parsed["path"], parsed["n"]) == ("0\n", "/x\n", "1")
    assert "\n" not in parsed.time


def test_cut_line_marks_and_respects_utf8() -> None:
    line = ("é" * 100 + "\n").encode()
    cut = cut_line(line, 51)
    assert len(cut) <= 51 and cut.endswith(b" cut=true\n")
    cut.decode("utf-8")


HOSTILE = [
    "A\nB",
    "A\rB",
    "A\u2028B\u2029C",
    "A\x85B",
    "A\x00B\x1b[2J",
    "A\u202eB",  # right-to-left override: would reorder the line on a terminal
    "A\ud800B",  # lone surrogate: not encodable as UTF-8 unless escaped
    'A" WRITE proc=committer path="/etc/passwd',
    "\\",
    "",
    " ",
]


def test_every_hostile_value_stays_on_one_parseable_line() -> None:
    for value in HOSTILE:
        event = bus.Event(bus.EventType.ASSOCIATION, "receiver", {"calling_ae": value, "n": 1})
        line = format_event(event)
        raw = line.encode("utf-8")  # a lone surrogate would raise here
        assert raw.count(b"\n") == 1 and raw.endswith(b"\n"), value
        assert len(line.splitlines()) == 1, value
        parsed = parse_line(line)
        assert parsed is not None and parsed.type == "ASSOCIATION", value
        assert parsed.fields == {"proc": "receiver", "calling_ae": value, "n": "1"}, value


def test_ae_title_with_quotes_and_equals_round_trips() -> None:
    event = bus.Event(bus.EventType.ASSOCIATION, "receiver", {"calling_ae": 'K=V "Q"', "x": "y"})
    line = format_event(event)
    assert 'calling_ae="K=V \\"Q\\"" x=y' in line
    parsed = parse_line(line)
    assert parsed is not None and parsed.fields["calling_ae"] == 'K=V "Q"'
    assert parsed.fields["x"] == "y"


def test_a_sender_time_that_is_not_iso_8601_is_replaced() -> None:
    for bad in ("x", "2026-11-27T10:00:00", "2026-11-27T10:00:00+00:00 WRITE", "9" * 100):
        line = format_event(bus.Event(bus.EventType.ERROR, "receiver", {}, time=bad))
        parsed = parse_line(line)
        assert parsed is not None and parsed.type == "ERROR"
        assert datetime.fromisoformat(parsed.time).tzinfo is not None


def test_over_long_event_is_cut_field_by_field_and_still_parses() -> None:
    reason = "é" * 3000
    event = bus.Event(
        bus.EventType.ERROR,
        "receiver",
        {"what": "C-STORE failed", "reason": reason, "sop_instance_uid": "1.2.3"},
    )
    line = encode_event(event, 1024)
    assert len(line) <= 1024 and line.endswith(b" cut=true\n")
    parsed = parse_line(line.decode("utf-8"))
    assert parsed is not None and parsed.type == "ERROR"
    assert parsed["what"] == "C-STORE failed" and parsed["sop_instance_uid"] == "1.2.3"
    assert reason.startswith(parsed["reason"]) and len(parsed["reason"]) > 300
    assert parsed["cut"] == "true"


def test_event_with_thousands_of_fields_is_cut_to_the_limit() -> None:
    fields: dict[str, bus.FieldValue] = {f"k{i}": "v" * 50 for i in range(5000)}
    line = encode_event(bus.Event(bus.EventType.WRITE, "committer", fields), 2048)
    assert len(line) <= 2048 and line.endswith(b" cut=true\n")
    parsed = parse_line(line.decode("utf-8"))
    assert parsed is not None and parsed.type == "WRITE" and parsed["proc"] == "committer"


def test_short_event_is_not_cut() -> None:
    event = bus.Event(bus.EventType.WRITE, "committer", {"a": 1}, time="2026-11-27T10:00:00+00:00")
    assert encode_event(event, 1024) == format_event(event).encode()


def test_the_event_id_follows_proc_and_a_field_cannot_fake_it() -> None:
    event = bus.Event(
        bus.EventType.WRITE,
        "committer",
        {"ev": "1-00000000:999", "path": "/s/1.2.dcm"},
        time="2026-11-27T10:00:00.000+01:00",
    )
    assert format_event(event, "3311-7f3a9c21:1234") == (
        "2026-11-27T10:00:00.000+01:00 WRITE proc=committer ev=3311-7f3a9c21:1234 path=/s/1.2.dcm\n"
    )
    assert " ev=" not in format_event(event)


def test_a_cut_line_keeps_its_event_id_whole() -> None:
    event_id = "4294967295-7f3a9c21:18446744073709551615"  # the longest there can be
    fields: dict[str, bus.FieldValue] = {f"k{i}": "v" * 50 for i in range(100)}
    fields["reason"] = "r" * 5000
    line = encode_event(bus.Event(bus.EventType.ERROR, "x" * 40, fields), 1024, event_id)
    assert len(line) <= 1024 and line.endswith(b" cut=true\n")
    parsed = parse_line(line.decode("utf-8"))
    assert parsed is not None and parsed["ev"] == event_id


def test_parse_line_survives_a_line_cut_inside_an_escape() -> None:
    for text in ('T E a="\\u12', 'T E a="\\x', 'T E a="\\U0011ffff" b=c', 'T E a="\\'):
        parsed = parse_line(text)
        assert parsed is not None and parsed.type == "E"


@given(
    st.dictionaries(st.text(max_size=20), st.one_of(st.text(), st.integers(), st.none())),
    st.text(max_size=30),
)
@settings(max_examples=200, deadline=None)
def test_any_event_is_one_line_that_parses_back(
    fields: dict[str, bus.FieldValue], proc: str
) -> None:
    event = bus.Event(bus.EventType.WRITE, proc, fields)
    line = format_event(event)
    assert line.encode("utf-8").count(b"\n") == 1 and len(line.splitlines()) == 1
    parsed = parse_line(line)
    assert parsed is not None and parsed.type == "WRITE" and parsed["proc"] == proc
    written = Counter(format_key(k) for k in fields)
    for key, value in fields.items():
        if key not in ("proc", "ev") and format_key(key) == key and written[key] == 1:
            assert parsed[key] == ("" if value is None else str(value))
    cut = encode_event(event, 1024)
    assert len(cut) <= 1024 and cut.count(b"\n") == 1
    reparsed = parse_line(cut.decode("utf-8"))
    assert reparsed is not None and reparsed.type == "WRITE"
