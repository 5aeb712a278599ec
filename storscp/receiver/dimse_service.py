"""The DIMSE services of one established association: C-ECHO, C-STORE, C-CANCEL,
and N-ACTION / N-EVENT-REPORT of Storage Commitment.

The connection reads the PDUs; it hands over each decoded command set and
streams the dataset that follows into the sink this service opened for it
(a PendingStore, or an N-ACTION's ActionDataset). Each request gets its
answer: C-ECHO at once, C-STORE once its file is durable (or with a named
failure status and an ERROR event), N-ACTION once the request is on disk
(commitment_dimse.py). What the protocol does not allow raises
ProtocolError, and the connection aborts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from storscp.outbox import Outbox
from storscp.receiver import dimse, pdu
from storscp.receiver.acse import Negotiated
from storscp.receiver.commitment_dimse import AssociationCommitment
from storscp.receiver.commitment_requests import ActionDataset
from storscp.receiver.counting import ReceiverCounter
from storscp.receiver.depot import PartPool
from storscp.receiver.dimse import Command, CommandField
from storscp.receiver.events import AssociationEvents, AssociationStats
from storscp.receiver.pdu import ProtocolError
from storscp.receiver.store import (
    PendingStore,
    StoreFailure,
    StoreLimits,
    StoreStatus,
    finish_store,
    open_store,
)
from storscp.uids import strip_padding

log = logging.getLogger(__name__)


class DimseService:
    """Answers the requests of one association; `send` writes a PDU to its peer."""

    def __init__(
        self,
        assoc: Negotiated,
        *,
        parts: PartPool,
        limits: StoreLimits,
        depot_dir_fd: int,
        outbox: Outbox,
        events: AssociationEvents,
        stats: AssociationStats,
        send: Callable[[bytes], None],
        commitment: AssociationCommitment,
        counter: ReceiverCounter,
        ae_label: str,
    ) -> None:
        """`ae_label`: the calling AE title as `counter.ae_label` bounds it."""
        self.assoc = assoc
        self.parts = parts
        self.limits = limits
        self.depot_dir_fd = depot_dir_fd
        self.outbox = outbox
        self.events = events
        self.stats = stats
        self._send = send
        self.commitment = commitment
        self.counter = counter
        self.ae_label = ae_label
        self._pending: PendingStore | None = None
        self._action: ActionDataset | None = None
        self._expecting_dataset: Command | None = None

    @property
    def expecting_dataset(self) -> bool:
        """A C-STORE-RQ came and its dataset has not yet ended."""
        return self._expecting_dataset is not None

    def on_command(self, context_id: int, command: Command) -> None:
        context = self.assoc.contexts.get(context_id)
        if context is None:
            raise ProtocolError(
                f"message on presentation context {context_id}, which was not accepted",
                pdu.AbortReason.INVALID_PDU_PARAMETER,
            )
        if command.command_field == CommandField.C_ECHO_RQ:
            if command.has_dataset:
                raise ProtocolError("C-ECHO-RQ with a dataset")
            self._send(pdu.p_data_command(context_id, dimse.echo_response(command.message_id)))
        elif command.command_field == CommandField.C_STORE_RQ:
            if not command.has_dataset:
                self._respond_store(
                    context_id, command, StoreStatus.CANNOT_UNDERSTAND, "C-STORE without a dataset"
                )
                return
            self._expecting_dataset = command
            self._pending = open_store(
                command,
                context_id,
                context.abstract_syntax,
                context.transfer_syntax,
                self.assoc.calling_ae,
                self.parts,
                self.limits,
            )
        elif command.command_field == CommandField.N_ACTION_RQ:
            self._action = self.commitment.on_action(context_id, context, command)
            if self._action is not None:
                self._expecting_dataset = command
        elif command.command_field == CommandField.N_EVENT_REPORT_RSP:
            if command.has_dataset:
                raise ProtocolError("N-EVENT-REPORT-RSP with a dataset")
            if not self.commitment.on_response(command):
                self.events.error(
                    "unexpected response", f"N-EVENT-REPORT-RSP to {command.responded_to}"
                )
        elif command.command_field == CommandField.C_CANCEL_RQ:
            return  # nothing of ours is cancellable
        else:
            raise ProtocolError(
                f"unsupported DIMSE command 0x{command.command_field:04X}",
                pdu.AbortReason.UNRECOGNIZED_PDU_PARAMETER,
            )

    def dataset_sink(self, context_id: int) -> PendingStore | ActionDataset:
        """Where a dataset fragment on `context_id` goes."""
        if self._expecting_dataset is None:
            raise ProtocolError("dataset fragment without a command")
        sink = self._pending or self._action
        if sink is None or sink.context_id != context_id:
            raise ProtocolError("dataset fragment on another presentation context")
        return sink

    def dataset_ended(self, sink: PendingStore | ActionDataset) -> None:
        """The last fragment is in: finish the request and answer it."""
        self._expecting_dataset = None
        self._pending = None
        self._action = None
        if isinstance(sink, ActionDataset):
            self.commitment.action_ended(sink)
        else:
            self._complete_store(sink)

    def discard(self, reason: str = "the association ended") -> None:
        """The association ended: drop a dataset that was still arriving."""
        if self._pending is not None:
            self._pending.discard()
            self._pending = None
        self._action = None
        self.commitment.close(reason)

    def _complete_store(self, pending: PendingStore) -> None:
        command = pending.command
        try:
            stored = finish_store(pending, self.depot_dir_fd)
        except StoreFailure as exc:
            self._store_failed(pending, exc.status, str(exc))
            return
        except Exception as exc:  # never let a bug drop the association silently
            log.exception("unexpected error finishing C-STORE")
            self._store_failed(pending, StoreStatus.UNEXPECTED_ERROR, f"internal error: {exc!r}")
            return
        finally:
            pending.discard()
        self.stats.instances += 1
        self.stats.bytes += stored.size_bytes
        self._respond_store(pending.context_id, command, StoreStatus.SUCCESS)
        self.counter.stored(time.monotonic() - pending.started)
        self.outbox.post("committer", stored)
        self.parts.refill()

    def _store_failed(self, pending: PendingStore, status: StoreStatus, reason: str) -> None:
        self.stats.failures += 1
        self.counter.store_failed(self.ae_label, status)
        self.events.store_failed(pending.command, status, reason)
        self._respond_store(pending.context_id, pending.command, status, reason)

    def _respond_store(
        self, context_id: int, command: Command, status: StoreStatus, comment: str = ""
    ) -> None:
        response = dimse.store_response(
            command.message_id,
            strip_padding(command.affected_sop_class_uid),
            strip_padding(command.affected_sop_instance_uid),
            int(status),
            comment,
        )
        self._send(pdu.p_data_command(context_id, response))
