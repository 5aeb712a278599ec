"""The receiver's metrics: associations by outcome, refused C-STOREs, receive time.

One `ReceiverCounter` per receiver process, shared by its connections (the
metric objects are thread-safe). The calling AE title of an association is
turned into its bounded label value once, when the association is
negotiated; a C-STORE that succeeds costs one histogram observation.
Reasons become fixed label values here, never the free text of the log.
"""

from __future__ import annotations

from enum import StrEnum

from storscp.ae_labels import AeLabels
from storscp.config import Config
from storscp.instruments import receiver_metrics
from storscp.receiver.pdu import Reject


def reject_reason(reject: Reject) -> str:
    """A-ASSOCIATE-RJ words as a label value: "called AE title not recognised" ->
    "called_ae_title_not_recognised" (a fixed set: the REJECT_* of pdu.py)."""
    return reject.text.lower().replace(" ", "_")


class AbortReason(StrEnum):
    """Why an established association ended without a release, as label values."""

    PEER_ABORT = "peer_abort"
    PEER_CLOSED = "peer_closed"
    TIMEOUT = "timeout"
    PROTOCOL_ERROR = "protocol_error"
    NETWORK_ERROR = "network_error"
    INTERNAL_ERROR = "internal_error"
    STOPPING = "stopping"


class ReceiverCounter:
    def __init__(self, config: Config) -> None:
        self.metrics = receiver_metrics()
        directory = config.metrics_dir if config.metrics_address is not None else None
        self.ae_label = AeLabels((ae.ae_title for ae in config.remote_ae), directory)

    def association(self, label: str, outcome: str, reason: str = "") -> None:
        """`label`: from ae_label(calling AE); outcome: accepted, rejected, released, aborted."""
        self.metrics.associations.labels(label, outcome, reason).inc()
        if outcome == "accepted":
            self.metrics.associations_open.inc()
        elif outcome in ("released", "aborted"):
            self.metrics.associations_open.dec()

    def tls_handshake_failed(self) -> None:
        self.metrics.tls_handshake_failures.inc()

    def store_failed(self, label: str, status: int) -> None:
        self.metrics.store_failures.labels(label, f"0x{status:04X}").inc()

    def stored(self, seconds: float) -> None:
        self.metrics.receive_seconds.observe(seconds)
