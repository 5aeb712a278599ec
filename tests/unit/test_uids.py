from __future__ import annotations

from pathlib import Path

import pytest

from storscp.uids import UIDError, check_uid, storage_path


@pytest.mark.parametrize(
    "uid",
    ["1.2.840.10008.1.2", "0", "1.0.3", "1.2.3\x00", "1.2.3 ", "1." + "2" * 62],
)
def test_valid(uid: str) -> None:
    assert check_uid(uid) == uid.rstrip("\x00 ")


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "../../x",
        "1.2/../3",
        "/etc/passwd",
        "1.2.\x003",
        "1..2",
        ".1.2",
        "1.2.",
        "1.02",
        "1.2a",
        "1.2.3\x00\x00",
        "1.2.3  ",
        "1." + "2" * 63,
        "\uff11.\uff12",
        "1.2\n",
    ],
)
def test_invalid(uid: str) -> None:
    with pytest.raises(UIDError):
        check_uid(uid)


def test_storage_path_stays_in_the_directory(tmp_path: Path) -> None:
    assert storage_path(tmp_path, "1.2.3", ".dcm") == tmp_path / "1.2.3.dcm"
    with pytest.raises(UIDError):
        storage_path(tmp_path, "../1.2", ".dcm")
