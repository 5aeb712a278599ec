"""The head parser against pydicom: the same five identifiers, or "cannot tell", never wrong.

Datasets come from hypothesis, written by pydicom in all three uncompressed
transfer syntaxes, with sequences of defined and undefined length (nested,
holding decoy Study and Series UIDs) between the SOP UIDs and group 0020.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from storscp.receiver import sopuids
from storscp.receiver.sopuids import DatasetIds, from_file, from_head

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
uids = st.lists(st.integers(0, 99999), min_size=2, max_size=6).map(
    lambda parts: ".".join(str(p) for p in parts)
)


@st.composite
def items(draw: st.DrawFn, depth: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPInstanceUID = draw(uids)
    if draw(st.booleans()):
        item.SeriesInstanceUID = draw(uids)  # a decoy: not the dataset's own
        item.StudyInstanceUID = draw(uids)
    if depth < 3 and draw(st.booleans()):
        item.ReferencedImageSequence = draw(sequences(depth + 1))
    item.is_undefined_length_sequence_item = draw(st.booleans())
    return item


@st.composite
def sequences(draw: st.DrawFn, depth: int = 0) -> Sequence:
    return Sequence(draw(st.lists(items(depth), max_size=3)))


@st.composite
def datasets(draw: st.DrawFn) -> tuple[bytes, str, Dataset]:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = draw(uids)
    ds.SOPInstanceUID = draw(uids)
    ds.StudyDate = "20261127"
    if draw(st.booleans()):
        ds.Modality = draw(st.sampled_from(["CT", "MR", "OT", "SR"]))
    if draw(st.booleans()):
        ds.ReferencedImageSequence = draw(sequences())
        ds["ReferencedImageSequence"].is_undefined_length = draw(st.booleans())
    ds.PatientName = "TEST^" + draw(st.text("ABC", max_size=8))
    ds.SliceThickness = "1.25"
    if draw(st.booleans()):
        ds.OtherPatientIDsSequence = draw(sequences())
        ds["OtherPatientIDsSequence"].is_undefined_length = draw(st.booleans())
    if draw(st.booleans()):
        ds.StudyInstanceUID = draw(uids)
    if draw(st.booleans()):
        ds.SeriesInstanceUID = draw(uids)
    ds.InstanceNumber = 1
    ds.BitsAllocated = 16
    ds.PixelData = b"\x00\x01" * 8
    syntax = draw(st.sampled_from(SYNTAXES))
    fp = DicomBytesIO()
    fp.is_little_endian = syntax != ExplicitVRBigEndian
    fp.is_implicit_VR = syntax == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    return fp.getvalue(), syntax, ds


def expected(ds: Dataset) -> tuple[str | None, ...]:
    return tuple(
        str(ds[keyword].value) if keyword in ds else None
        for keyword in (
            "SOPClassUID",
            "SOPInstanceUID",
            "Modality",
            "StudyInstanceUID",
            "SeriesInstanceUID",
        )
    )


def found(ids: DatasetIds | None) -> tuple[str | None, ...] | None:
    if ids is None:
        return None
    values = (
        ids.sop_class_uid,
        ids.sop_instance_uid,
        ids.modality,
        ids.study_instance_uid,
        ids.series_instance_uid,
    )
    return tuple(v.rstrip("\x00 ") if v is not None else None for v in values)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.integers(0, 4000))
def test_head_parser_agrees_with_pydicom_or_cannot_tell(
    example: tuple[bytes, str, Dataset], cut: int
) -> None:
    data, syntax, ds = example
    want = expected(ds)
    # The whole dataset: always an answer, the right one
    assert found(from_head(data, syntax, complete=True)) == want
    # Any prefix of it: the right answer or "cannot tell", never a wrong one
    partial = found(from_head(data[:cut], syntax, complete=False))
    assert partial is None or partial == want


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_file_parser_agrees_with_pydicom(
    tmp_path_factory: pytest.TempPathFactory, example: tuple[bytes, str, Dataset]
) -> None:
    data, syntax, ds = example
    path = tmp_path_factory.mktemp("f") / "ds"
    path.write_bytes(b"junk" + data)
    assert found(from_file(path, 4, syntax)) == expected(ds)


def test_an_un_of_undefined_length_is_stepped_over_as_implicit_vr() -> None:
    def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value

    item = struct.pack("<HHL", 0x0020, 0x000E, 4) + b"9.9\x00"  # implicit VR inside
    un = (
        struct.pack("<HH", 0x0009, 0x1010)
        + b"UN\x00\x00"
        + struct.pack("<L", 0xFFFFFFFF)
        + struct.pack("<HHL", 0xFFFE, 0xE000, len(item))
        + item
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    )
    data = (
        element(0x0008, 0x0016, b"UI", b"1.2\x00")
        + element(0x0008, 0x0018, b"UI", b"1.3\x00")
        + un
        + element(0x0020, 0x000D, b"UI", b"1.4\x00")
        + element(0x0020, 0x000E, b"UI", b"1.5\x00")
    )
    want = ("1.2", "1.3", None, "1.4", "1.5")
    assert found(from_head(data, ExplicitVRLittleEndian, True)) == want


def test_nesting_deeper_than_the_bound_is_left_to_pydicom() -> None:
    inner = b""
    for _ in range(sopuids.MAX_DEPTH + 2):
        inner = (
            struct.pack("<HHL", 0x0008, 0x1140, 0xFFFFFFFF)
            + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
            + inner
            + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
            + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
        )
    data = struct.pack("<HHL", 0x0008, 0x0018, 4) + b"1.3\x00" + inner
    assert from_head(data, ImplicitVRLittleEndian, True) is None


def test_feed_fields_keep_valid_uids_only() -> None:
    ids = DatasetIds("1.2", "1.3", "CT\x1b[31m", "..", "1.2.3\x00")
    assert sopuids.study_series_modality(ids) == ("", "1.2.3", "CT[31m")
