"""Senders that survive the service being killed under them.

Each sender is a thread with its own pynetdicom AE. It stores its instances
one C-STORE at a time, raw (STORE_SEND_CHUNKED_DATASET: the file's dataset
bytes as they are on disk), and records every instance's status: 0x0000
(acknowledged), another status, or None (no answer: the association died
under it). After a failure it reconnects, asking `port()` each time (a fresh
start may pick another port), and continues with the next instance; an
instance is never sent twice, so "sent" counts each instance once.

Each sender may bind its own source address (127.0.0.2 ...), as separate
modalities would have, to be told apart behind a load balancer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from . import dicomfiles as df

SUCCESS = 0x0000
RECONNECT_PAUSE_S = 0.2


@dataclass(frozen=True)
class Instance:
    path: Path
    uid: str


@dataclass
class SenderLog:
    """What one sender did: per-instance status, and how often it reconnected."""

    statuses: dict[str, int | None] = field(default_factory=dict)
    associations: int = 0
    error: str | None = None
    # Why an instance got no Success: an exception, or an answer without status.
    failures: dict[str, str] = field(default_factory=dict)


def make_instances(
    root: Path, senders: int, per_sender: int, seed: int = 70000
) -> list[list[Instance]]:
    """Small CT images, `per_sender` for each of `senders` senders."""
    batches: list[list[Instance]] = []
    for s in range(senders):
        batch = []
        for i in range(per_sender):
            path = root / f"s{s}_{i}.dcm"
            uid = df.make_image(path, df.CT, seed=seed + s * per_sender + i, rows=16, columns=16)
            batch.append(Instance(path, uid))
        batches.append(batch)
    return batches


class Sender(threading.Thread):
    """One SCU storing its batch, reconnecting as often as it must."""

    def __init__(
        self,
        index: int,
        batch: Sequence[Instance],
        port: Callable[[], int],
        reconnect_timeout_s: float,
        acknowledged: Callable[[], None],
        source: str | None = None,
    ) -> None:
        super().__init__(name=f"sender-{index}", daemon=True)
        self.batch = list(batch)
        self.port = port
        self.source = source
        self.reconnect_timeout_s = reconnect_timeout_s
        self.on_ack = acknowledged
        self.log = SenderLog()
        self.ae = AE(ae_title=f"CRASHSCU{index}")
        self.ae.requested_contexts = [build_context(df.CT, [ExplicitVRLittleEndian])]
        self.ae.acse_timeout = 15
        self.ae.dimse_timeout = 30
        self.ae.network_timeout = 30

    def run(self) -> None:
        assoc: Association | None = None
        try:
            for instance in self.batch:
                if assoc is None or not assoc.is_established:
                    assoc = self._connect()
                status = self._store(assoc, instance)
                self.log.statuses[instance.uid] = status
                if status != SUCCESS:
                    self.log.failures[instance.uid] = self._why(assoc, status)
                if status == SUCCESS:
                    self.on_ack()
                elif status is None:
                    assoc.abort()
                    assoc = None
            if assoc is not None and assoc.is_established:
                assoc.release()
        except Exception as exc:  # reported by the test, with the counts so far
            self.log.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ae.shutdown()

    def _connect(self) -> Association:
        deadline = time.monotonic() + self.reconnect_timeout_s
        pause = threading.Event()
        while True:
            bind = (self.source, 0) if self.source else None
            assoc = self.ae.associate(
                "127.0.0.1", self.port(), ae_title="STORSCP", bind_address=bind
            )
            if assoc.is_established:
                self.log.associations += 1
                return assoc
            if time.monotonic() > deadline:
                raise TimeoutError(f"no association for {self.reconnect_timeout_s}s")
            pause.wait(RECONNECT_PAUSE_S)  # the client's reconnect pace, not a test wait

    def _store(self, assoc: Association, instance: Instance) -> int | None:
        self._exception: str | None = None
        try:
            rsp = assoc.send_c_store(instance.path)
        except Exception as exc:  # the association died between the check and the send
            self._exception = f"{type(exc).__name__}: {exc}"
            return None
        return int(rsp.Status) if "Status" in rsp else None

    def _why(self, assoc: Association, status: int | None) -> str:
        if self._exception is not None:
            return self._exception
        if status is not None:
            return f"status 0x{status:04X}"
        state = "aborted" if assoc.is_aborted else "released" if assoc.is_released else "alive"
        return f"no answer (association {state} when checked)"


class SenderPool:
    """Several senders started together; counts acknowledgements as they come."""

    def __init__(
        self,
        batches: Sequence[Sequence[Instance]],
        port: Callable[[], int],
        reconnect_timeout_s: float = 90.0,
        sources: Sequence[str | None] = (),
    ) -> None:
        """`sources`: the source address of each sender (default: the kernel's choice)."""
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # refused connects are expected
        self._acked_changed = threading.Condition()
        self._acked = 0
        self.senders = [
            Sender(
                i,
                batch,
                port,
                reconnect_timeout_s,
                self._count_ack,
                sources[i] if i < len(sources) else None,
            )
            for i, batch in enumerate(batches)
        ]
        self.instances = {inst.uid: inst for batch in batches for inst in batch}

    def _count_ack(self) -> None:
        with self._acked_changed:
            self._acked += 1
            self._acked_changed.notify_all()

    def acknowledged_count(self) -> int:
        with self._acked_changed:
            return self._acked

    def wait_acknowledged(self, count: int, timeout_s: float) -> None:
        """Return as soon as `count` instances got Success: the answer itself wakes us."""
        with self._acked_changed:
            if self._acked_changed.wait_for(lambda: self._acked >= count, timeout_s):
                return
        errors = [f"{s.name}: {s.log.error}" for s in self.senders if s.log.error]
        raise AssertionError(f"{self._acked} of {count} acknowledged after {timeout_s}s {errors}")

    def start(self) -> SenderPool:
        for sender in self.senders:
            sender.start()
        return self

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for sender in self.senders:
            sender.join(max(0.0, deadline - time.monotonic()))
        alive = [s.name for s in self.senders if s.is_alive()]
        assert not alive, f"senders still running after {timeout_s}s: {alive}"
        errors = [f"{s.name}: {s.log.error}" for s in self.senders if s.log.error]
        assert not errors, errors

    def statuses(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for sender in self.senders:
            out.update(sender.log.statuses)
        return out

    def failures(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for sender in self.senders:
            out.update(sender.log.failures)
        return out

    def acknowledged(self) -> set[str]:
        return {uid for uid, status in self.statuses().items() if status == SUCCESS}

    def sent(self) -> int:
        return len(self.statuses())

    def associations(self) -> int:
        return sum(s.log.associations for s in self.senders)
