"""Storage Commitment reports on the association that asked, while the SCU holds it open.

The commitment process checks a request and offers the report to the
receiver process whose endpoint the request names (ReportOffered). Our
`ReportMail` thread owns that PULL socket: it hands the offer to the
connection's `Mailbox` and says "accepted", or says "declined" at once when
the association has ended. The connection's own thread, the one owner of
its socket, sends the N-EVENT-REPORT-RQ between two PDUs of its peer
(`AssociationReports`), reads the N-EVENT-REPORT-RSP among the peer's other
messages and says "delivered", or "declined" if the peer answers with a
failure, does not answer within dimse_timeout_s, or goes away; the
commitment process then uses a new association.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from storscp import bus
from storscp.commitmentinfo import (
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    Failure,
    FailureReason,
    Report,
    encode_event_information,
)
from storscp.inbox import received
from storscp.outbox import Outbox
from storscp.receiver import dimse, pdu

log = logging.getLogger(__name__)

POLL_MS = 200
SUCCESS = 0x0000
_ENDPOINT_FILE = re.compile(r"receiver-([0-9]+)\.sock")


def remove_stale_endpoints(bus_dir: Path) -> int:
    """Remove the socket files of receivers that died without closing them (kill -9)."""
    removed = 0
    try:
        names = os.listdir(bus_dir)
    except OSError:
        return 0
    for name in names:
        match = _ENDPOINT_FILE.fullmatch(name)
        if match and not os.path.exists(f"/proc/{match[1]}"):
            with contextlib.suppress(OSError):
                os.unlink(bus_dir / name)
                removed += 1
    return removed


class Mailbox:
    """Offers for one association; `fd` is readable while any wait."""

    def __init__(self, association_id: int) -> None:
        self.association_id = association_id
        self.fd, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._offers: deque[bus.ReportOffered] = deque()
        self._lock = threading.Lock()
        self._closed = False

    def put(self, offer: bus.ReportOffered) -> bool:
        """Queue an offer (mail thread); False once the association has ended."""
        with self._lock:
            if self._closed:
                return False
            self._offers.append(offer)
            # Under the lock: close() must not free the fd between check and write.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"x")
        return True

    def take(self) -> list[bus.ReportOffered]:
        """Every waiting offer (connection thread)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096):
                pass
        with self._lock:
            offers = list(self._offers)
            self._offers.clear()
        return offers

    def close(self) -> list[bus.ReportOffered]:
        """No more offers; returns those never taken."""
        with self._lock:
            self._closed = True
            left = list(self._offers)
            self._offers.clear()
            os.close(self.fd)
            os.close(self._wake_w)
        return left


class Mailboxes:
    """association id -> Mailbox, for this receiver process."""

    def __init__(self) -> None:
        self._boxes: dict[int, Mailbox] = {}
        self._lock = threading.Lock()

    def open(self, association_id: int) -> Mailbox:
        box = Mailbox(association_id)
        with self._lock:
            self._boxes[association_id] = box
        return box

    def close(self, box: Mailbox) -> list[bus.ReportOffered]:
        with self._lock:
            self._boxes.pop(box.association_id, None)
        return box.close()

    def deliver(self, offer: bus.ReportOffered) -> bool:
        with self._lock:
            box = self._boxes.get(offer.association_id)
        return box is not None and box.put(offer)


class ReportMail:
    """The thread that owns our ReportOffered endpoint (PULL)."""

    def __init__(self, endpoint: str, mailboxes: Mailboxes, outbox: Outbox) -> None:
        self.endpoint = endpoint
        self.mailboxes = mailboxes
        self.outbox = outbox
        self._stop = threading.Event()
        self._bound = threading.Event()
        self.error = ""
        self._thread = threading.Thread(target=self._run, name="report-mail", daemon=True)

    def start(self) -> bool:
        """Bind and serve; False (and `error` says why) if the endpoint cannot be bound."""
        self._thread.start()
        self._bound.wait(5.0)
        return not self.error and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)

    def _run(self) -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock: zmq.Socket[bytes] = context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            try:
                sock.bind(self.endpoint)
            except zmq.ZMQError as exc:
                self.error = f"cannot bind {self.endpoint}: {exc}"
                return
            finally:
                self._bound.set()
            while not self._stop.is_set():
                if sock.poll(POLL_MS):
                    self._receive(sock)
        finally:
            sock.close()
            context.term()

    def _receive(self, sock: zmq.Socket[bytes]) -> None:
        for msg in received(sock):
            if not isinstance(msg, bus.ReportOffered):
                continue
            if self.mailboxes.deliver(msg):
                outcome = bus.ReportOutcome(msg.request_name, bus.Outcome.ACCEPTED)
            else:
                outcome = bus.ReportOutcome(
                    msg.request_name, bus.Outcome.DECLINED, "the association has ended"
                )
            self.outbox.post("commitment", outcome)


