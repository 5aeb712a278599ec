"""A throw-away PKI for the TLS tests: a CA, a server and a client certificate (openssl)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(root: Path) -> None:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate in `root`."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        str(root / "ca.key"),
        "-out",
        str(root / "ca.pem"),
        "-subj",
        "/CN=storscp test CA",
    )
    for name, extra in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(root / f"{name}.key"),
            "-out",
            str(root / f"{name}.csr"),
            "-subj",
            f"/CN=storscp test {name}",
        )
        ext = root / f"{name}.ext"
        ext.write_text(extra + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            str(root / f"{name}.csr"),
            "-CA",
            str(root / "ca.pem"),
            "-CAkey",
            str(root / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            str(root / f"{name}.pem"),
            "-extfile",
            str(ext),
        )
