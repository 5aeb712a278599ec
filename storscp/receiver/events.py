"""The events of one connection: ASSOCIATION as it goes, ERROR when something fails.

Each event names the peer (host:port) and, once its A-ASSOCIATE-RQ has been
negotiated, the calling and called AE titles; with TLS, the client's
certificate subject too. Behind a load balancer the peer is the address of
its PROXY header and `proxy=` names the balancer's end. What the association
stored is counted for its ending event.

A balancer's own connections (PROXY v2 LOCAL: health checks, every few
seconds) are `quiet`: their request, acceptance and empty release are not
logged, so checks never push the audit trail out of the log files; a
rejection, an abort or anything stored still is.
"""

from __future__ import annotations

from dataclasses import dataclass

from storscp import bus
from storscp.outbox import Outbox
from storscp.receiver.acse import Negotiated
from storscp.receiver.dimse import Command
from storscp.receiver.store import StoreStatus
from storscp.uids import strip_padding


@dataclass
class AssociationStats:
    instances: int = 0
    bytes: int = 0
    failures: int = 0

    def fields(self) -> dict[str, bus.FieldValue]:
        return {"instances": self.instances, "bytes": self.bytes, "failures": self.failures}


class AssociationEvents:
    """Emits the events of one connection, each saying who is on the other end."""

    def __init__(self, outbox: Outbox, peer: str, tls: bool) -> None:
        self.outbox = outbox
        self.peer = peer
        self.proxy = ""
        self.quiet = False
        self.tls = tls
        self.tls_subject = ""
        self.assoc: Negotiated | None = None

    def _where(self) -> dict[str, bus.FieldValue]:
        return {"peer": self.peer, "proxy": self.proxy} if self.proxy else {"peer": self.peer}

    def association(self, state: str, **fields: bus.FieldValue) -> None:
        if self.quiet and (
            state in ("requested", "accepted")
            or (state == "released" and not fields.get("instances") and not fields.get("failures"))
        ):
            return
        assoc = self.assoc
        if self.tls:
            fields["tls"] = True
            if self.tls_subject:
                fields["tls_subject"] = self.tls_subject
        self.outbox.event(
            bus.EventType.ASSOCIATION,
            state=state,
            calling_ae=assoc.calling_ae if assoc else "",
            called_ae=assoc.called_ae if assoc else "",
            **self._where(),
            **fields,
        )

    def error(self, what: str, reason: str, **fields: bus.FieldValue) -> None:
        assoc = self.assoc
        self.outbox.event(
            bus.EventType.ERROR,
            what=what,
            reason=reason,
            calling_ae=assoc.calling_ae if assoc else "",
            **self._where(),
            **fields,
        )

    def store_failed(self, command: Command, status: StoreStatus, reason: str) -> None:
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
            **self._where(),
        )
