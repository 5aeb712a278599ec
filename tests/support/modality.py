"""A modality played by pynetdicom: it asks for Storage Commitment and takes the report.

`listen()` runs its SCP side on a loopback port, accepting the Storage
Commitment class with the roles a Storage Commitment SCP proposes when it
calls back (it the SCP, we the SCU), and records each N-EVENT-REPORT.
`request()` sends the N-ACTION; with `hold_s` it keeps the association open
and takes the report on it, as some modalities do.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"

Reference = tuple[str, str]


@dataclass(frozen=True)
class ReceivedReport:
    """One N-EVENT-REPORT as the modality saw it."""

    transaction_uid: str
    event_type: int
    committed: list[Reference]
    failed: list[tuple[str, str, int]]
    same_association: bool
    transfer_syntax: str
    at: float = field(default_factory=time.monotonic)


def free_port() -> int:
    """A loopback port free right now (for a modality that is down at first)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def action_information(transaction: str, refs: Sequence[Reference]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for sop_class, uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    ds.ReferencedSOPSequence = DicomSequence(items)
    return ds


class Modality:
    """An SCU of Storage Commitment with its own SCP side for reports."""

    def __init__(
        self,
        ae_title: str = "MODALITY",
        syntaxes: Sequence[str] = (ImplicitVRLittleEndian, ExplicitVRLittleEndian),
        report_status: int = 0x0000,
    ) -> None:
        self.ae_title = ae_title
        self.syntaxes = list(syntaxes)
        self.report_status = report_status
        self.reports: list[ReceivedReport] = []
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self.port = 0

    # -- the SCP side: reports on a new association ----------------------------

    def listen(self, port: int = 0) -> int:
        """Accept reports on `port` (0: a free one); returns the port."""
        ae = AE(ae_title=self.ae_title)
        # We accept the role the calling Storage Commitment SCP proposes for
        # itself (SCP) and take the SCU role.
        ae.add_supported_context(STORAGE_COMMITMENT, self.syntaxes, scu_role=False, scp_role=True)
        server = ae.start_server(
            ("127.0.0.1", port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report_new)],
        )
        assert server is not None
        self._server = server
        self.port = int(server.server_address[1])
        return self.port

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_report_new(self, event: Event) -> tuple[int, None]:
        return self._record(event, same_association=False), None

    def _on_report_same(self, event: Event) -> tuple[int, None]:
        return self._record(event, same_association=True), None

    def _record(self, event: Event, same_association: bool) -> int:
        ds = event.event_information
        committed = [
            (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
            for i in ds.get("ReferencedSOPSequence", [])
        ]
        failed = [
            (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason))
            for i in ds.get("FailedSOPSequence", [])
        ]
        request = event.request
        assert isinstance(request, N_EVENT_REPORT)
        report = ReceivedReport(
            transaction_uid=str(ds.TransactionUID),
            event_type=int(request.EventTypeID or 0),
            committed=committed,
            failed=failed,
            same_association=same_association,
            transfer_syntax=str(event.context.transfer_syntax),
        )
        with self._lock:
            self.reports.append(report)
        return self.report_status

    def reports_for(self, transaction: str) -> list[ReceivedReport]:
        with self._lock:
            return [r for r in self.reports if r.transaction_uid == transaction]

    def wait_report(self, transaction: str, timeout_s: float = 30.0) -> ReceivedReport:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.reports_for(transaction)
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no report for {transaction} within {timeout_s}s")

    # -- the SCU side: N-ACTION -----------------------------------------------

    def request(
        self,
        port: int,
        transaction: str,
        refs: Sequence[Reference],
        *,
        hold_s: float = 0.0,
        called_ae: str = "STORSCP",
        dataset: Dataset | None = None,
        action_type: int = 1,
        instance_uid: str = STORAGE_COMMITMENT_INSTANCE,
    ) -> tuple[int | None, float]:
        """Send an N-ACTION; returns (status or None, monotonic time of the response).

        With `hold_s`, keep the association open until the report for
        `transaction` arrives on it, or `hold_s` passes.
        """
        ae = AE(ae_title=self.ae_title)
        ae.dimse_timeout = 60
        ae.add_requested_context(STORAGE_COMMITMENT, self.syntaxes)
        assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title=called_ae,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report_same)],
        )
        assert assoc.is_established, "Storage Commitment association not accepted"
        try:
            info = dataset if dataset is not None else action_information(transaction, refs)
            status, _ = assoc.send_n_action(info, action_type, STORAGE_COMMITMENT, instance_uid)
            answered = time.monotonic()
            code = int(status.Status) if "Status" in status else None
            deadline = answered + hold_s
            while time.monotonic() < deadline and assoc.is_established:
                if any(r.same_association for r in self.reports_for(transaction)):
                    break
                time.sleep(0.01)
            return code, answered
        finally:
            if assoc.is_established:
                assoc.release()
