"""A sender that times every C-STORE: how long the SCU waits for each answer.

Run as a process (`python -m support.timedscu PORT SECONDS FILE...`), one
per sender, so that senders do not share a GIL with each other or with the
test. It stores the files round and round (the same UIDs again: the service
replaces them) for SECONDS or until SIGTERM, or once through with SECONDS 0,
and prints one
JSON line: how many stores, how many failed, every answer time (C-STORE,
and apart A-ASSOCIATE and A-RELEASE) with when its request was sent
(CLOCK_REALTIME, to line them up with what the test did meanwhile), the
acknowledged UIDs, every UID it tried, and for each association its local
port and whether it was accepted or its release answered.
`--per-association K` releases after K stores and opens a new association
(more ASSOCIATION events). After a failure it reconnects.

The SCU is support.rawscu: one thread, a blocking socket, the answer time
is the time from the request's first byte to the response's last. (A
pynetdicom SCU, under this load, now and then never saw a response that
had reached its socket, and waited for its DIMSE timeout.)
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydicom import dcmread

from . import dicomfiles as df
from .rawscu import EXPLICIT_LE, Aborted, RawAssociation, Rejected

ANSWER_TIMEOUT_S = 60.0


@dataclass
class Record:
    stores: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    # [sent at (time.time()), answer time in seconds] of every store
    timings: list[tuple[float, float]] = field(default_factory=list)
    # the same for every A-ASSOCIATE-RQ and A-RELEASE-RQ
    association_timings: list[tuple[float, float]] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    attempted: list[str] = field(default_factory=list)  # acknowledged or not
    # local port -> "accepted", "released" (release answered) or "refused"
    associations: dict[int, str] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.failed += 1
        if len(self.failures) < 20:
            self.failures.append(why)


@dataclass(frozen=True)
class Instance:
    uid: str
    sop_class: bytes
    dataset: bytes


class TimedSender:
    def __init__(self, port: int, per_association: int) -> None:
        self.port = port
        self.per_association = per_association
        self.record = Record()
        self.assoc: RawAssociation | None = None
        self.local_port = 0
        self.in_association = 0
        self.stop = threading.Event()

    def run(self, seconds: float, files: list[Path]) -> Record:
        instances = [self._load(path) for path in files]
        started = time.monotonic()
        while not self.stop.is_set():
            for instance in instances:
                if self.stop.is_set():
                    break
                self._store(instance)
            if time.monotonic() - started >= seconds:
                break
        self._release()
        self.record.stores = len(self.record.timings)
        return self.record

    @staticmethod
    def _load(path: Path) -> Instance:
        head = dcmread(path, stop_before_pixels=True)
        return Instance(
            str(head.SOPInstanceUID), str(head.SOPClassUID).encode(), df.dataset_bytes(path)
        )

    def _store(self, instance: Instance) -> None:
        assoc = self._association()
        if assoc is None:
            return
        sent_wall, sent = time.time(), time.monotonic()
        self.record.attempted.append(instance.uid)
        try:
            cid = assoc.context_for(df.CT)
            status: int | None = assoc.c_store(
                cid, instance.sop_class, instance.uid.encode(), instance.dataset
            ).status
        except (OSError, Aborted) as exc:  # the association died under it
            status = None
            self.record.fail(f"{type(exc).__name__}: {exc}")
        self.record.timings.append((sent_wall, time.monotonic() - sent))
        if status != 0:
            self.record.fail(f"status {status}")
            self._drop()
            return
        self.record.acknowledged.append(instance.uid)
        self.in_association += 1
        if self.per_association and self.in_association >= self.per_association:
            self._release()

    def _association(self) -> RawAssociation | None:
        if self.assoc is not None:
            return self.assoc
        try:
            assoc = RawAssociation(self.port, timeout_s=ANSWER_TIMEOUT_S)
        except OSError as exc:
            self.record.fail(f"connect: {exc}")
            return None
        port = assoc.sock.getsockname()[1]
        sent_wall, sent = time.time(), time.monotonic()
        try:
            assoc.associate(calling_ae="TIMEDSCU", contexts=((df.CT, (EXPLICIT_LE,)),))
            self.record.association_timings.append((sent_wall, time.monotonic() - sent))
        except (OSError, Aborted, Rejected) as exc:
            self.record.fail(f"association: {exc}")
            self.record.associations[port] = "refused"
            assoc.close()
            return None
        self.assoc, self.local_port, self.in_association = assoc, port, 0
        self.record.associations[port] = "accepted"
        return assoc

    def _release(self) -> None:
        if self.assoc is None:
            return
        sent_wall, sent = time.time(), time.monotonic()
        try:
            self.assoc.release()
            self.record.association_timings.append((sent_wall, time.monotonic() - sent))
            self.record.associations[self.local_port] = "released"
        except (OSError, Aborted, AssertionError) as exc:
            self.record.fail(f"release: {exc}")
        self._drop()

    def _drop(self) -> None:
        if self.assoc is not None:
            self.assoc.close()
        self.assoc = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.timedscu")
    parser.add_argument("port", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--per-association", type=int, default=0)
    args = parser.parse_args(argv)
    sender = TimedSender(args.port, args.per_association)
    signal.signal(signal.SIGTERM, lambda _signo, _frame: sender.stop.set())
    record = sender.run(args.seconds, args.files)
    print(json.dumps(asdict(record)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
