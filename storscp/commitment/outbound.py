"""A report on a new association to the modality that asked (PS3.4 J.3.3).

We request the association but stay the Storage Commitment SCP, so we
propose SCP/SCU Role Selection with the SCP role only (the modality accepts
"the SCP role proposed by the Storage Commitment SCP acting as an
association requestor"), in one context offering Implicit and Explicit VR
Little Endian: some modalities accept only Implicit. pynetdicom plays the
requestor's Upper Layer: a well-kept implementation, and not a hot path.
Runs on a worker thread of the commitment process; never raises. pynetdicom
is imported at the first report: the process starts (and restarts) without
it, beside components that need the CPU to start.
"""

from __future__ import annotations

from dataclasses import dataclass

from storscp.commitmentinfo import (
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    TRANSFER_SYNTAXES,
    Report,
    event_information,
)
from storscp.config import Config, RemoteAE

SUCCESS = 0x0000


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt achieved; `reason` says why not when not delivered."""

    delivered: bool
    reason: str = ""
    transfer_syntax: str = ""


def send_report(config: Config, remote: RemoteAE, report: Report) -> Attempt:
    """Associate with `remote`, send the N-EVENT-REPORT, release."""
    from pynetdicom import AE, build_role

    assert remote.host is not None and remote.port is not None
    ae = AE(ae_title=config.ae_title)
    ae.connection_timeout = config.acse_timeout_s
    ae.acse_timeout = config.acse_timeout_s
    ae.dimse_timeout = config.dimse_timeout_s
    ae.network_timeout = config.network_timeout_s
    ae.add_requested_context(SOP_CLASS_UID, list(TRANSFER_SYNTAXES))
    role = build_role(SOP_CLASS_UID, scp_role=True)
    try:
        assoc = ae.associate(remote.host, remote.port, ae_title=remote.ae_title, ext_neg=[role])
    except Exception as exc:  # pynetdicom raises on odd input; a report must never crash us
        return Attempt(False, f"cannot associate: {exc!r}")
    try:
        if assoc.is_rejected:
            return Attempt(False, "association rejected")
        if not assoc.is_established:
            return Attempt(False, "association not established (no answer, refused or aborted)")
        contexts = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == SOP_CLASS_UID]
        if not contexts:
            return Attempt(False, "Storage Commitment context not accepted")
        syntax = str(contexts[0].transfer_syntax[0])
        status, _reply = assoc.send_n_event_report(
            event_information(report), int(report.event_type), SOP_CLASS_UID, SOP_INSTANCE_UID
        )
        if "Status" not in status:
            return Attempt(False, "no N-EVENT-REPORT-RSP (timeout or abort)", syntax)
        code = int(status.Status)
        if code != SUCCESS:
            return Attempt(False, f"N-EVENT-REPORT-RSP status 0x{code:04X}", syntax)
        return Attempt(True, "", syntax)
    except Exception as exc:
        return Attempt(False, f"sending the report failed: {exc!r}")
    finally:
        if assoc.is_established:
            assoc.release()
