from __future__ import annotations

import pytest

from storscp import bus


def test_instance_stored_round_trips() -> None:
    msg = bus.InstanceStored("t_1.2.ready", "1.2", "1.2.840", "1.2.840.10008.1.2.1", 1234, "AE 1")
    assert bus.decode(bus.encode(msg)) == msg


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
