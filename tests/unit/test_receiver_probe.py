"""The receiver tries its ports and certificate before it loads the DICOM libraries."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from storscp.config import load
from storscp.receiver.main import probe_listen
from storscp.receiver.tls import TlsSetupError


def test_a_port_taken_by_another_program_fails_the_probe(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        config = load(None, {"host": "127.0.0.1", "port": port}, base_dir=tmp_path)
        with pytest.raises(OSError) as info:
            probe_listen(config)
        assert info.value.errno == errno.EADDRINUSE


def test_a_certificate_that_is_not_one_fails_the_probe(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    path = tmp_path / "s.toml"
    path.write_text(
        'host = "127.0.0.1"\nport = 0\n'
        f'[tls]\nport = 0\ncertificate = "{bogus}"\nprivate_key = "{bogus}"\n'
    )
    with pytest.raises(TlsSetupError):
        probe_listen(load(path, base_dir=tmp_path))


def test_the_receiver_entry_point_does_not_import_the_dicom_libraries() -> None:
    code = (
        "import sys, storscp.receiver.main;"
        " print(sorted(m for m in ('pydicom', 'pynetdicom') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
