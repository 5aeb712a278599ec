from __future__ import annotations

import os

import pytest

from storscp import bus


def test_instance_stored_round_trips() -> None:
    msg = bus.InstanceStored("t_1.2.ready", "1.2", "1.2.840", "1.2.840.10008.1.2.1", 1234, "AE 1")
    assert bus.decode(bus.encode(msg)) == msg


def test_instance_stored_is_a_versioned_binary_record_with_every_field() -> None:
    msg = bus.InstanceStored(
        "0001.000000000000000001.000001_1.2.3.ready",
        "1.2.3",
        "1.2.840",
        "1.2.840.10008.1.2",
        2**40,
        "ÄE \x00",
        "1.2.9",
        "1.2.9.1",
        "CT",
    )
    kind, payload = bus.encode(msg)
    assert kind == b"stored" and payload[0] == bus.STORED_VERSION
    assert bus.decode([kind, payload]) == msg


def _stored(version: int = 1, size: int = 5, strings: tuple[bytes, ...] = (b"a",) * 8) -> bytes:
    body = b"".join(len(s).to_bytes(4, "little") + s for s in strings)
    return bytes([version]) + size.to_bytes(8, "little", signed=True) + body


def test_event_round_trips_with_unicode_and_control_characters() -> None:
    msg = bus.Event(bus.EventType.ERROR, "receiver", {"reason": 'bad\nline "é"', "n": 3})
    assert bus.decode(bus.encode(msg)) == msg


@pytest.mark.parametrize(
    "frames",
    [
        [b"stored"],
        [b"stored", b"\xff\xfe"],
        [b"stored", b"[]"],
        [b"stored", b'{"v": 99}'],
        [b"stored", b'{"v": 1, "depot_name": 3}'],
        [b"stored", _stored()[:-1]],
        [b"stored", _stored() + b"x"],
        [b"stored", _stored(version=2)],
        [b"stored", _stored(strings=(b"a",) * 7 + (b"\xff",))],
        [b"stored", _stored(strings=(b"a",) * 7)],
        [b"event", b'{"v": 1, "type": "NOPE", "proc": "x", "fields": {}, "time": "t"}'],
        [b"pickle", b'{"v": 1}'],
        [b"event", b'{"v": 1, "type": "WRITE", "proc": 7, "fields": {}, "time": "t"}'],
        [b"event", b'{"v": 1, "type": "WRITE", "proc": "x", "fields": {}, "time": []}'],
        [b"event", b'{"v": 1, "type": "WRITE", "proc": "x", "fields": [], "time": "t"}'],
        [b"event", b'{"v": 1, "type": "WRITE", "proc": "x", "fields": {"a": {}}, "time": "t"}'],
        [b"event", b'{"v": 1, "type": "WRITE", "proc": "x", "fields": {}, "extra": 1}'],
    ],
)
def test_malformed_frames_raise_bus_error_and_keep_them(frames: list[bytes]) -> None:
    with pytest.raises(bus.BusError) as info:
        bus.decode(frames)
    assert info.value.frames == frames


COMMITMENT_MESSAGES = [
    bus.CommitmentRequested("1.2.3.request"),
    bus.ReportOffered(
        "1.2.3.request", 7, "1.2.3", [["1.2.840", "1.2.9.1"]], [["1.2.840", "1.2.9.2"]], [0x0112]
    ),
    bus.ReportOffered("1.2.3~t.request", 1, "1.2.3", [], [], []),
    bus.ReportOutcome("1.2.3.request", bus.Outcome.DECLINED, "association ended"),
    bus.ReportOutcome("1.2.3.request", bus.Outcome.DELIVERED),
]


@pytest.mark.parametrize("msg", COMMITMENT_MESSAGES)
def test_commitment_messages_round_trip(msg: bus.Message) -> None:
    assert bus.decode(bus.encode(msg)) == msg


def test_event_sent_round_trips_in_two_frames() -> None:
    event = bus.Event(bus.EventType.WRITE, "committer", {"path": "/s/1.2.dcm", "bytes": 3})
    msg = bus.EventSent(seq=7, floor=5, event=event)
    frames = bus.encode(msg)
    assert len(frames) == 2 and frames[0] == b"sent"
    assert frames == bus.event_frames(bus.event_body(event), 7, 5)
    assert bus.decode(frames) == msg


def test_ack_round_trips() -> None:
    assert bus.decode(bus.encode(bus.Ack(12345))) == bus.Ack(12345)


@pytest.mark.parametrize(
    "frames",
    [
        [b"sc-requested", b'{"v": 1, "request_name": 5}'],
        [b"sc-requested", b'{"v": 1}'],
        [b"sc-outcome", b'{"v": 1, "request_name": "x", "outcome": "maybe"}'],
        [b"sc-outcome", b'{"v": 1, "request_name": "x", "outcome": "delivered", "reason": 1}'],
        [
            b"sc-offered",
            b'{"v": 1, "request_name": "x", "association_id": "7", "transaction_uid": "1",'
            b' "committed": [], "failed": [], "reasons": []}',
        ],
        [
            b"sc-offered",
            b'{"v": 1, "request_name": "x", "association_id": 7, "transaction_uid": "1",'
            b' "committed": [["1"]], "failed": [], "reasons": []}',
        ],
        [
            b"sc-offered",
            b'{"v": 1, "request_name": "x", "association_id": 7, "transaction_uid": "1",'
            b' "committed": [], "failed": [["1", "2"]], "reasons": []}',
        ],
        [
            b"sc-offered",
            b'{"v": 1, "request_name": "x", "association_id": 7, "transaction_uid": "1",'
            b' "committed": [], "failed": [["1", "2"]], "reasons": [true]}',
        ],
    ],
)
def test_malformed_commitment_messages_raise_bus_error(frames: list[bytes]) -> None:
    with pytest.raises(bus.BusError):
        bus.decode(frames)


@pytest.mark.parametrize(
    "frames",
    [
        [b"sent", b"\x01short"],
        [b"sent", bus.EVENT_HEADER.pack(2, 1, 1) + b"{}"],  # unknown header version
        [b"sent", bus.EVENT_HEADER.pack(1, 3, 4) + b"{}"],  # floor above seq
        [b"sent", bus.EVENT_HEADER.pack(1, 0, 0) + b"{}"],  # seq 0
        [b"sent", bus.EVENT_HEADER.pack(1, 1, 1) + b"\xff"],
        [b"sent", bus.EVENT_HEADER.pack(1, 1, 1)],
        [b"sent", bus.EVENT_HEADER.pack(1, 1, 1), b'{"v": 1}'],
        [b"ack", b'{"v": 1, "seq": -1}'],
        [b"ack", b'{"v": 1, "seq": true}'],
        [b"ack", b'{"v": 1}'],
    ],
)
def test_malformed_event_sent_and_ack_raise_bus_error(frames: list[bytes]) -> None:
    with pytest.raises(bus.BusError) as info:
        bus.decode(frames)
    assert info.value.frames == frames


def test_an_origin_is_pid_and_random_part_and_nothing_else_passes_for_one() -> None:
    origin = bus.new_origin()
    pid, _, random_part = origin.partition("-")
    assert pid == str(os.getpid()) and len(random_part) == 8
    assert bus.new_origin() != origin  # a second incarnation of the same pid differs
    assert bus.origin_of(origin.encode()) == origin
    for bad in (b"\x00k\x8b\x45\x67", b"12-ABCDEF01", b"12-abcdef0", b"-abcdef01", b"1-abcdef01 "):
        assert bus.origin_of(bad) is None
