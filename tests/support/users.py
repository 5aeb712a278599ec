"""Real unprivileged accounts for the tests, made with useradd and removed after.

Also: how such an account can run this checkout's storscp. The venv's
interpreter may live where only root can read it (pyenv under /root); then
the system's interpreter of the same version runs the venv's packages via
PYTHONPATH (scripts/bootstrap.sh --test installs it when missing).
"""

from __future__ import annotations

import functools
import os
import pwd
import secrets
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import storscp

REPO_ROOT = Path(storscp.__file__).resolve().parents[1]


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("creating accounts needs root (CI runs as root)")


@contextmanager
def temporary_group() -> Iterator[str]:
    require_root()
    name = f"storscp-g{secrets.token_hex(4)}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=True, capture_output=True)


@contextmanager
def temporary_user(groups: Sequence[str] = ()) -> Iterator[str]:
    """A system account with its own group and no home; removed at exit."""
    require_root()
    name = f"storscp-t{secrets.token_hex(4)}"
    extra = ["--groups", ",".join(groups)] if groups else []
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            *extra,
            name,
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)


def uid_of(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


@dataclass(frozen=True)
class Interpreter:
    """argv to run `python -m storscp` as any account, and the environment it needs."""

    argv: tuple[str, ...]
    env: dict[str, str]

    @property
    def storscp(self) -> list[str]:
        return [*self.argv, "-m", "storscp"]


def _works_for(user: str, argv: Sequence[str], env: dict[str, str]) -> bool:
    assignments = [f"{k}={v}" for k, v in env.items()]
    result = subprocess.run(
        ["runuser", "-u", user, "--", "env", *assignments, *argv, "-c", "import storscp.cli"],
        capture_output=True,
        cwd="/",
        timeout=60,
    )
    return result.returncode == 0


@functools.cache
def interpreter_for_others(user: str) -> Interpreter:
    """The venv's interpreter if any account can run it, else the system's one."""
    if _works_for(user, [sys.executable], {}):
        return Interpreter((sys.executable,), {})
    paths = sysconfig.get_paths()
    pythonpath = os.pathsep.join(
        dict.fromkeys([str(REPO_ROOT), paths["purelib"], paths["platlib"]])
    )
    env = {"PYTHONPATH": pythonpath}
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if Path(system).exists() and _works_for(user, [system], env):
        return Interpreter((system,), env)
    pytest.fail(
        f"no Python {sys.version_info.major}.{sys.version_info.minor} that {user} can run:"
        f" {sys.executable} is out of its reach and {system} is missing or unusable;"
        " run scripts/bootstrap.sh --test"
    )


def as_user(
    user: str, interpreter: Interpreter, args: Sequence[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run `storscp <args>` as `user` (runuser: a real uid change, no capabilities)."""
    assignments = [f"{k}={v}" for k, v in interpreter.env.items()]
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", *assignments, *interpreter.storscp, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=180,
    )