def report_of(offer: bus.ReportOffered) -> Report:
    """The Report an offer carries (reasons outside the standard's list become 0x0110)."""
    failed = []
    for (sop_class, uid), code in zip(offer.failed, offer.reasons, strict=True):
        try:
            reason = FailureReason(code)
        except ValueError:
            reason = FailureReason.PROCESSING_FAILURE
        failed.append(Failure(sop_class, uid, reason))
    committed = tuple((c, i) for c, i in offer.committed)
    return Report(offer.transaction_uid, committed, tuple(failed))


@dataclass(slots=True)
class Sent:
    request_name: str
    deadline: float


@dataclass(frozen=True, slots=True)
class Asked:
    """Where a request came from on this association: its context and syntax."""

    context_id: int
    transfer_syntax: str


class AssociationReports:
    """One association's reports: offered, sent, answered (connection thread only)."""

    def __init__(
        self, mailboxes: Mailboxes, association_id: int, outbox: Outbox, rsp_timeout_s: float
    ) -> None:
        self.mailboxes = mailboxes
        self.outbox = outbox
        self.rsp_timeout_s = rsp_timeout_s
        self.box = mailboxes.open(association_id)
        self._asked: dict[str, Asked] = {}
        self._sent: dict[int, Sent] = {}
        self._message_ids = 0

    @property
    def fd(self) -> int:
        return self.box.fd

    def asked(self, request_name: str, context_id: int, transfer_syntax: str) -> None:
        """A request of this association is on disk; its report may be offered here."""
        self._asked[request_name] = Asked(context_id, transfer_syntax)

    def busy(self) -> bool:
        """Whether the connection must watch the mailbox or a response deadline."""
        return bool(self._asked or self._sent)

    def next_deadline(self) -> float | None:
        return min((s.deadline for s in self._sent.values()), default=None)

    def send_offered(self, send: Callable[[bytes], None], max_pdu: int) -> int:
        """Send every offered report as an N-EVENT-REPORT-RQ; returns how many."""
        count = 0
        for offer in self.box.take():
            asked = self._asked.pop(offer.request_name, None)
            if asked is None:
                self._outcome(offer.request_name, bus.Outcome.DECLINED, "not asked here")
                continue
            report = report_of(offer)
            data = encode_event_information(report, asked.transfer_syntax)
            self._message_ids = self._message_ids % 0xFFFF + 1
            command = dimse.event_report_request(
                self._message_ids, SOP_CLASS_UID, SOP_INSTANCE_UID, int(report.event_type)
            )
            deadline = time.monotonic() + self.rsp_timeout_s
            self._sent[self._message_ids] = Sent(offer.request_name, deadline)
            send(pdu.p_data_command(asked.context_id, command))
            for fragment in pdu.p_data_message(asked.context_id, data, False, max_pdu):
                send(fragment)
            count += 1
        return count

    def response(self, command: dimse.Command) -> bool:
        """An N-EVENT-REPORT-RSP: True if it answers one of ours."""
        sent = self._sent.pop(command.responded_to or 0, None)
        if sent is None:
            return False
        if command.status == SUCCESS:
            self._outcome(sent.request_name, bus.Outcome.DELIVERED)
        else:
            status = "none" if command.status is None else f"0x{command.status:04X}"
            self._outcome(sent.request_name, bus.Outcome.DECLINED, f"N-EVENT-REPORT-RSP {status}")
        return True

    def expire(self) -> None:
        """Reports whose response is overdue go to a new association."""
        now = time.monotonic()
        for message_id, sent in list(self._sent.items()):
            if now >= sent.deadline:
                del self._sent[message_id]
                self._outcome(
                    sent.request_name,
                    bus.Outcome.DECLINED,
                    f"no N-EVENT-REPORT-RSP within {self.rsp_timeout_s}s",
                )

    def close(self, reason: str) -> None:
        """The association ends: whatever is not delivered goes to a new association."""
        for offer in self.mailboxes.close(self.box):
            self._outcome(offer.request_name, bus.Outcome.DECLINED, reason)
        for sent in self._sent.values():
            self._outcome(sent.request_name, bus.Outcome.DECLINED, reason)
        self._sent.clear()
        self._asked.clear()

    def _outcome(self, request_name: str, outcome: bus.Outcome, reason: str = "") -> None:
        self.outbox.post("commitment", bus.ReportOutcome(request_name, outcome, reason))
