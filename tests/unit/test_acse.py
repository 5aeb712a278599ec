"""Negotiation of presentation contexts: which abstract syntaxes are taken for storage."""

from __future__ import annotations

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from storscp.receiver.acse import Negotiator, is_storage_to_accept

CT = "1.2.840.10008.5.1.4.1.1.2"
PRIVATE = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image
NEWER_STANDARD = "1.2.840.10008.5.1.4.1.1.999999.1"  # not (yet) in any dictionary
HANGING_PROTOCOL = "1.2.840.10008.5.1.4.38.1"  # storage, known to pydicom, not to pynetdicom's list
FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"


def associate_rq(
    *abstract_syntaxes: str,
    syntax: str = ExplicitVRLittleEndian,
    calling: str = "SCU",
    called: str = "STORSCP",
    max_pdu: int = 16384,
) -> bytes:
    """A complete A-ASSOCIATE-RQ PDU proposing each abstract syntax in `syntax`."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    contexts = []
    for i, abstract_syntax in enumerate(abstract_syntaxes):
        context = build_context(abstract_syntax, [syntax])
        context.context_id = 2 * i + 1
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


@pytest.mark.parametrize(
    ("uid", "taken"),
    [
        (PRIVATE, True),
        (NEWER_STANDARD, True),
        (HANGING_PROTOCOL, True),
        (FIND, False),
        (STORAGE_COMMITMENT, False),
        (ExplicitVRLittleEndian, False),  # a transfer syntax is no SOP class
        ("1.02.3", False),  # not a valid UID: it would become a file name's neighbour
        ("", False),
    ],
)
def test_issue_10_which_unknown_abstract_syntaxes_are_storage(uid: str, taken: bool) -> None:
    assert is_storage_to_accept(uid) is taken


def test_issue_10_unknown_storage_classes_are_accepted_with_the_proposed_syntax() -> None:
    rq = associate_rq(CT, PRIVATE, NEWER_STANDARD, FIND, syntax=ImplicitVRLittleEndian)
    accepted = Negotiator(16384, accept_unknown_sop_classes=True).negotiate(rq).contexts
    assert {c.abstract_syntax: c.transfer_syntax for c in accepted.values()} == {
        CT: ImplicitVRLittleEndian,
        PRIVATE: ImplicitVRLittleEndian,
        NEWER_STANDARD: ImplicitVRLittleEndian,
    }
    off = Negotiator(16384, accept_unknown_sop_classes=False).negotiate(rq).contexts
    assert [c.abstract_syntax for c in off.values()] == [CT]


def test_issue_16_a_repeated_request_is_negotiated_once() -> None:
    negotiator = Negotiator(16384)
    first = negotiator.negotiate(associate_rq(CT))
    assert negotiator.negotiate(associate_rq(CT)) is first


def test_issue_16_the_cache_never_answers_one_request_with_another_ones_result() -> None:
    """Requests that differ in one field only each get their own negotiation,
    whichever of them was cached first (the cache is keyed by the whole request)."""
    negotiator = Negotiator(16384)
    base = negotiator.negotiate(associate_rq(CT))
    assert (base.calling_ae, base.called_ae, base.peer_max_pdu) == ("SCU", "STORSCP", 16384)

    calling = negotiator.negotiate(associate_rq(CT, calling="OTHER"))
    assert (calling.calling_ae, calling.called_ae) == ("OTHER", "STORSCP")
    called = negotiator.negotiate(associate_rq(CT, called="NOT_US"))
    assert (called.calling_ae, called.called_ae) == ("SCU", "NOT_US")
    assert negotiator.negotiate(associate_rq(CT, max_pdu=0)).peer_max_pdu == 0
    assert negotiator.negotiate(associate_rq(CT, max_pdu=4096)).peer_max_pdu == 4096

    implicit = negotiator.negotiate(associate_rq(CT, syntax=ImplicitVRLittleEndian))
    assert [c.transfer_syntax for c in implicit.contexts.values()] == [ImplicitVRLittleEndian]
    refused = negotiator.negotiate(associate_rq(FIND))
    assert refused.contexts == {}
    two = negotiator.negotiate(associate_rq(CT, HANGING_PROTOCOL))
    assert sorted(c.abstract_syntax for c in two.contexts.values()) == [CT]
    assert two.proposed == 2
    # Each answer names the requester's AE titles, as its request did.
    for result in (base, calling, called, implicit, refused, two):
        assert result.ac_pdu[10:26].strip() == result.called_ae.encode()
        assert result.ac_pdu[26:42].strip() == result.calling_ae.encode()
    # And the first one is still what it was.
    assert negotiator.negotiate(associate_rq(CT)) is base
