"""Deterministic synthetic DICOM files for the tests and the benchmark.

Pixel data are pseudo-random bytes from a seeded generator, so a file is
the same on every run and compressible codecs have real work to do.
"""

from __future__ import annotations

import random
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

UID_ROOT = "1.2.826.0.1.3680043.10.1426.9."


def uid_for(seed: int | str) -> str:
    """A valid UID that is the same for the same seed."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[str(seed)])


def _base(
    sop_class: str,
    uid: str,
    seed: int,
    transfer_syntax: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(uid)
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = study_uid or uid_for(f"study-{seed // 1000}")
    ds.SeriesInstanceUID = series_uid or uid_for(f"series-{seed // 100}")
    ds.PatientName = f"TEST^PATIENT{seed % 97}"
    ds.PatientID = f"P{seed % 97:05d}"
    ds.StudyDate = "20261127"
    ds.Modality = {CT: "CT", MR: "MR"}.get(sop_class, "OT")
    ds.InstanceNumber = seed % 10000
    return ds


def make_image(
    path: Path,
    sop_class: str = CT,
    *,
    seed: int,
    rows: int = 64,
    columns: int = 64,
    frames: int = 1,
    uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_name: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> str:
    """Write an uncompressed 16-bit monochrome image; return its SOP Instance UID.

    Study and Series UIDs follow the seed unless given (given ones are written
    as they are, valid or not).
    """
    uid = uid or uid_for(f"img-{seed}")
    ds = _base(sop_class, uid, seed, transfer_syntax, study_uid, series_uid)
    if patient_name is not None:
        ds.PatientName = patient_name
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    rng = random.Random(seed)
    # Values in 0..4095 (12 bits stored), little-endian words.
    pixel_bytes = rows * columns * frames * 2
    raw = bytearray(_random_bytes(rng, pixel_bytes))
    raw[1::2] = bytes(b & 0x0F for b in raw[1::2]) if pixel_bytes <= 8_000_000 else raw[1::2]
    ds.PixelData = bytes(raw)
    if transfer_syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    dcmwrite(path, ds, enforce_file_format=True)
    return uid


def _random_bytes(rng: random.Random, n: int) -> bytes:
    """randbytes() in one call up to 64 MiB (as before), in pieces beyond its limit."""
    piece = 64 * 1024 * 1024
    if n <= piece:
        return rng.randbytes(n)
    return b"".join(rng.randbytes(min(piece, n - i)) for i in range(0, n, piece))


def make_pdf(path: Path, *, seed: int, uid: str | None = None) -> str:
    """Write an Encapsulated PDF instance (a non-image SOP class)."""
    uid = uid or uid_for(f"pdf-{seed}")
    ds = _base(ENCAPSULATED_PDF, uid, seed, ExplicitVRLittleEndian)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.DocumentTitle = f"Report {seed}"
    body = b"%PDF-1.4\n% storscp test document " + str(seed).encode() + b"\n%%EOF\n"
    if len(body) % 2:
        body += b"\n"
    ds.EncapsulatedDocument = body
    dcmwrite(path, ds, enforce_file_format=True)
    return uid


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta information of a Part 10 file."""
    data = path.read_bytes()
    if data[128:132] != b"DICM":
        raise ValueError(f"{path} is not a Part 10 file")
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


def dataset_offset(path: Path) -> int:
    with open(path, "rb") as fh:
        head = fh.read(144)
    return 144 + int.from_bytes(head[140:144], "little")
