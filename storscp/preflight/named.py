"""What the configuration names outside itself: accounts and TLS files.

The Config is a pure value; whether `user` and `admin_group` exist here and
whether the receiver can read its certificate and key is checked once,
before a start, by the command that starts the service. TLS files are the
receiver's alone: checked as the account it runs as (see
`component_account`), so a key only root can read is refused at the start,
while the logger and committer never look at it.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

from storscp.config import Config, ConfigError


def check_accounts(config: Config) -> None:
    """`user` and `admin_group` must name an account that exists on this system."""
    if config.user:
        try:
            pwd.getpwnam(config.user)
        except KeyError:
            raise ConfigError(
                f"{config.source}: key 'user' names no user on this system: {config.user!r}"
            ) from None
    if config.admin_group:
        try:
            grp.getgrnam(config.admin_group)
        except KeyError:
            raise ConfigError(
                f"{config.source}: key 'admin_group' names no group on this system:"
                f" {config.admin_group!r}"
            ) from None


def tls_files(config: Config) -> dict[str, Path]:
    """The `[tls]` files the receiver reads: key name -> path."""
    if config.tls is None:
        return {}
    named = {
        "certificate": config.tls.certificate,
        "private_key": config.tls.private_key,
        "ca_file": config.tls.ca_file,
    }
    return {key: path for key, path in named.items() if path is not None}


def unreadable_tls_message(config: Config, path: Path, who: str) -> str:
    """Key, file and account of a TLS file the receiver could not read."""
    key = next((k for k, p in tls_files(config).items() if p == path), "file")
    why = "does not exist" if not path.exists() else f"is not readable by {who}"
    return f"{config.source}: [tls] key {key!r}: {path} {why}"


def check_tls_files(config: Config) -> None:
    """Without `user` the receiver runs as us: we must be able to read its files."""
    for path in tls_files(config).values():
        if not os.access(path, os.R_OK):
            raise ConfigError(unreadable_tls_message(config, path, f"uid {os.geteuid()}"))
