"""Talking to a running supervisord over its control socket (XML-RPC)."""

from __future__ import annotations

import xmlrpc.client
from dataclasses import dataclass
from typing import Any, cast

from supervisor.xmlrpc import SupervisorTransport

from storscp.config import Config
from storscp.supervisor.conf import socket_path


class NotRunning(Exception):
    """No supervisord answers on the control socket."""


class AccessDenied(Exception):
    """The control socket exists but we may not use it."""


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    name: str
    group: str
    state: str
    pid: int
    description: str
    exitstatus: int


def rpc(config: Config) -> Any:
    """An XML-RPC proxy to supervisord's `supervisor` namespace."""
    transport = SupervisorTransport(None, None, f"unix://{socket_path(config)}")
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    return proxy.supervisor


def call(config: Config, method: str, *args: Any) -> Any:
    """Call one supervisord method, translating transport errors."""
    path = socket_path(config)
    if not path.exists():
        raise NotRunning(f"no control socket at {path}")
    try:
        return getattr(rpc(config), method)(*args)
    except PermissionError as exc:
        raise AccessDenied(str(exc)) from None
    except (OSError, ConnectionRefusedError, FileNotFoundError) as exc:
        if isinstance(exc, OSError) and exc.errno == 13:
            raise AccessDenied(str(exc)) from None
        raise NotRunning(str(exc)) from None


def is_running(config: Config) -> bool:
    try:
        return cast(str, call(config, "getState")["statename"]) in {"RUNNING", "RESTARTING"}
    except NotRunning:
        return False


def process_infos(config: Config) -> list[ProcessInfo]:
    return [
        ProcessInfo(
            name=p["name"],
            group=p["group"],
            state=p["statename"],
            pid=int(p["pid"]),
            description=p["description"],
            exitstatus=int(p["exitstatus"]),
        )
        for p in call(config, "getAllProcessInfo")
    ]


def supervisord_pid(config: Config) -> int:
    return int(call(config, "getPID"))


def shutdown(config: Config) -> None:
    call(config, "shutdown")
