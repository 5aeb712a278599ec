"""Every exception storscp defines derives from StorscpError (STYLE: one base class)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import storscp
from storscp.errors import StorscpError


def test_every_exception_of_storscp_is_a_storscp_error() -> None:
    # Given every module of the package (entry points excluded: they run on import)
    names = [
        info.name
        for info in pkgutil.walk_packages(storscp.__path__, "storscp.")
        if not info.name.endswith(".__main__")
    ]
    # When we collect the exception classes each one defines
    ours = [
        cls
        for name in names
        for cls in vars(importlib.import_module(name)).values()
        if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == name
    ]
    # Then there are some, and all of them share the one base
    assert len(ours) > 10
    assert [cls for cls in ours if not issubclass(cls, StorscpError)] == []
