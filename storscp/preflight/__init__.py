"""Everything `storscp run|start|restart` checks and prepares before supervisord.

A start that cannot work is refused here with one clear sentence (which
path, which key, why) instead of a component going FATAL later: storage
directory missing or not writable, depot or log directory not creatable,
port taken, run_dir not ours, the `user` account unable to run us.

Here: who the components run as, and how a path they cannot write is named.
`directories` prepares run_dir, storage, depot and logs; `component_account`
checks that the `user` account can run us; `ports` probes the ports;
`leftovers` finds what a supervisord that died left behind.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from storscp.config import Config

STORAGE_DIR_MESSAGE = "An existing Storage SCP directory must be specified"


@dataclass(frozen=True, slots=True)
class Account:
    """Who the components run as: uid, gid and supplementary groups."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def named(cls, name: str) -> Account:
        entry = pwd.getpwnam(name)
        groups = tuple(os.getgrouplist(name, entry.pw_gid))
        return cls(name, entry.pw_uid, entry.pw_gid, groups)


def service_account(config: Config) -> Account | None:
    """The `user` account if it differs from us, else None (we are the service)."""
    if not config.user:
        return None
    account = Account.named(config.user)
    return None if account.uid == os.geteuid() else account


def _who(account: Account | None) -> str:
    if account is None:
        return f"uid {os.geteuid()}"
    return f"user {account.name} (uid {account.uid})"


def not_writable_message(config: Config, path: Path, account: Account | None) -> str:
    who = _who(account)
    if path == config.storage_dir:
        return f"{STORAGE_DIR_MESSAGE}: {path} is not writable by {who}"
    if path == config.depot_dir:
        return f"depot {path} is not writable by {who}"
    if path == config.log_dir:
        return f"log_dir {path} is not writable by {who}"
    return f"{path} is not writable by {who}"
