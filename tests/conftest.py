"""Fixtures shared by the unit and system tests."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from support.pki import make_pki
from support.service import Service, short_tempdir


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERMed run unwinds like an interrupted one: fixtures still stop
    the services, mounts and accounts they made (SIGTERM's default would
    leave them behind)."""
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path (Unix socket paths are limited)."""
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def service_factory(short_tmp: Path) -> Iterator[type[Service]]:
    """Make services under short_tmp; every one is stopped and checked at teardown."""
    made: list[Service] = []

    def make(**keys: object) -> Service:
        root = short_tmp / f"svc{len(made)}"
        root.mkdir()
        svc = Service(root, **keys)
        made.append(svc)
        return svc

    yield make  # type: ignore[misc]
    errors = []
    for svc in made:
        try:
            svc.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, errors


@pytest.fixture(scope="module")
def pki() -> Iterator[Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate."""
    root = short_tempdir("pki")
    make_pki(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def service(service_factory: type[Service]) -> Service:
    """A running service on its defaults (loopback, free port)."""
    return service_factory().start()


CRASH_REPORT = pytest.StashKey[list[str]]()


@pytest.fixture
def crash_report(request: pytest.FixtureRequest) -> list[str]:
    """Lines for the end-of-run table of what each kill test sent, got back and found."""
    return request.config.stash.setdefault(CRASH_REPORT, [])


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    rows = config.stash.get(CRASH_REPORT, [])
    if rows:
        terminalreporter.section("crash tests: instances sent / acknowledged / found")
        for row in rows:
            terminalreporter.write_line(row)
