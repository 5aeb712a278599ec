"""Parsing N-ACTION Action Information and building the report, against pydicom."""

from __future__ import annotations

import contextlib
from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode

from storscp.commitmentinfo import (
    ActionRefused,
    ActionStatus,
    EventType,
    Failure,
    FailureReason,
    Report,
    encode_event_information,
    event_information,
    max_action_bytes,
    parse_action_information,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
TX = "1.2.826.0.1.3680043.10.1426.9.77"


def action(transaction: str | None, refs: list[tuple[str, str]] | None, implicit: bool) -> bytes:
    ds = Dataset()
    if transaction is not None:
        ds.TransactionUID = transaction
    if refs is not None:
        items = []
        for cls, uid in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = cls
            item.ReferencedSOPInstanceUID = uid
            items.append(item)
        ds.ReferencedSOPSequence = Sequence(items)
    data = encode(ds, implicit, True)
    assert data is not None
    return data


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_a_valid_request_is_read_in_both_syntaxes(syntax: str) -> None:
    refs = [(CT, f"1.2.3.{i}") for i in range(1, 6)]
    info = parse_action_information(action(TX, refs, syntax == ImplicitVRLittleEndian), syntax, 10)
    assert info.transaction_uid == TX
    assert list(info.references) == refs


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    ("transaction", "refs", "status", "needle"),
    [
        (None, [(CT, "1.2.3")], ActionStatus.INVALID_ARGUMENT_VALUE, "no Transaction UID"),
        ("1.02.3", [(CT, "1.2.3")], ActionStatus.INVALID_ARGUMENT_VALUE, "Transaction UID"),
        (TX, None, ActionStatus.INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence"),
        (TX, [], ActionStatus.INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence"),
        (TX, [(CT, "1.2.x")], ActionStatus.INVALID_ARGUMENT_VALUE, "item 1"),
        (TX, [(CT, "1.2.3"), ("", "1.2.4")], ActionStatus.INVALID_ARGUMENT_VALUE, "item 2"),
        (TX, [(CT, f"1.2.{i}") for i in range(1, 12)], ActionStatus.RESOURCE_LIMITATION, "11"),
    ],
)
def test_unusable_requests_are_refused_with_a_status_and_a_reason(
    transaction: str | None, refs: list[tuple[str, str]] | None, status: int, needle: str
) -> None:
    with pytest.raises(ActionRefused) as info:
        parse_action_information(action(transaction, refs, True), ImplicitVRLittleEndian, 10)
    assert info.value.status == status
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "data", [b"\xff" * 7, b"\x08\x00\x99\x11\xff\xff\xff\xff\xfe\xff", b"", b"\x08\x00\x95\x11"]
)
def test_garbage_is_refused_not_raised(data: bytes) -> None:
    with pytest.raises(ActionRefused) as info:
        parse_action_information(data, ImplicitVRLittleEndian, 10)
    assert info.value.status == ActionStatus.INVALID_ARGUMENT_VALUE


def test_a_request_of_max_references_fits_the_byte_limit() -> None:
    # 64-character UIDs, the longest there are.
    refs = [(CT, "1.2.826.0.1.3680043.10.1426.9." + "9" * 29 + f".{i:04d}") for i in range(4096)]
    refs = [(cls, uid.replace(".0", ".1")) for cls, uid in refs]
    assert len(action(TX, refs, False)) <= max_action_bytes(4096)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_the_report_reads_back_with_pydicom(syntax: str) -> None:
    report = Report(
        TX,
        ((CT, "1.2.3.1"), (CT, "1.2.3.2")),
        (
            Failure(CT, "1.2.3.3", FailureReason.NO_SUCH_OBJECT_INSTANCE),
            Failure(CT, "1.2.3.4", FailureReason.CLASS_INSTANCE_CONFLICT),
        ),
    )
    assert report.event_type == EventType.FAILURES_EXIST
    data = encode_event_information(report, syntax)
    ds = read_dataset(BytesIO(data), syntax == ImplicitVRLittleEndian, True)
    assert ds.TransactionUID == TX
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == ["1.2.3.1", "1.2.3.2"]
    assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in ds.FailedSOPSequence] == [
        ("1.2.3.3", 0x0112),
        ("1.2.3.4", 0x0119),
    ]


