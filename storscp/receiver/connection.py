"""One TCP connection as an association acceptor (PS3.8 state machine, acceptor side).

Runs on its own thread with a blocking socket. Waits for A-ASSOCIATE-RQ,
negotiates (acse.py), then reads PDUs: P-DATA-TF items are streamed — a
C-STORE dataset goes from the socket into a reused buffer and straight into
its depot file, so memory stays a few hundred KB whatever the instance size
and whatever length a peer announces. A-RELEASE-RQ is answered, A-ABORT
ends it, anything else aborts it.

Timeouts: `acse_timeout_s` for the association request, `network_timeout_s`
of silence between PDUs, `dimse_timeout_s` to receive one PDU once it has
started (which drops slow-drip peers).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from storscp import bus
from storscp.receiver import dimse, pdu
from storscp.receiver.acse import APPLICATION_CONTEXT_NAME, Negotiated, NegotiationError
from storscp.receiver.counting import AbortReason, reject_reason
from storscp.receiver.dimse import Command, CommandError, CommandField
from storscp.receiver.reader import PeerClosed, SocketReader
from storscp.receiver.store import (
    PendingStore,
    StoreFailure,
    StoreStatus,
    finish_store,
    open_store,
)
from storscp.receiver.tls import peer_subject
from storscp.uids import strip_padding

if TYPE_CHECKING:
    from storscp.receiver.server import Receiver

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024
# A default storescu proposes 128 contexts in ~10 KB; 256 KB leaves room for
# any real modality while bounding the ~0.15 s of CPU pynetdicom needs per
# 256 KB to decode one (and what the negotiation cache may hold).
MAX_ASSOCIATE_RQ_BYTES = 256 * 1024
# Some SCUs count the 6-byte PDU header in the maximum length they may send.
PDU_LENGTH_SLACK = 6


class ProtocolError(Exception):
    """The peer broke the Upper Layer or DIMSE protocol; we abort."""

    def __init__(self, message: str, reason: pdu.AbortReason = pdu.AbortReason.NOT_SPECIFIED):
        super().__init__(message)
        self.reason = reason


@dataclass
class AssociationStats:
    instances: int = 0
    bytes: int = 0
    failures: int = 0


class Connection:
    """Serves one connection from accept to close."""

    def __init__(
        self,
        sock: socket.socket,
        peer: tuple[str, int],
        receiver: Receiver,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.sock = sock
        self.tls = tls
        self.tls_subject = ""
        self.peer = f"{peer[0]}:{peer[1]}"
        self.peer_host = peer[0]
        self.receiver = receiver
        self.config = receiver.config
        self.outbox = receiver.outbox
        self.counter = receiver.counter
        self.assoc: Negotiated | None = None
        self._label = ""  # the calling AE title as a metric label value
        self.stats = AssociationStats()
        self.reader = SocketReader(sock)
        self._command = bytearray()
        self._pending: PendingStore | None = None
        self._expecting_dataset: Command | None = None
        self._slot: int | None = None
        self._stopping = False

    # -- life cycle ---------------------------------------------------------

    def serve(self) -> None:
        """Run the association to its end; never raises."""
        ending = "closed"
        reason = ""
        why = AbortReason.PEER_ABORT  # the metric label of an abort
        try:
            if self.tls is not None and not self._handshake(self.tls):
                return
            if self._associate():
                ending, reason = self._serve_established()
        except PeerClosed:
            ending, reason, why = "aborted", "peer closed the connection", AbortReason.PEER_CLOSED
            if self._stopping:
                reason, why = "service stopping: drain timeout reached", AbortReason.STOPPING
        except TimeoutError:
            ending, reason, why = "aborted", "timed out waiting for the peer", AbortReason.TIMEOUT
            self._send_quietly(pdu.abort(pdu.AbortReason.NOT_SPECIFIED))
        except ProtocolError as exc:
            ending, reason, why = "aborted", f"protocol error: {exc}", AbortReason.PROTOCOL_ERROR
            self._send_quietly(pdu.abort(exc.reason))
            self._error("protocol error", str(exc))
        except OSError as exc:
            ending, reason, why = "aborted", f"network error: {exc}", AbortReason.NETWORK_ERROR
        except Exception as exc:  # the boundary: one bad connection never stops the service
            log.exception("unexpected error on connection from %s", self.peer)
            ending, reason = "aborted", f"internal error: {exc!r}"
            why = AbortReason.INTERNAL_ERROR
            self._send_quietly(pdu.abort(pdu.AbortReason.NOT_SPECIFIED))
            self._error("internal error", repr(exc))
        finally:
            if self._pending is not None:
                self._pending.discard()
                self._pending = None
            self._close()
            if self._slot is not None:
                self.receiver.association_ended(self._slot)
                fields = self._stats_fields()
                if reason:
                    fields["reason"] = reason
                self._association_event(ending, **fields)
                self.counter.association(self._label, ending, why if ending == "aborted" else "")

    def abort(self) -> None:
        """Abort from another thread (service stopping): the reader then fails."""
        self._stopping = True
        self._send_quietly(pdu.abort(pdu.AbortReason.NOT_SPECIFIED))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _handshake(self, context: ssl.SSLContext) -> bool:
        """TLS handshake within acse_timeout_s; False (and an ERROR) if it fails."""
        self.sock.settimeout(self.config.acse_timeout_s)
        try:
            wrapped = context.wrap_socket(self.sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self._error("TLS handshake failed", str(exc) or type(exc).__name__)
            self.counter.tls_handshake_failed()
            return False
        self.sock = wrapped
        self.reader = SocketReader(wrapped)
        self.tls_subject = peer_subject(wrapped)
        return True

    # -- association establishment -----------------------------------------------

    def _associate(self) -> bool:
        """Handle A-ASSOCIATE-RQ; True if accepted."""
        timeout = self.config.acse_timeout_s
        self.reader.set_wait(timeout, time.monotonic() + timeout)
        header = self.reader.read(6)
        pdu_type, length = pdu.HEADER.unpack(header)
        if pdu_type != pdu.PduType.ASSOCIATE_RQ:
            raise ProtocolError(
                f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}",
                pdu.AbortReason.UNEXPECTED_PDU,
            )
        if length > MAX_ASSOCIATE_RQ_BYTES:
            raise ProtocolError(
                f"A-ASSOCIATE-RQ of {length} bytes", pdu.AbortReason.INVALID_PDU_PARAMETER
            )
        body = self.reader.read(length)
        try:
            assoc = self.receiver.negotiator.negotiate(header + body)
        except NegotiationError as exc:
            raise ProtocolError(str(exc), pdu.AbortReason.INVALID_PDU_PARAMETER) from None
        self.assoc = assoc
        self._label = self.counter.ae_label(assoc.calling_ae)
        self._association_event(
            "requested",
            contexts_proposed=assoc.proposed,
            implementation=assoc.peer_implementation_version or assoc.peer_implementation_uid,
        )
        reject = self._reject_reason(assoc)
        if reject is not None:
            self._send(pdu.associate_rj(reject))
            self._association_event("rejected", reason=reject.text)
            self.counter.association(self._label, "rejected", reject_reason(reject))
            return False
        self._send(assoc.ac_pdu)
        self._association_event(
            "accepted", contexts_accepted=len(assoc.contexts), contexts_proposed=assoc.proposed
        )
        self.counter.association(self._label, "accepted")
        return True

    def _reject_reason(self, assoc: Negotiated) -> pdu.Reject | None:
        if assoc.protocol_version & 0x0001 == 0:
            return pdu.REJECT_PROTOCOL_VERSION
        if assoc.application_context != APPLICATION_CONTEXT_NAME:
            return pdu.REJECT_APPLICATION_CONTEXT
        # Last: admission holds a slot for us when it lets us in.
        reject, self._slot = self.receiver.admit(assoc, self.peer_host)
        return reject

    # -- established ----------------------------------------------------------------

    def _serve_established(self) -> tuple[str, str]:
        """Read PDUs until release or abort; returns (ending, reason)."""
        reader = self.reader
        while True:
            # Waiting for the next PDU: only silence is limited ...
            reader.set_wait(self.config.network_timeout_s)
            header = reader.read(6)
            pdu_type, length = pdu.HEADER.unpack(header)
            # ... once it has started, it must arrive within dimse_timeout_s.
            reader.set_wait(
                self.config.network_timeout_s, time.monotonic() + self.config.dimse_timeout_s
            )
            if pdu_type == pdu.PduType.P_DATA_TF:
                self._read_p_data(length)
            elif pdu_type == pdu.PduType.RELEASE_RQ:
                reader.read(min(length, 4))
                self._send(pdu.release_rp())
                return "released", ""
            elif pdu_type == pdu.PduType.ABORT:
                reader.read(min(length, 4))
                return "aborted", "peer sent A-ABORT"
            else:
                raise ProtocolError(
                    f"unexpected PDU type 0x{pdu_type:02X} after association",
                    pdu.AbortReason.UNEXPECTED_PDU
                    if pdu_type in pdu.PduType.__members__.values()
                    else pdu.AbortReason.UNRECOGNIZED_PDU,
                )

    def _read_p_data(self, length: int) -> None:
        limit = self.config.max_pdu_bytes + PDU_LENGTH_SLACK
        if length > limit:
            raise ProtocolError(
                f"P-DATA-TF of {length} bytes exceeds our maximum of {self.config.max_pdu_bytes}",
                pdu.AbortReason.INVALID_PDU_PARAMETER,
            )
        remaining = length
        while remaining > 0:
            if remaining < 6:
                raise ProtocolError("P-DATA-TF ends inside a PDV item header")
            item_length, context_id, control = pdu.PDV_HEADER.unpack(self.reader.read(6))
            remaining -= 6
            if item_length < 2 or item_length - 2 > remaining:
                raise ProtocolError(
                    f"PDV item length {item_length} does not fit its PDU",
                    pdu.AbortReason.INVALID_PDU_PARAMETER,
                )
            data_length = item_length - 2
            remaining -= data_length
            if control & 0x01:
                self._read_command_fragment(context_id, data_length, last=bool(control & 0x02))
            else:
                self._read_dataset_fragment(context_id, data_length, last=bool(control & 0x02))

    def _read_command_fragment(self, context_id: int, length: int, last: bool) -> None:
        if self._expecting_dataset is not None:
            raise ProtocolError("command fragment while a dataset was expected")
        if len(self._command) + length > MAX_COMMAND_BYTES:
            raise ProtocolError("command set larger than 64 KiB")
        self._command += self.reader.read(length)
        if last:
            data = bytes(self._command)
            self._command.clear()
            try:
                command = dimse.decode_command(data)
            except CommandError as exc:
                raise ProtocolError(str(exc)) from None
            self._on_command(context_id, command)

    def _read_dataset_fragment(self, context_id: int, length: int, last: bool) -> None:
        command = self._expecting_dataset
        if command is None:
            raise ProtocolError("dataset fragment without a command")
        pending = self._pending
        if pending is None or pending.context_id != context_id:
            raise ProtocolError("dataset fragment on another presentation context")
        self.reader.stream(length, pending.take)
        if last:
            self._expecting_dataset = None
            self._pending = None
            self._complete_store(pending)

    # -- DIMSE --------------------------------------------------------------------------

    def _on_command(self, context_id: int, command: Command) -> None:
        assert self.assoc is not None
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
                self.receiver.parts,
                self.receiver.limits,
            )
        elif command.command_field == CommandField.C_CANCEL_RQ:
            return  # nothing of ours is cancellable
        else:
            raise ProtocolError(
                f"unsupported DIMSE command 0x{command.command_field:04X}",
                pdu.AbortReason.UNRECOGNIZED_PDU_PARAMETER,
            )

    def _complete_store(self, pending: PendingStore) -> None:
        command = pending.command
        try:
            stored = finish_store(pending, self.receiver.depot_dir_fd)
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
        self.receiver.parts.refill()

    def _store_failed(self, pending: PendingStore, status: StoreStatus, reason: str) -> None:
        self.stats.failures += 1
        self.counter.store_failed(self._label, status)
        command = pending.command
        assert self.assoc is not None
        self.outbox.event(
            bus.EventType.ERROR,
            what="C-STORE failed",
            status=f"0x{status:04X}",
            status_name=status.name,
            reason=reason,
            sop_instance_uid=strip_padding(command.affected_sop_instance_uid),
            sop_class_uid=strip_padding(command.affected_sop_class_uid),
            calling_ae=self.assoc.calling_ae,
            peer=self.peer,
        )
        self._respond_store(pending.context_id, command, status, reason)

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

    # -- socket I/O ---------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        # The socket's timeout (network_timeout_s) bounds a peer that stops reading.
        self.sock.sendall(data)

    def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    # -- events -------------------------------------------------------------------------

    def _stats_fields(self) -> dict[str, bus.FieldValue]:
        return {
            "instances": self.stats.instances,
            "bytes": self.stats.bytes,
            "failures": self.stats.failures,
        }

    def _association_event(self, state: str, **fields: bus.FieldValue) -> None:
        assoc = self.assoc
        if self.tls is not None:
            fields["tls"] = True
            if self.tls_subject:
                fields["tls_subject"] = self.tls_subject
        self.outbox.event(
            bus.EventType.ASSOCIATION,
            state=state,
            calling_ae=assoc.calling_ae if assoc else "",
            called_ae=assoc.called_ae if assoc else "",
            peer=self.peer,
            **fields,
        )

    def _error(self, what: str, reason: str) -> None:
        assoc = self.assoc
        self.outbox.event(
            bus.EventType.ERROR,
            what=what,
            reason=reason,
            calling_ae=assoc.calling_ae if assoc else "",
            peer=self.peer,
        )
