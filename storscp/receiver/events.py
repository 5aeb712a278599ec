"""The events of one connection: ASSOCIATION as it goes, ERROR when something fails.

Each event names the peer (host:port) and, once its A-ASSOCIATE-RQ has been
negotiated, the calling and called AE titles; with TLS, the client's
certificate subject too. What the association stored is counted for its
ending event.
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
        self.tls = tls
        self.tls_subject = ""
        self.assoc: Negotiated | None = None

    def association(self, state: str, **fields: bus.FieldValue) -> None:
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
            peer=self.peer,
            **fields,
        )

    def error(self, what: str, reason: str) -> None:
        assoc = self.assoc
        self.outbox.event(
            bus.EventType.ERROR,
            what=what,
            reason=reason,
            calling_ae=assoc.calling_ae if assoc else "",
            peer=self.peer,
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
            peer=self.peer,
        )
