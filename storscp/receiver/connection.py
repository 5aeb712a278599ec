"""One TCP connection as an association acceptor (PS3.8 state machine, acceptor side).

Runs on its own thread with a blocking socket. Waits for A-ASSOCIATE-RQ,
negotiates (acse.py), then reads PDUs: P-DATA-TF items are streamed — a
C-STORE dataset goes from the socket into a reused buffer and straight into
its depot file, so memory stays a few hundred KB whatever the instance size
and whatever length a peer announces. A-RELEASE-RQ is answered, A-ABORT
ends it, anything else aborts it. What each DIMSE request gets is
`dimse_service.py`'s business, the events are `events.py`'s.

Timeouts: `acse_timeout_s` for the association request, `network_timeout_s`
of silence between PDUs, `dimse_timeout_s` to receive one PDU once it has
started (which drops slow-drip peers).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from storscp.config import Config
from storscp.outbox import Outbox
from storscp.receiver import dimse, pdu, proxyproto
from storscp.receiver.acse import (
    APPLICATION_CONTEXT_NAME,
    Negotiated,
    NegotiationError,
    Negotiator,
)
from storscp.receiver.commitment_dimse import AssociationCommitment
from storscp.receiver.commitment_reports import Mailboxes
from storscp.receiver.commitment_requests import CommitmentRequests
from storscp.receiver.counting import AbortReason, ReceiverCounter, reject_reason
from storscp.receiver.depot import PartPool
from storscp.receiver.dimse import CommandSetError
from storscp.receiver.dimse_service import DimseService
from storscp.receiver.events import AssociationEvents, AssociationStats
from storscp.receiver.pdu import ProtocolError
from storscp.receiver.proxyproto import Network, is_trusted
from storscp.receiver.reader import PeerClosed, SocketReader
from storscp.receiver.slots import Held
from storscp.receiver.store import StoreLimits
from storscp.receiver.tls import peer_subject

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024
# A default storescu proposes 128 contexts in ~10 KB; 256 KB leaves room for
# any real modality while bounding the ~0.15 s of CPU pynetdicom needs per
# 256 KB to decode one (and what the negotiation cache may hold).
MAX_ASSOCIATE_RQ_BYTES = 256 * 1024
# Some SCUs count the 6-byte PDU header in the maximum length they may send.
PDU_LENGTH_SLACK = 6
# At a stop, how long the A-ABORT may take to leave (a peer that does not read).
ABORT_SEND_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class ConnectionServices:
    """What a connection needs of the receiver that accepted it, and nothing more.

    Built once by the Receiver and shared by all its connections, so that a
    connection never reaches back into the Receiver itself.
    """

    config: Config
    outbox: Outbox
    negotiator: Negotiator
    parts: PartPool
    limits: StoreLimits
    depot_dir_fd: int
    # (None, slots) lets an association in holding `slots`, else (why not, None).
    admit: Callable[[Negotiated, str], tuple[pdu.Reject | None, Held | None]]
    # Gives back the slots that `admit` handed out.
    association_ended: Callable[[Held], None]
    # Storage Commitment: takes N-ACTIONs; offered reports arrive in `mailboxes`.
    commitment: CommitmentRequests
    mailboxes: Mailboxes | None
    # The process's metrics (thread-safe, shared by every connection).
    counter: ReceiverCounter
    # With proxy_protocol: who may put a PROXY header before a connection.
    trusted_proxies: tuple[Network, ...] = ()


class Connection:
    """Serves one connection from accept to close."""

    def __init__(
        self,
        sock: socket.socket,
        peer: tuple[str, int],
        services: ConnectionServices,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.sock = sock
        self.tls = tls
        self.peer = f"{peer[0]}:{peer[1]}"
        self.peer_host = peer[0]
        self.services = services
        self.config = services.config
        self.events = AssociationEvents(services.outbox, self.peer, tls is not None)
        self.counter = services.counter
        self._label = ""  # the calling AE title as a metric label value
        self.stats = AssociationStats()
        self.reader = SocketReader(sock)
        self._command = bytearray()
        self._service: DimseService | None = None
        self._slot: Held | None = None
        self._stopping = False

    # -- life cycle ---------------------------------------------------------

    def serve(self) -> None:
        """Run the association to its end; never raises."""
        ending = "closed"
        reason = ""
        why = AbortReason.PEER_ABORT  # the metric label of an abort
        try:
            if self.config.proxy_protocol and not self._proxy_header():
                return
            if self.tls is not None and not self._handshake(self.tls):
                return
            assoc = self._associate()
            if assoc is not None:
                commitment = AssociationCommitment(
                    self.services.commitment,
                    self.services.mailboxes,
                    assoc,
                    self.peer,
                    self.peer_host,
                    self._send,
                    self.events,
                    self.config.dimse_timeout_s,
                )
                self._service = service = DimseService(
                    assoc,
                    parts=self.services.parts,
                    limits=self.services.limits,
                    depot_dir_fd=self.services.depot_dir_fd,
                    outbox=self.services.outbox,
                    events=self.events,
                    stats=self.stats,
                    send=self._send,
                    commitment=commitment,
                    counter=self.counter,
                    ae_label=self._label,
                )
                ending, reason = self._serve_established(service)
        except PeerClosed:
            ending, reason, why = "aborted", "peer closed the connection", AbortReason.PEER_CLOSED
            if self._stopping:
                # abort() shut our reading side: the A-ABORT is ours to send, from here.
                self.sock.settimeout(ABORT_SEND_TIMEOUT_S)
                self._send_quietly(pdu.abort(pdu.AbortReason.NOT_SPECIFIED))
        except TimeoutError:
            ending, reason, why = "aborted", "timed out waiting for the peer", AbortReason.TIMEOUT
            self._send_quietly(pdu.abort(pdu.AbortReason.NOT_SPECIFIED))
        except ProtocolError as exc:
            ending, reason, why = "aborted", f"protocol error: {exc}", AbortReason.PROTOCOL_ERROR
            self._send_quietly(pdu.abort(exc.reason))
            self.events.error("protocol error", str(exc))
        except OSError as exc:
            ending, reason, why = "aborted", f"network error: {exc}", AbortReason.NETWORK_ERROR
        except Exception as exc:  # the boundary: one bad connection never stops the service
            log.exception("unexpected error on connection from %s", self.peer)
            ending, reason = "aborted", f"internal error: {exc!r}"
            why = AbortReason.INTERNAL_ERROR
            self._send_quietly(pdu.abort(pdu.AbortReason.NOT_SPECIFIED))
            self.events.error("internal error", repr(exc))
        finally:
            if self._service is not None:
                self._service.discard(f"the association {ending}")
            self._close()
            if self._stopping and ending != "released":
                # Woken by abort(), or cut off by kill() mid-send: the stop ended it.
                ending, reason = "aborted", "service stopping: drain timeout reached"
                why = AbortReason.STOPPING
            if self._slot is not None:
                self.services.association_ended(self._slot)
                fields = self.stats.fields()
                if reason:
                    fields["reason"] = reason
                self.events.association(ending, **fields)
                self.counter.association(self._label, ending, why if ending == "aborted" else "")

    def abort(self) -> None:
        """Have the connection's own thread abort it (called by the stopping thread).

        Only the owner thread reads or writes the socket: an SSL object must
        not be used by two threads at once. Shutting down the reading side
        wakes the owner from `recv` with end-of-file; it then sends the
        A-ABORT itself and closes.
        """
        self._stopping = True
        self._shutdown(socket.SHUT_RD)

    def kill(self) -> None:
        """Last resort after abort(): the owner is stuck sending to a peer that does not
        read; shutting down both directions fails that send at once."""
        self._stopping = True
        self._shutdown(socket.SHUT_RDWR)

    def _shutdown(self, how: int) -> None:
        # socket.socket's own shutdown, also for an SSLSocket: its override
        # drops the SSL object under the owner thread's feet.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, how)

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _proxy_header(self) -> bool:
        """A trusted balancer's PROXY header, read within acse_timeout_s and before TLS;
        False (and an ERROR, unless nothing at all was sent) if there is none.

        From then on the header's address is the peer: admission, limits, events.
        """
        if not is_trusted(self.peer_host, self.services.trusted_proxies):
            self.events.error(
                "connection refused", "not from a trusted proxy (proxy_protocol is on)"
            )
            return False
        timeout = self.config.acse_timeout_s
        try:
            header = proxyproto.read_header(self.sock, timeout)
        except proxyproto.ClosedBeforeHeader:
            return False  # a connect-only check: nothing was refused
        except proxyproto.ProxyHeaderError as exc:
            self.events.error("PROXY header refused", str(exc))
            return False
        except TimeoutError:
            self.events.error(
                "PROXY header refused", f"no complete PROXY header within acse_timeout_s={timeout}"
            )
            return False
        except OSError as exc:
            self.events.error("PROXY header refused", f"network error: {exc}")
            return False
        self.events.proxy = self.peer
        if header.source is not None:
            self.peer_host = header.source[0]
            self.peer = self.events.peer = f"{header.source[0]}:{header.source[1]}"
        self.events.quiet = header.local
        return True

    def _handshake(self, context: ssl.SSLContext) -> bool:
        """TLS handshake within acse_timeout_s; False (and an ERROR) if it fails."""
        self.sock.settimeout(self.config.acse_timeout_s)
        try:
            wrapped = context.wrap_socket(self.sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.events.error("TLS handshake failed", str(exc) or type(exc).__name__)
            self.counter.tls_handshake_failed()
            return False
        self.sock = wrapped
        self.reader = SocketReader(wrapped)
        self.events.tls_subject = peer_subject(wrapped)
        return True

    # -- association establishment -----------------------------------------------

    def _associate(self) -> Negotiated | None:
        """Handle A-ASSOCIATE-RQ; the association if accepted."""
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
            assoc = self.services.negotiator.negotiate(header + body)
        except NegotiationError as exc:
            raise ProtocolError(str(exc), pdu.AbortReason.INVALID_PDU_PARAMETER) from None
        self.events.assoc = assoc
        self._label = self.counter.ae_label(assoc.calling_ae)
        self.events.association(
            "requested",
            contexts_proposed=assoc.proposed,
            implementation=assoc.peer_implementation_version or assoc.peer_implementation_uid,
        )
        reject = self._reject_reason(assoc)
        if reject is not None:
            self._send(pdu.associate_rj(reject))
            self.events.association("rejected", reason=reject.text)
            self.counter.association(self._label, "rejected", reject_reason(reject))
            return None
        self._send(assoc.ac_pdu)
        self.events.association(
            "accepted", contexts_accepted=len(assoc.contexts), contexts_proposed=assoc.proposed
        )
        self.counter.association(self._label, "accepted")
        return assoc

    def _reject_reason(self, assoc: Negotiated) -> pdu.Reject | None:
        if assoc.protocol_version & 0x0001 == 0:
            return pdu.REJECT_PROTOCOL_VERSION
        if assoc.application_context != APPLICATION_CONTEXT_NAME:
            return pdu.REJECT_APPLICATION_CONTEXT
        # Last: admission holds a slot for us when it lets us in.
        reject, self._slot = self.services.admit(assoc, self.peer_host)
        return reject

    # -- established ----------------------------------------------------------------

    def _serve_established(self, service: DimseService) -> tuple[str, str]:
        """Read PDUs until release or abort; returns (ending, reason)."""
        reader = self.reader
        commitment = service.commitment
        while True:
            if commitment.reports is not None and not self._command:
                self._wait_for_peer(service)
            # Waiting for the next PDU: only silence is limited ...
            reader.set_wait(self.config.network_timeout_s)
            header = reader.read(6)
            pdu_type, length = pdu.HEADER.unpack(header)
            # ... once it has started, it must arrive within dimse_timeout_s.
            reader.set_wait(
                self.config.network_timeout_s, time.monotonic() + self.config.dimse_timeout_s
            )
            if pdu_type == pdu.PduType.P_DATA_TF:
                self._read_p_data(service, length)
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

    def _wait_for_peer(self, service: DimseService) -> None:
        """While a commitment report may come for this association, watch for it too.

        Only between two messages of the peer, and only this thread writes
        to the socket. Silence still ends the association after
        network_timeout_s.
        """
        commitment = service.commitment
        silence_end = time.monotonic() + self.config.network_timeout_s
        while not service.expecting_dataset:
            commitment.idle()
            if not commitment.watching:
                return
            pending_tls = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
            if self.reader.buffered or pending_tls:
                return
            now = time.monotonic()
            if now >= silence_end:
                raise TimeoutError("no PDU within network_timeout_s")
            wait_s = silence_end - now
            deadline = commitment.next_deadline()
            if deadline is not None:
                wait_s = max(0.0, min(wait_s, deadline - now))
            sock_fd = self.sock.fileno()
            readable, _, _ = select.select([sock_fd, commitment.wake_fd], [], [], wait_s)
            if sock_fd in readable:
                return

    def _read_p_data(self, service: DimseService, length: int) -> None:
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
                self._read_command_fragment(service, context_id, data_length, bool(control & 0x02))
            else:
                self._read_dataset_fragment(service, context_id, data_length, bool(control & 0x02))

    def _read_command_fragment(
        self, service: DimseService, context_id: int, length: int, last: bool
    ) -> None:
        if service.expecting_dataset:
            raise ProtocolError("command fragment while a dataset was expected")
        if len(self._command) + length > MAX_COMMAND_BYTES:
            raise ProtocolError("command set larger than 64 KiB")
        self._command += self.reader.read(length)
        if last:
            data = bytes(self._command)
            self._command.clear()
            try:
                command = dimse.decode_command(data)
            except CommandSetError as exc:
                raise ProtocolError(str(exc)) from None
            service.on_command(context_id, command)

    def _read_dataset_fragment(
        self, service: DimseService, context_id: int, length: int, last: bool
    ) -> None:
        pending = service.dataset_sink(context_id)
        self.reader.stream(length, pending.take)
        if last:
            service.dataset_ended(pending)

    # -- socket I/O ---------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        # The socket's timeout (network_timeout_s) bounds a peer that stops reading.
        self.sock.sendall(data)

    def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)
