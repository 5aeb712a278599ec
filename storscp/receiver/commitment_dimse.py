"""Storage Commitment's part of one association's DIMSE service.

An N-ACTION-RQ on the Storage Commitment context: its dataset is collected
(bounded), the request checked and written to disk, then answered; a refusal
gets its status, an Error Comment and an ERROR event. Once a request is
accepted, this association may carry its report: between two PDUs of its
peer the connection asks `idle()` to send what the commitment process
offered, and hands N-EVENT-REPORT-RSPs to `on_response()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from storscp import bus
from storscp.commitmentinfo import (
    ACTION_REQUEST_COMMITMENT,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    ActionRefused,
    ActionStatus,
)
from storscp.receiver import dimse, pdu
from storscp.receiver.acse import AcceptedContext, Negotiated
from storscp.receiver.commitment_reports import AssociationReports, Mailboxes
from storscp.receiver.commitment_requests import ActionDataset, CommitmentRequests
from storscp.receiver.dimse import Command
from storscp.receiver.events import AssociationEvents

log = logging.getLogger(__name__)


class AssociationCommitment:
    """Storage Commitment requests and reports of one association (its thread only)."""

    def __init__(
        self,
        requests: CommitmentRequests,
        mailboxes: Mailboxes | None,
        assoc: Negotiated,
        peer: str,
        peer_host: str,
        send: Callable[[bytes], None],
        events: AssociationEvents,
        rsp_timeout_s: float,
    ) -> None:
        self.requests = requests
        self.mailboxes = mailboxes
        self.assoc = assoc
        self.peer = peer
        self.peer_host = peer_host
        self._send = send
        self.events = events
        self.rsp_timeout_s = rsp_timeout_s
        self.reports: AssociationReports | None = None

    # -- N-ACTION ---------------------------------------------------------------

    def on_action(
        self, context_id: int, context: AcceptedContext, command: Command
    ) -> ActionDataset | None:
        """An N-ACTION-RQ: where its dataset goes, or None if it has none (answered now)."""
        if not command.has_dataset:
            self.action_ended(ActionDataset(command, context_id, 0))
            return None
        # Even a request we will refuse has its dataset read off the wire first.
        limit = self.requests.dataset_limit() if context.abstract_syntax == SOP_CLASS_UID else 0
        return ActionDataset(command, context_id, limit)

    def action_ended(self, dataset: ActionDataset) -> None:
        """The request is complete: take it or refuse it, and answer."""
        command, context_id = dataset.command, dataset.context_id
        context = self.assoc.contexts[context_id]
        if context.abstract_syntax != SOP_CLASS_UID:
            dataset.discard()
            self._refuse(
                context_id,
                command,
                ActionRefused(
                    ActionStatus.UNRECOGNISED_OPERATION,
                    f"N-ACTION on a context for {context.abstract_syntax}",
                ),
            )
            return
        reports = self._reports()
        association_id = reports.box.association_id if reports else 0
        try:
            accepted = self.requests.take(
                command,
                dataset,
                context.transfer_syntax,
                self.assoc.calling_ae,
                self.assoc.called_ae,
                self.peer,
                self.peer_host,
                association_id,
            )
        except ActionRefused as exc:
            self._refuse(context_id, command, exc)
            return
        except Exception as exc:  # a bug must not drop the association silently
            log.exception("unexpected error taking an N-ACTION")
            self._refuse(
                context_id,
                command,
                ActionRefused(ActionStatus.PROCESSING_FAILURE, f"internal error: {exc!r}"),
            )
            return
        finally:
            dataset.discard()
        if reports is not None:
            reports.asked(accepted.request_name, context_id, context.transfer_syntax)
        response = dimse.action_response(
            command.message_id,
            ActionStatus.SUCCESS,
            sop_class_uid=SOP_CLASS_UID,
            sop_instance_uid=SOP_INSTANCE_UID,
            action_type_id=ACTION_REQUEST_COMMITMENT,
        )
        self._send(pdu.p_data_command(context_id, response))
        fields: dict[str, bus.FieldValue] = {
            "transaction_uid": accepted.info.transaction_uid,
            "references": len(accepted.info.references),
        }
        if accepted.duplicate:
            fields["duplicate"] = True
        self.events.association("commitment_requested", **fields)

    def _reports(self) -> AssociationReports | None:
        """This association's mailbox, open before the commitment process can be rung:
        an offer must never find the association unknown while it is open."""
        if self.reports is None and self.mailboxes is not None and self.requests.reply_to:
            self.reports = AssociationReports(
                self.mailboxes,
                self.requests.new_association_id(),
                self.requests.outbox,
                self.rsp_timeout_s,
            )
        return self.reports

    def _refuse(self, context_id: int, command: Command, exc: ActionRefused) -> None:
        fields: dict[str, bus.FieldValue] = {
            "status": f"0x{exc.status:04X}",
            "status_name": exc.status.name,
        }
        if exc.transaction_uid:
            fields["transaction_uid"] = exc.transaction_uid
        self.events.error("commitment request refused", str(exc), **fields)
        response = dimse.action_response(command.message_id, int(exc.status), str(exc))
        self._send(pdu.p_data_command(context_id, response))

    # -- reports on this association ---------------------------------------------

    def on_response(self, command: Command) -> bool:
        """An N-EVENT-REPORT-RSP; False if it answers nothing we sent."""
        return self.reports is not None and self.reports.response(command)

    @property
    def watching(self) -> bool:
        """Whether the connection must watch `wake_fd` between PDUs."""
        return self.reports is not None and self.reports.busy()

    @property
    def wake_fd(self) -> int:
        assert self.reports is not None
        return self.reports.fd

    def next_deadline(self) -> float | None:
        return self.reports.next_deadline() if self.reports else None

    def idle(self) -> None:
        """Between two PDUs: send what was offered, give up on overdue responses."""
        if self.reports is not None:
            self.reports.send_offered(self._send, self.assoc.peer_max_pdu)
            self.reports.expire()

    def close(self, reason: str) -> None:
        """The association ends: reports not delivered go to a new association."""
        if self.reports is not None:
            self.reports.close(reason)
            self.reports = None
