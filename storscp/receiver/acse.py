"""Association negotiation: A-ASSOCIATE-RQ in, A-ASSOCIATE-AC out, via pynetdicom.

pynetdicom decodes the request, negotiates the presentation contexts and
encodes the accept. That costs ~12 ms for the ~128 contexts a default
`storescu` proposes, and a modality proposes the same bytes every time, so
results are cached by the exact request bytes (bounded LRU). Who may
associate (AE titles, peer address) is decided per connection by the
caller, never cached.

With `accept_unknown_sop_classes`, a proposed abstract syntax outside that
list is accepted for storage too, in any syntax we accept for the others,
when it is a valid UID that is either unknown to pydicom (a private class
such as Siemens CSA Non-Image, or one newer than our libraries) or a
storage SOP class it knows; never a known non-storage UID (Query/Retrieve,
Storage Commitment, a transfer syntax).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

from pydicom.uid import UID
from pynetdicom._globals import ALL_TRANSFER_SYNTAXES
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    build_context,
    negotiate_as_acceptor,
)

from storscp import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from storscp.commitmentinfo import SOP_CLASS_UID as STORAGE_COMMITMENT
from storscp.commitmentinfo import TRANSFER_SYNTAXES as COMMITMENT_SYNTAXES
from storscp.errors import StorscpError
from storscp.receiver.dimse import VERIFICATION_SOP_CLASS
from storscp.uids import is_valid_uid

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
CACHE_SIZE = 128


class NegotiationError(StorscpError, ValueError):
    """An A-ASSOCIATE-RQ we cannot decode: the connection is aborted."""


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    abstract_syntax: str
    transfer_syntax: str


@dataclass(frozen=True, slots=True)
class Negotiated:
    """Everything the receiver needs from one A-ASSOCIATE-RQ."""

    calling_ae: str
    called_ae: str
    application_context: str
    protocol_version: int
    peer_max_pdu: int
    peer_implementation_uid: str
    peer_implementation_version: str
    contexts: dict[int, AcceptedContext]
    proposed: int
    ac_pdu: bytes


def supported_contexts() -> list[PresentationContext]:
    """Verification, every storage SOP class pynetdicom knows in every syntax,
    and Storage Commitment Push Model with us as its SCP.

    Role selection for Storage Commitment: the requestor may be the SCU (the
    default roles); a requestor that wants only the SCP role has its context
    rejected, since we never act as a Storage Commitment SCU.
    """
    contexts = [build_context(VERIFICATION_SOP_CLASS, ALL_TRANSFER_SYNTAXES)]
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None
        contexts.append(build_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES))
    commitment = build_context(STORAGE_COMMITMENT, list(COMMITMENT_SYNTAXES))
    commitment.scu_role, commitment.scp_role = True, False
    contexts.append(commitment)
    return contexts


def is_storage_to_accept(abstract_syntax: str) -> bool:
    """An abstract syntax outside our list that `accept_unknown_sop_classes` takes for storage."""
    if not is_valid_uid(abstract_syntax):
        return False
    uid = UID(abstract_syntax)
    if uid.name == str(uid):
        return True  # pydicom does not know it: private, or newer than our libraries
    return uid.type == "SOP Class" and "Storage" in uid.name and "Commitment" not in uid.name


class Negotiator:
    """Thread-safe negotiation with a cache keyed by the request bytes."""

    def __init__(self, max_pdu_bytes: int, accept_unknown_sop_classes: bool = False) -> None:
        self.max_pdu_bytes = max_pdu_bytes
        self.accept_unknown_sop_classes = accept_unknown_sop_classes
        self._contexts = supported_contexts()
        self._known = {str(cx.abstract_syntax) for cx in self._contexts}
        self._cache: OrderedDict[bytes, Negotiated] = OrderedDict()
        self._lock = threading.Lock()

    def negotiate(self, rq_pdu: bytes) -> Negotiated:
        """Negotiate a complete A-ASSOCIATE-RQ PDU (header included)."""
        # Keyed by a digest: the cache holds 32 bytes per request, not the request.
        key = hashlib.sha256(rq_pdu).digest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        result = self._negotiate(rq_pdu)
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return result

    def _negotiate(self, rq_pdu: bytes) -> Negotiated:
        pdu = A_ASSOCIATE_RQ()
        try:
            pdu.decode(rq_pdu)
            request = pdu.to_primitive()
        except Exception as exc:  # pynetdicom raises many kinds on malformed input
            raise NegotiationError(f"malformed A-ASSOCIATE-RQ: {exc!r}") from None

        roles: dict[UID, tuple[bool | None, bool | None]] = {}
        user_info = request.user_information or []
        peer_max = 0
        impl_uid = impl_version = ""
        for item in user_info:
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation):
                if item.sop_class_uid is not None:
                    roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
            elif isinstance(item, MaximumLengthNotification):
                peer_max = int(item.maximum_length_received or 0)
            elif isinstance(item, ImplementationClassUIDNotification):
                impl_uid = str(item.implementation_class_uid or "")
            elif isinstance(item, ImplementationVersionNameNotification):
                impl_version = str(item.implementation_version_name or "")

        proposed = request.presentation_context_definition_list
        supported = self._contexts + self._unknown_storage(proposed)
        try:
            results, role_items = negotiate_as_acceptor(proposed, supported, roles or None)
        except Exception as exc:
            raise NegotiationError(f"cannot negotiate presentation contexts: {exc!r}") from None

        contexts = {
            cast(int, cx.context_id): AcceptedContext(
                str(cx.abstract_syntax), str(cx.transfer_syntax[0])
            )
            for cx in results
            if cx.result == 0x00
        }
        ac_pdu = self._encode_accept(request, results, role_items)
        return Negotiated(
            calling_ae=str(request.calling_ae_title or "").strip(),
            called_ae=str(request.called_ae_title or "").strip(),
            application_context=str(request.application_context_name or ""),
            protocol_version=int(getattr(pdu, "protocol_version", 1)),
            peer_max_pdu=peer_max,
            peer_implementation_uid=impl_uid,
            peer_implementation_version=impl_version,
            contexts=contexts,
            proposed=len(proposed),
            ac_pdu=ac_pdu,
        )

    def _unknown_storage(self, proposed: list[PresentationContext]) -> list[PresentationContext]:
        """Contexts for the proposed classes outside our list that we take for storage."""
        if not self.accept_unknown_sop_classes:
            return []
        extra = {str(cx.abstract_syntax) for cx in proposed} - self._known
        return [
            build_context(uid, ALL_TRANSFER_SYNTAXES)
            for uid in sorted(extra)
            if is_storage_to_accept(uid)
        ]

    def _encode_accept(
        self,
        request: A_ASSOCIATE,
        results: list[PresentationContext],
        role_items: list[SCP_SCU_RoleSelectionNegotiation],
    ) -> bytes:
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.max_pdu_bytes
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        impl_version = ImplementationVersionNameNotification()
        impl_version.implementation_version_name = IMPLEMENTATION_VERSION_NAME

        accept = A_ASSOCIATE()
        accept.application_context_name = APPLICATION_CONTEXT_NAME
        accept.calling_ae_title = request.calling_ae_title
        accept.called_ae_title = request.called_ae_title
        accept.result = 0x00
        accept.result_source = 0x01
        accept.presentation_context_definition_results_list = results
        accept.user_information = [max_length, impl_uid, impl_version, *role_items]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(accept)
        return pdu.encode()
