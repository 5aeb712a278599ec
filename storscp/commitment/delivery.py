"""Every pending request, from the check to a delivered report: the commitment process's state.

One `Job` per request file, in one of these states:

    NEW        waiting for a free checker thread
    CHECKING   the check runs on a worker thread
    OFFERED    offered to the receiver holding the association that asked;
               it answers at once: accepted (sending) or declined
    ON_SAME    accepted: the receiver is sending it on that association
    DUE        waiting for an attempt on a new association at `due`
    SENDING    that attempt runs on a worker thread

Delivered: the file moves to `done/`. Past `commitment_deadline_s` the
request is given up (an ERROR naming the transaction) and moves there too.
The main thread owns this state and every socket; worker threads (bounded)
only compute, and hand their result back through a queue and a wake-up
pipe that the main loop polls beside its ZeroMQ socket.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from storscp import bus
from storscp.commitment.check import check_references
from storscp.commitment.outbound import Attempt, send_report
from storscp.commitmentfiles import CommitmentRequest, RequestFileError, RequestStore
from storscp.commitmentinfo import Failure, FailureReason, Report
from storscp.config import Config, RemoteAE
from storscp.outbox import Outbox

log = logging.getLogger(__name__)

# The receiver answers an offer from its mail thread, at once.
OFFER_ACK_S = 2.0
MAX_CHECKS = 2
MAX_SENDS = 4


class State(Enum):
    NEW = "new"
    CHECKING = "checking"
    OFFERED = "offered"
    ON_SAME = "on_same"
    DUE = "due"
    SENDING = "sending"


@dataclass(slots=True)
class Job:
    name: str
    request: CommitmentRequest
    state: State = State.NEW
    report: Report | None = None
    due: float = 0.0  # monotonic
    attempts: int = 0
    last_reason: str = ""
    started: float = field(default_factory=time.monotonic)


def find_remote(config: Config, request: CommitmentRequest) -> RemoteAE | None:
    """Where the report of `request` goes: a `[[remote_ae]]` with storage_commitment
    for its AE title, the one naming the address it asked from if there is one."""
    tables = [
        r for r in config.remote_ae if r.ae_title == request.calling_ae and r.storage_commitment
    ]
    peer_host = request.peer.rsplit(":", 1)[0].strip("[]")
    for remote in tables:
        if remote.host == peer_host:
            return remote
    return tables[0] if tables else None


def retry_delay(config: Config, attempts: int) -> float:
    """Seconds before attempt `attempts + 1`: commitment_retry_s doubling up to the max."""
    return float(
        min(config.commitment_retry_s * 2 ** max(0, attempts - 1), config.commitment_retry_max_s)
    )


def offer_message(job: Job) -> bus.ReportOffered:
    assert job.report is not None
    report = job.report
    return bus.ReportOffered(
        request_name=job.name,
        association_id=job.request.association_id,
        transaction_uid=report.transaction_uid,
        committed=[list(ref) for ref in report.committed],
        failed=[[f.sop_class_uid, f.sop_instance_uid] for f in report.failed],
        reasons=[int(f.reason) for f in report.failed],
    )


class Deliveries:
    """The pending requests of this node and what is being done about each."""

    def __init__(
        self,
        config: Config,
        store: RequestStore,
        outbox: Outbox,
        send_offer: Callable[[str, bus.ReportOffered], bool],
        supported_classes: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        """`send_offer(endpoint, msg)` queues an offer to a receiver; False if it cannot.

        `supported_classes()` names the SOP classes we store (called by a check).
        """
        self.config = config
        self.store = store
        self.outbox = outbox
        self.send_offer = send_offer
        self.supported_classes = supported_classes
        self.jobs: dict[str, Job] = {}
        self._results: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.wake_fd, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._checks = 0
        self._sends = 0

    def close(self) -> None:
        os.close(self.wake_fd)
        os.close(self._wake_w)

    # -- new requests ---------------------------------------------------------

    def scan(self) -> int:
        """Take up every pending request file not known yet; returns how many."""
        found = 0
        for name in self.store.pending():
            if name not in self.jobs:
                found += self.requested(name)
        return found

    def requested(self, name: str) -> int:
        """A request file to take up (the receiver's doorbell or a scan)."""
        if name in self.jobs or not self.store.exists(name):
            return 0
        try:
            request = self.store.load(name)
        except RequestFileError as exc:
            self.store.finish(name, ".bad")
            self.outbox.event(
                bus.EventType.ERROR,
                what="commitment request unreadable",
                request_file=name,
                reason=str(exc),
            )
            return 0
        self.jobs[name] = Job(name, request)
        self._start_checks()
        return 1

    def _start_checks(self) -> None:
        for job in list(self.jobs.values()):
            if self._checks >= MAX_CHECKS:
                return
            if job.state is State.NEW:
                job.state = State.CHECKING
                self._checks += 1
                self._spawn(job.name, "check", functools.partial(self._check, job.request))

    def _check(self, request: CommitmentRequest) -> Report:
        if request.duplicate:
            reason = FailureReason.DUPLICATE_TRANSACTION_UID
            failed = tuple(Failure(c, i, reason) for c, i in request.references)
            return Report(request.transaction_uid, (), failed)
        result = check_references(
            self.config, request.references, self.config.commitment_wait_s, self.supported_classes()
        )
        return Report(request.transaction_uid, result.committed, result.failed)

    # -- worker threads -------------------------------------------------------

    def _spawn(self, name: str, kind: str, work: Callable[[], object]) -> None:
        def run() -> None:
            try:
                result: object = work()
            except Exception as exc:  # a bug in a worker must not lose the request
                log.exception("commitment %s of %s failed", kind, name)
                result = exc
            self._results.put((name, (kind, result)))
            # A full pipe holds enough wake-ups already.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"x")

        threading.Thread(target=run, name=f"commitment-{kind}", daemon=True).start()

    def run_completions(self) -> None:
        """Apply what worker threads finished (main thread only)."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                name, (kind, result) = self._results.get_nowait()
            except queue.Empty:
                break
            if kind == "check":
                self._checks -= 1
                self._checked(name, result)
            else:
                self._sends -= 1
                self._sent(name, result)
        self._start_checks()

    def _checked(self, name: str, result: object) -> None:
        job = self.jobs.get(name)
        if job is None:
            return
        if not isinstance(result, Report):
            # The check itself failed: every reference is a processing failure.
            reason = FailureReason.PROCESSING_FAILURE
            failed = tuple(Failure(c, i, reason) for c, i in job.request.references)
            result = Report(job.request.transaction_uid, (), failed)
        job.report = result
        request = job.request
        if request.reply_to and self.send_offer(request.reply_to, offer_message(job)):
            job.state, job.due = State.OFFERED, time.monotonic() + OFFER_ACK_S
        else:
            job.state, job.due = State.DUE, time.monotonic()

    # -- the association that asked ---------------------------------------------

    def outcome(self, msg: bus.ReportOutcome) -> None:
        """The receiver's answer to an offer."""
        job = self.jobs.get(msg.request_name)
        if job is None:
            return
        if msg.outcome is bus.Outcome.DELIVERED:
            # Even if we gave up waiting and went for a new association meanwhile.
            self._finish(job, via="same", peer=job.request.peer)
        elif job.state in (State.OFFERED, State.ON_SAME):
            if msg.outcome is bus.Outcome.ACCEPTED:
                bound = 2 * self.config.dimse_timeout_s + 5.0
                job.state, job.due = State.ON_SAME, time.monotonic() + bound
            else:
                job.last_reason = f"same association: {msg.reason}"
                job.state, job.due = State.DUE, time.monotonic()

    # -- new associations -----------------------------------------------------

    def tick(self) -> float:
        """Start what is due; returns seconds until something else falls due."""
        now = time.monotonic()
        next_due = 3600.0
        for job in list(self.jobs.values()):
            if job.state in (State.OFFERED, State.ON_SAME) and now >= job.due:
                job.last_reason = f"same association: no answer in state {job.state.value}"
                job.state, job.due = State.DUE, now
            if job.state is State.DUE:
                if now >= job.due:
                    self._attempt(job)
                else:
                    next_due = min(next_due, job.due - now)
            elif job.state in (State.OFFERED, State.ON_SAME):
                next_due = min(next_due, job.due - now)
        return max(0.0, next_due)

    def _attempt(self, job: Job) -> None:
        remote = find_remote(self.config, job.request)
        if remote is None:
            job.last_reason = (
                f"no [[remote_ae]] with storage_commitment for {job.request.calling_ae!r}"
            )
            self._give_up(job)
            return
        if self._sends >= MAX_SENDS:
            return  # stays due; tried when a send finishes
        assert job.report is not None
        report = job.report
        job.state = State.SENDING
        job.attempts += 1
        self._sends += 1
        self._spawn(job.name, "send", functools.partial(send_report, self.config, remote, report))

    def _sent(self, name: str, result: object) -> None:
        job = self.jobs.get(name)
        if job is None or job.state is not State.SENDING:
            return  # delivered on the same association meanwhile
        remote = find_remote(self.config, job.request)
        peer = f"{remote.host}:{remote.port}" if remote else ""
        attempt = result if isinstance(result, Attempt) else Attempt(False, repr(result))
        if attempt.delivered:
            self._finish(job, via="new", peer=peer, transfer_syntax=attempt.transfer_syntax)
            return
        job.last_reason = attempt.reason
        left = job.request.received_unix + self.config.commitment_deadline_s - time.time()
        if left <= 0:
            self._give_up(job)
            return
        delay = min(retry_delay(self.config, job.attempts), left)
        self.outbox.event(
            bus.EventType.ASSOCIATION,
            state="commitment_report_failed",
            transaction_uid=job.request.transaction_uid,
            called_ae=job.request.calling_ae,
            peer=peer,
            attempt=job.attempts,
            reason=attempt.reason,
            retry_in_s=round(delay, 3),
        )
        job.state, job.due = State.DUE, time.monotonic() + delay

    # -- endings --------------------------------------------------------------

    def _finish(self, job: Job, via: str, peer: str, transfer_syntax: str = "") -> None:
        assert job.report is not None
        report = job.report
        self.store.finish(job.name)
        del self.jobs[job.name]
        fields: dict[str, bus.FieldValue] = {
            "state": "commitment_reported",
            "transaction_uid": report.transaction_uid,
            "event_type": int(report.event_type),
            "committed": len(report.committed),
            "failed": len(report.failed),
            "via": via,
            "calling_ae": job.request.calling_ae,
            "peer": peer,
            "attempts": job.attempts,
            "delay_ms": round((time.time() - job.request.received_unix) * 1000),
        }
        if transfer_syntax:
            fields["transfer_syntax"] = transfer_syntax
        if job.request.duplicate:
            fields["duplicate"] = True
        self.outbox.event(bus.EventType.ASSOCIATION, **fields)

    def _give_up(self, job: Job) -> None:
        self.store.finish(job.name)
        del self.jobs[job.name]
        self.outbox.event(
            bus.EventType.ERROR,
            what="commitment report not delivered",
            transaction_uid=job.request.transaction_uid,
            calling_ae=job.request.calling_ae,
            attempts=job.attempts,
            reason=job.last_reason or "unknown",
            deadline_s=self.config.commitment_deadline_s,
        )
