"""The TLS side of the receiver: an SSL context from the `[tls]` table.

TLS 1.2 or newer (configurable to 1.3 only), the operating system's default
cipher choice, and, when `ca_file` is given, client certificates required
and verified against it (mutual TLS, as DICOM's secure transport profiles
expect).
"""

from __future__ import annotations

import os
import ssl
from typing import cast

from storscp.config import TlsConfig
from storscp.errors import StorscpError

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsSetupError(StorscpError):
    """The certificate, key or CA file cannot be used; the message says which."""


def make_tls_context(tls: TlsConfig) -> ssl.SSLContext:
    for key in ("certificate", "private_key", "ca_file"):
        path = getattr(tls, key)
        try:
            if path is not None:
                open(path, "rb").close()
        except OSError as exc:
            # OpenSSL would say "Permission denied" without saying which file.
            raise TlsSetupError(
                f"[tls] {key} {path} cannot be read by uid {os.geteuid()}: {exc.strerror}"
            ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[tls.min_version]
    # An end of input without close_notify is just the end of input: a stop
    # shuts our reading side down to wake the connection's thread, which must
    # still be able to send its A-ABORT (OpenSSL 3 would otherwise fail the
    # connection and send an alert). DICOM's PDU lengths detect truncation.
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    try:
        context.load_cert_chain(tls.certificate, tls.private_key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(
            f"[tls] certificate {tls.certificate} / private_key {tls.private_key}"
            f" cannot be loaded: {exc}"
        ) from None
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"[tls] ca_file {tls.ca_file} cannot be loaded: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_subject(sock: ssl.SSLSocket) -> str:
    """The client certificate's subject as one line, or '' without one."""
    cert = sock.getpeercert()
    if not cert:
        return ""
    subject = cast(tuple[tuple[tuple[str, str], ...], ...], cert.get("subject", ()))
    return ",".join(f"{key}={value}" for rdn in subject for key, value in rdn)
