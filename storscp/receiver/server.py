"""The receiver's listening socket, its connections, and who gets in.

One thread accepts; each connection gets its own thread running a
`Connection`. The socket is bound with SO_REUSEPORT so that several
receiver processes can share the port and the kernel spreads connections
over them. Stopping closes the listener, lets associations finish until the
drain deadline, then aborts what is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time

from storscp.arrival import Arrival
from storscp.config import Config
from storscp.outbox import Outbox
from storscp.receiver import pdu
from storscp.receiver.acse import Negotiated, Negotiator
from storscp.receiver.admission import admission_check, resolve_remote_hosts
from storscp.receiver.commitment_reports import Mailboxes
from storscp.receiver.commitment_requests import CommitmentRequests
from storscp.receiver.connection import Connection, ConnectionServices
from storscp.receiver.counting import ReceiverCounter
from storscp.receiver.depot import PartPool
from storscp.receiver.proxyproto import trusted_networks
from storscp.receiver.slots import AssociationSlots, Held, RemoteAESlots
from storscp.receiver.store import StoreLimits
from storscp.receiver.tls import make_tls_context

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 128
# Connections still negotiating count against this extra allowance.
PENDING_CONNECTIONS = 16
# After abort(), how long connections get to send their A-ABORT and close.
ABORT_GRACE_S = 2.0


class Receiver:
    """Accepts connections and holds what all of them share."""

    def __init__(
        self,
        config: Config,
        outbox: Outbox,
        arrival: Arrival,
        mailboxes: Mailboxes | None = None,
        reply_to: str = "",
    ) -> None:
        """`reply_to`: the endpoint whose offers go to `mailboxes` ("": none)."""
        self.config = config
        self.outbox = outbox
        self.depot_dir = config.depot_dir
        self.depot_dir_fd = os.open(self.depot_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.parts = PartPool(self.depot_dir, int(config.file_mode), arrival)
        # In bus_dir: the one part of run_dir the components' account may write.
        self.slots = AssociationSlots(config.bus_dir, config.max_associations)
        self.remote_slots = RemoteAESlots(
            config.bus_dir, [remote.max_associations for remote in config.remote_ae]
        )
        self.allowed_hosts = resolve_remote_hosts(config)
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()
        self._listeners: list[tuple[socket.socket, ssl.SSLContext | None]] = []
        self._acceptors: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.counter = ReceiverCounter(config)
        self.services = ConnectionServices(
            config=config,
            outbox=outbox,
            negotiator=Negotiator(config.max_pdu_bytes, config.accept_unknown_sop_classes),
            parts=self.parts,
            limits=StoreLimits(
                config.max_instance_bytes, config.min_free_bytes, config.layout == "study"
            ),
            depot_dir_fd=self.depot_dir_fd,
            admit=self.admit,
            association_ended=self.association_ended,
            counter=self.counter,
            trusted_proxies=trusted_networks(config.trusted_proxies),
            commitment=CommitmentRequests(config, outbox, self.allowed_hosts, reply_to),
            mailboxes=mailboxes if reply_to else None,
        )

    # -- listening ------------------------------------------------------------

    def listen(self) -> tuple[str, int, int | None]:
        """Bind the plain port (and the TLS port if configured).

        Returns (host, port, tls_port). Raises OSError, or TlsSetupError when
        the certificate or key cannot be loaded.
        """
        host, port = self._bind(self.config.port, None)
        tls_port = None
        if self.config.tls is not None:
            context = make_tls_context(self.config.tls)
            _, tls_port = self._bind(self.config.tls.port, context)
        return host, port, tls_port

    def _bind(self, port: int, tls: ssl.SSLContext | None) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.config.host, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        self._listeners.append((sock, tls))
        host, bound = sock.getsockname()[:2]
        return str(host), int(bound)

    def start(self) -> None:
        for sock, tls in self._listeners:
            thread = threading.Thread(
                target=self._accept_loop, args=(sock, tls), name="acceptor", daemon=True
            )
            thread.start()
            self._acceptors.append(thread)

    def accepting(self) -> bool:
        """Listening, not stopping, and every acceptor thread alive."""
        return (
            bool(self._acceptors)
            and not self._stopping.is_set()
            and all(thread.is_alive() for thread in self._acceptors)
        )

    def _accept_loop(self, listener: socket.socket, tls: ssl.SSLContext | None) -> None:
        while not self._stopping.is_set():
            try:
                sock, address = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)  # EMFILE and friends: do not spin
                continue
            with self._lock:
                crowded = len(self._connections) >= (
                    self.config.max_associations + PENDING_CONNECTIONS
                )
            if crowded:
                sock.close()
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The TLS handshake happens on the connection's own thread, so a
            # slow or silent TLS client never holds up the next accept.
            connection = Connection(sock, address, self.services, tls)
            with self._lock:
                self._connections.add(connection)
            threading.Thread(
                target=self._run_connection, args=(connection,), name="association", daemon=True
            ).start()

    def _run_connection(self, connection: Connection) -> None:
        try:
            connection.serve()
        finally:
            with self._lock:
                self._connections.discard(connection)

    # -- admission ------------------------------------------------------------

    def admit(self, assoc: Negotiated, peer_host: str) -> tuple[pdu.Reject | None, Held | None]:
        """(None, slots) to accept the association holding them, else (why not, None).

        `peer_host` is the modality's address (a PROXY header's, behind a balancer).
        """
        reject, remote = admission_check(self.config, self.allowed_hosts, assoc, peer_host)
        if reject is not None:
            return reject, None
        if self._stopping.is_set():
            return pdu.REJECT_CONGESTION, None
        slot = self.slots.acquire()
        if slot is None:
            return pdu.REJECT_LOCAL_LIMIT, None
        if remote is None or not self.remote_slots.limited(remote):
            return None, Held(slot)
        remote_slot = self.remote_slots.acquire(remote)
        if remote_slot is None:
            self.slots.release(slot)
            table = self.config.remote_ae[remote]
            return pdu.REJECT_LOCAL_LIMIT._replace(
                text=f"local limit exceeded: max_associations={table.max_associations}"
                f" of [[remote_ae]] {table.name!r}"
            ), None
        return None, Held(slot, (remote, remote_slot))

    def association_ended(self, held: Held) -> None:
        if held.remote is not None:
            self.remote_slots.release(*held.remote)
        self.slots.release(held.slot)

    # -- stopping -------------------------------------------------------------

    def stop(self, drain_timeout_s: float, urgent: threading.Event) -> int:
        """Stop accepting; drain until the deadline; abort the rest. Returns aborted count."""
        self._stopping.set()
        for sock, _tls in self._listeners:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._acceptors:
            thread.join(2.0)
        deadline = time.monotonic() + drain_timeout_s
        while self._live() and time.monotonic() < deadline:
            if urgent.wait(0.05):
                break
        left = self._live()
        for connection in left:
            connection.abort()
        # Each connection's own thread sends its A-ABORT; one stuck sending to a
        # peer that does not read is cut off after ABORT_GRACE_S.
        end = time.monotonic() + ABORT_GRACE_S
        while self._live() and time.monotonic() < end:
            time.sleep(0.02)
        for connection in self._live():
            connection.kill()
        end = time.monotonic() + 5.0
        while self._live() and time.monotonic() < end:
            time.sleep(0.02)
        if not self._live():
            self.parts.close()
            os.close(self.depot_dir_fd)
        return len(left)

    def _live(self) -> list[Connection]:
        with self._lock:
            return list(self._connections)
