"""The Storage SCP: a pynetdicom AE whose C-STORE lands durably in the depot.

Owns the listening socket and, per association, pynetdicom's threads. For
each C-STORE it takes the part file streamed by `stream.py`, checks the UIDs,
makes it durable (`PartFile.make_ready`), answers, and posts
`InstanceStored` to the committer. Every failure gets a named DIMSE status
and an ERROR event; the service keeps serving.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom._globals import ALL_TRANSFER_SYNTAXES
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from storscp import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, bus
from storscp.config import Config
from storscp.outbox import Outbox
from storscp.receiver.depot import RESOURCE_ERRNOS, PartFile, read_sop_uids
from storscp.receiver.stream import (
    AnyPart,
    DepotDIMSEProvider,
    RefusedPart,
    meta_for_request,
    refuse_invalid_request,
)
from storscp.uids import UIDError, strip_padding

log = logging.getLogger(__name__)


class StoreStatus(IntEnum):
    """C-STORE response statuses we send (PS3.4 Annex B.2.3)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    INVALID_UID = 0xC001
    # pynetdicom's own code for "exception in the handler"; we send it with our ERROR.
    UNEXPECTED_ERROR = 0xC211


class StoreFailure(Exception):
    """A C-STORE that must be answered with `status`; the message says why."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class AssociationStats:
    calling_ae: str
    called_ae: str
    peer: str
    instances: int = 0
    bytes: int = 0
    failures: int = 0


def status_for_os_error(exc: OSError) -> StoreStatus:
    """Full disk or quota: out of resources; anything else: processing failure."""
    return (
        StoreStatus.OUT_OF_RESOURCES
        if exc.errno in RESOURCE_ERRNOS
        else StoreStatus.PROCESSING_FAILURE
    )


class Receiver:
    """One receiver process's AE, server and handlers."""

    def __init__(self, config: Config, outbox: Outbox) -> None:
        self.config = config
        self.outbox = outbox
        self.depot_dir = config.depot_dir
        self._depot_fd = os.open(self.depot_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._stats: dict[int, AssociationStats] = {}
        self._stats_lock = threading.Lock()
        self.ae = self._make_ae()
        self.server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None

    # -- set-up ---------------------------------------------------------

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = self.config.max_pdu_bytes
        ae.maximum_associations = 32
        ae.require_called_aet = False
        ae.require_calling_aet = []
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> tuple[str, int]:
        """Bind and serve in a background thread; return the bound address."""
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
        ]
        server = self.ae.make_server(
            (self.config.host, self.config.port),
            evt_handlers=handlers,
            server_class=DepotServer,
            request_handler=DepotRequestHandler,
        )
        assert isinstance(server, DepotServer)
        server.receiver = self
        self.ae._servers.append(server)
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="acceptor",
            daemon=True,
        )
        self._thread.start()
        host, port = server.server_address[:2]
        return str(host), int(port)

    def stop(self, drain_timeout_s: float, urgent: threading.Event) -> int:
        """Stop accepting, let associations finish until the deadline, abort the rest.

        Returns how many associations had to be aborted.
        """
        if self.server is not None:
            self.server.shutdown()
        deadline = time.monotonic() + drain_timeout_s
        while self._live_associations() and time.monotonic() < deadline:
            if urgent.wait(0.05):
                break
        left = self._live_associations()
        for assoc in left:
            assoc.abort()
        self.ae.shutdown()
        os.close(self._depot_fd)
        return len(left)

    def _live_associations(self) -> list[Association]:
        return [a for a in self.ae.active_associations if a.is_alive()]

    # -- the data path --------------------------------------------------

    def open_part(self, assoc: Association, command_set: Dataset, context_id: int) -> AnyPart:
        """Called on the DUL thread when a C-STORE's command set is complete."""
        refused = refuse_invalid_request(command_set)
        if refused is not None:
            return refused
        context = assoc._accepted_cx.get(context_id)
        if context is None:
            return RefusedPart(
                "presentation context was not accepted",
                ValueError(f"context {context_id}"),
            )
        transfer_syntax = str(context.transfer_syntax[0])
        try:
            meta = meta_for_request(command_set, transfer_syntax, assoc.requestor.ae_title)
            return PartFile(self.depot_dir, meta)
        except OSError as exc:
            return RefusedPart(f"cannot create depot file: {exc}", exc)

    def handle_store(self, event: evt.Event) -> Dataset | int:
        """EVT_C_STORE: answer only once the instance is durable in the depot."""
        assoc = event.assoc
        req = cast(C_STORE, event.request)
        dimse = assoc.dimse
        part = None
        if isinstance(dimse, DepotDIMSEProvider):
            part = dimse.take_part(int(req.MessageID or 0))
        stats = self._stats_of(assoc)
        try:
            stored = self._store(event, part)
        except StoreFailure as exc:
            return self._fail(event, stats, exc.status, str(exc))
        except Exception as exc:  # the boundary: never let a bug drop the service
            log.exception("unexpected error in C-STORE handler")
            return self._fail(
                event, stats, StoreStatus.UNEXPECTED_ERROR, f"internal error: {exc!r}"
            )
        finally:
            if part is not None:
                part.discard()  # no-op once the part has become a ready file
        if stats is not None:
            stats.instances += 1
            stats.bytes += stored.size_bytes
        self.outbox.post("committer", stored)
        return StoreStatus.SUCCESS

    def _store(self, event: evt.Event, part: AnyPart | None) -> bus.InstanceStored:
        req = cast(C_STORE, event.request)
        if part is None:
            raise StoreFailure(StoreStatus.CANNOT_UNDERSTAND, "C-STORE request carried no dataset")
        if isinstance(part, RefusedPart):
            if isinstance(part.error, UIDError):
                raise StoreFailure(StoreStatus.INVALID_UID, part.reason)
            if isinstance(part.error, OSError):
                raise StoreFailure(status_for_os_error(part.error), part.reason)
            raise StoreFailure(StoreStatus.PROCESSING_FAILURE, part.reason)
        part.flush()
        if part.error is not None:
            raise StoreFailure(
                status_for_os_error(part.error), f"cannot write depot file: {part.error}"
            )
        uid = strip_padding(str(req.AffectedSOPInstanceUID))
        class_uid = strip_padding(str(req.AffectedSOPClassUID))
        transfer_syntax = str(event.context.transfer_syntax)
        try:
            found = read_sop_uids(part.path, part.dataset_offset, transfer_syntax)
        except (ValueError, OSError) as exc:
            raise StoreFailure(StoreStatus.CANNOT_UNDERSTAND, str(exc)) from exc
        if found.sop_instance_uid is None or strip_padding(found.sop_instance_uid) != uid:
            raise StoreFailure(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"dataset SOP Instance UID {found.sop_instance_uid!r} != request {uid!r}",
            )
        if found.sop_class_uid is None or strip_padding(found.sop_class_uid) != class_uid:
            raise StoreFailure(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"dataset SOP Class UID {found.sop_class_uid!r} != request {class_uid!r}",
            )
        try:
            name = part.make_ready(uid, self._depot_fd)
        except OSError as exc:
            raise StoreFailure(
                status_for_os_error(exc), f"cannot make depot file durable: {exc}"
            ) from exc
        return bus.InstanceStored(
            depot_name=name,
            sop_instance_uid=uid,
            sop_class_uid=class_uid,
            transfer_syntax_uid=transfer_syntax,
            size_bytes=part.dataset_offset + part.dataset_bytes,
            calling_ae=event.assoc.requestor.ae_title,
        )

    def _fail(
        self,
        event: evt.Event,
        stats: AssociationStats | None,
        status: StoreStatus,
        reason: str,
    ) -> Dataset:
        if stats is not None:
            stats.failures += 1
        req = cast(C_STORE, event.request)
        self.outbox.event(
            bus.EventType.ERROR,
            what="C-STORE failed",
            status=f"0x{status:04X}",
            status_name=status.name,
            reason=reason,
            sop_instance_uid=str(req.AffectedSOPInstanceUID or ""),
            sop_class_uid=str(req.AffectedSOPClassUID or ""),
            calling_ae=event.assoc.requestor.ae_title,
            peer=_peer(event.assoc),
        )
        rsp = Dataset()
        rsp.Status = int(status)
        rsp.ErrorComment = reason[:64]
        return rsp

    # -- association events ---------------------------------------------

    def _stats_of(self, assoc: Association) -> AssociationStats | None:
        with self._stats_lock:
            return self._stats.get(id(assoc))

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        stats = AssociationStats(
            calling_ae=assoc.requestor.ae_title,
            called_ae=assoc.acceptor.ae_title,
            peer=_peer(assoc),
        )
        with self._stats_lock:
            self._stats[id(assoc)] = stats
        self.outbox.event(
            bus.EventType.ASSOCIATION,
            state="accepted",
            calling_ae=stats.calling_ae,
            called_ae=stats.called_ae,
            peer=stats.peer,
        )

    def _on_rejected(self, event: evt.Event) -> None:
        assoc = event.assoc
        self.outbox.event(
            bus.EventType.ASSOCIATION,
            state="rejected",
            calling_ae=assoc.requestor.ae_title,
            called_ae=assoc.requestor.primitive.called_ae_title
            if assoc.requestor.primitive
            else "",
            peer=_peer(assoc),
        )

    def _on_released(self, event: evt.Event) -> None:
        self._end_association(event.assoc, "released")

    def _on_aborted(self, event: evt.Event) -> None:
        self._end_association(event.assoc, "aborted")

    def _on_conn_close(self, event: evt.Event) -> None:
        dimse = event.assoc.dimse
        if isinstance(dimse, DepotDIMSEProvider):
            dimse.discard_all()
        self._end_association(event.assoc, "closed")

    def _end_association(self, assoc: Association, state: str) -> None:
        with self._stats_lock:
            stats = self._stats.pop(id(assoc), None)
        if stats is None:
            return  # already reported (release, then connection close)
        self.outbox.event(
            bus.EventType.ASSOCIATION,
            state=state,
            calling_ae=stats.calling_ae,
            called_ae=stats.called_ae,
            peer=stats.peer,
            instances=stats.instances,
            bytes=stats.bytes,
            failures=stats.failures,
        )


def _peer(assoc: Association) -> str:
    info = assoc.requestor.address_info
    return f"{info.address}:{info.port}" if info is not None else "unknown"


class DepotRequestHandler(RequestHandler):
    """pynetdicom's per-connection handler, with the depot-streaming DIMSE layer."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        server = self.server
        assert isinstance(server, DepotServer)
        assoc.dimse = DepotDIMSEProvider(assoc, server.receiver)
        return assoc


class DepotServer(ThreadedAssociationServer):
    """Threaded association server with TCP_NODELAY on every connection."""

    receiver: Receiver
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
        return client, address
