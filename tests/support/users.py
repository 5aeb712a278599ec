"""Real unprivileged accounts for the tests, made with useradd and removed after.

Also: how such an account can run this checkout's storscp. The venv's
interpreter may live where only root can read it (pyenv under /root); then
the system's interpreter of the same version runs the venv's packages via
PYTHONPATH (scripts/bootstrap.sh --test installs it when missing). When the
checkout itself is out of reach too (cloned into root's 0700 home), the code
under test and its runtime libraries are copied, once per test session,
into a directory under /tmp that every account can read.
"""

from __future__ import annotations

import atexit
import compileall
import functools
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
    """The venv's interpreter if any account can run it, else the system's one
    with the venv's packages, or with a copy of them where `user` can read it."""
    if _works_for(user, [sys.executable], {}):
        return Interpreter((sys.executable,), {})
    paths = sysconfig.get_paths()
    pythonpath = os.pathsep.join(
        dict.fromkeys([str(REPO_ROOT), paths["purelib"], paths["platlib"]])
    )
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if Path(system).exists():
        for where in ("here", "copy"):
            env = {"PYTHONPATH": pythonpath if where == "here" else _copy_for_others()}
            if _works_for(user, [system], env):
                return Interpreter((system,), env)
    pytest.fail(
        f"no Python {sys.version_info.major}.{sys.version_info.minor} that {user} can run:"
        f" {sys.executable} is out of its reach and {system} is missing or unusable;"
        " run scripts/bootstrap.sh --test"
    )


@functools.cache
def _copy_for_others() -> str:
    """storscp and its runtime libraries, copied where every account can read them.

    For a checkout no other account can reach (root's home is 0700). The
    copy is precompiled: an account that cannot write `__pycache__` would
    otherwise compile pydicom at every start of every component.
    """
    root = Path(tempfile.mkdtemp(prefix="storscp-for-others-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    shutil.copytree(
        REPO_ROOT / "storscp", root / "storscp", ignore=shutil.ignore_patterns("__pycache__")
    )
    for dist in _runtime_distributions("storscp"):
        for file in dist.files or ():
            source = Path(str(dist.locate_file(file)))
            if ".." not in file.parts and source.is_file():
                (root / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, root / file)
    compileall.compile_dir(root, quiet=1)
    for directory, _dirs, files in os.walk(root):
        os.chmod(directory, 0o755)
        for name in files:
            path = os.path.join(directory, name)
            os.chmod(path, os.stat(path).st_mode | 0o444)
    return str(root)


def _runtime_distributions(name: str) -> list[metadata.Distribution]:
    """The distributions `name` needs to run (no extras), without `name` itself."""
    found: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        for line in metadata.requires(todo.pop()) or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            key = canonicalize_name(requirement.name)
            if key not in found and key != canonicalize_name(name):
                found[key] = metadata.distribution(requirement.name)
                todo.append(requirement.name)
    return list(found.values())


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