def test_an_all_committed_report_has_no_failed_sequence() -> None:
    report = Report(TX, ((CT, "1.2.3.1"),), ())
    assert report.event_type == EventType.ALL_COMMITTED
    ds = read_dataset(BytesIO(encode_event_information(report, ImplicitVRLittleEndian)), True, True)
    assert "FailedSOPSequence" not in ds and len(ds.ReferencedSOPSequence) == 1


uids = st.lists(st.integers(0, 99999), min_size=2, max_size=8).map(
    lambda parts: ".".join(str(p) for p in parts)
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[Dataset, str, list[tuple[str, str]]]:
    """An N-ACTION dataset as SCUs write them: lengths defined or not, extra attributes."""
    transaction = draw(uids)
    refs = draw(st.lists(st.tuples(uids, uids), min_size=1, max_size=6))
    ds = Dataset()
    ds.TransactionUID = transaction
    if draw(st.booleans()):
        ds.RetrieveAETitle = "ARCHIVE"
    if draw(st.booleans()):
        ds.StorageMediaFileSetID = "DISC 1"
    items = []
    for cls, uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = uid
        if draw(st.booleans()):
            item.StorageMediaFileSetUID = transaction
        if draw(st.booleans()):
            inner = Dataset()
            inner.CodeValue = "X"
            item.PurposeOfReferenceCodeSequence = Sequence([inner])
            item.PurposeOfReferenceCodeSequence.is_undefined_length = draw(st.booleans())
            inner.is_undefined_length_sequence_item = draw(st.booleans())
        item.is_undefined_length_sequence_item = draw(st.booleans())
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    ds.ReferencedSOPSequence.is_undefined_length = draw(st.booleans())
    if draw(st.booleans()):
        ds.add_new(0x00091010, "LO", "private")
    return ds, transaction, refs


@settings(max_examples=200, deadline=None)
@given(requests(), st.booleans())
def test_our_reader_agrees_with_pydicom(
    request: tuple[Dataset, str, list[tuple[str, str]]], implicit: bool
) -> None:
    ds, transaction, refs = request
    data = encode(ds, implicit, True)
    assert data is not None
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    back = read_dataset(BytesIO(data), implicit, True)
    theirs = [
        (i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in back.ReferencedSOPSequence
    ]
    info = parse_action_information(data, syntax, 10)
    assert (info.transaction_uid, list(info.references)) == (back.TransactionUID, theirs)
    assert theirs == refs and info.transaction_uid == transaction


@settings(max_examples=300, deadline=None)
@given(requests(), st.booleans(), st.data())
def test_damaged_requests_are_refused_never_raised(
    request: tuple[Dataset, str, list[tuple[str, str]]], implicit: bool, data: st.DataObject
) -> None:
    encoded = encode(request[0], implicit, True)
    assert encoded is not None
    raw = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    with contextlib.suppress(ActionRefused):
        parse_action_information(bytes(raw[:cut]), syntax, 10)


@settings(max_examples=100, deadline=None)
@given(
    uids,
    st.lists(st.tuples(uids, uids), max_size=5),
    st.lists(st.tuples(uids, uids, st.sampled_from(list(FailureReason))), max_size=5),
    st.booleans(),
)
def test_our_report_is_byte_equal_to_pydicoms(
    transaction: str,
    committed: list[tuple[str, str]],
    failed: list[tuple[str, str, FailureReason]],
    implicit: bool,
) -> None:
    report = Report(transaction, tuple(committed), tuple(Failure(*f) for f in failed))
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    assert encode_event_information(report, syntax) == encode(
        event_information(report), implicit, True
    )
