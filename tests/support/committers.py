"""A real Committer on real files, for unit tests: no sockets, events recorded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from storscp import bus, depotfiles
from storscp.arrival import Arrival
from storscp.committer.commit import Committer
from storscp.committer.studies import Studies
from storscp.config import Config
from storscp.history import History


class RecordingOutbox:
    """Collects events instead of sending them (the bus is tested elsewhere)."""

    def __init__(self) -> None:
        self.events: list[tuple[bus.EventType, dict[str, bus.FieldValue]]] = []

    def event(self, type_: bus.EventType, **fields: bus.FieldValue) -> None:
        self.events.append((type_, fields))

    def errors(self) -> list[dict[str, bus.FieldValue]]:
        return [f for t, f in self.events if t == bus.EventType.ERROR]


def make_committer(config: Config) -> Committer:
    """The committer of `config`'s node, with its depot, state, history and studies.

    Without the metrics endpoint: its shared files live in a run_dir the
    service would have prepared.
    """
    config = replace(config, metrics="")
    config.depot_dir.mkdir(parents=True, exist_ok=True)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    clock = Arrival(config.state_dir)
    history = History(config.state_dir)
    boot, tick = clock.now()
    studies = Studies(config.study_quiet_s, history.open_studies(), boot, tick)
    return Committer(config, RecordingOutbox(), history, clock, studies)  # type: ignore[arg-type]


def close(committer: Committer) -> None:
    committer.close()
    committer.history.close()
    committer.arrival.close()


def put_ready(arrival: Arrival, depot: Path, source: Path, uid: str, token: str = "") -> str:
    """A ready file as a receiver makes it: token and rename under the arrival lock."""
    with arrival.ordered():
        name = depotfiles.ready_name(token or arrival.take(), uid)
        (depot / name).write_bytes(source.read_bytes())
    return name


def recorded(committer: Committer) -> RecordingOutbox:
    outbox = committer.outbox
    assert isinstance(outbox, RecordingOutbox)
    return outbox
