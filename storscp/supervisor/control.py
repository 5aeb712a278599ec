"""Talking to a running supervisord over its control socket (XML-RPC).

Who may talk is decided by the socket's permissions (see conf.socket_mode):
a refused connection means "not running", a permission error "not allowed".
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from dataclasses import dataclass
from typing import Any, cast

from supervisor.xmlrpc import Faults, SupervisorTransport

from storscp.config import Config
from storscp.errors import StorscpError
from storscp.supervisor.conf import socket_path


class NotRunning(StorscpError):
    """No supervisord answers on the control socket."""


class AccessDenied(StorscpError):
    """The control socket exists but we may not use it."""


class NotAnswering(StorscpError):
    """supervisord accepted the connection but did not answer in time (hung, stopped)."""


# Every call returns at once unless supervisord is stuck; then say so, never hang.
CALL_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process as supervisord sees it; `name` may be `group:process`."""

    group: str
    process: str
    state: str
    pid: int
    start: int
    now: int
    description: str
    spawnerr: str

    @property
    def name(self) -> str:
        return self.process if self.process == self.group else f"{self.group}:{self.process}"

    @property
    def uptime_s(self) -> int:
        return max(0, self.now - self.start) if self.state == "RUNNING" else 0


def rpc(config: Config) -> Any:
    """An XML-RPC proxy to supervisord's `supervisor` namespace."""
    transport = SupervisorTransport(None, None, f"unix://{socket_path(config)}")
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    return proxy.supervisor


def call(config: Config, method: str, *args: Any) -> Any:
    """Call one supervisord method, translating transport errors."""
    path = socket_path(config)
    try:
        path.stat()
    except PermissionError as exc:  # run_dir is not ours to enter
        raise AccessDenied(str(exc)) from None
    except OSError as exc:
        raise NotRunning(f"no control socket at {path}: {exc.strerror}") from None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(CALL_TIMEOUT_S)  # SupervisorTransport has no timeout of its own
    try:
        return getattr(rpc(config), method)(*args)
    except TimeoutError:
        raise NotAnswering(
            f"supervisord did not answer on {path} within {CALL_TIMEOUT_S:.0f}s"
        ) from None
    except PermissionError as exc:
        raise AccessDenied(str(exc)) from None
    except xmlrpc.client.Fault as exc:
        if exc.faultCode == Faults.SHUTDOWN_STATE:
            raise NotRunning("supervisord is shutting down") from None
        raise
    except (OSError, http.client.HTTPException) as exc:
        # ECONNREFUSED: a stale socket left by a supervisord that was killed.
        raise NotRunning(str(exc)) from None
    finally:
        socket.setdefaulttimeout(previous)


def state(config: Config) -> str:
    """supervisord's own state: RUNNING, RESTARTING, SHUTDOWN..."""
    return cast(str, call(config, "getState")["statename"])


def is_running(config: Config) -> bool:
    """Whether a supervisord answers (AccessDenied propagates: it does, but not to us)."""
    try:
        return state(config) in {"RUNNING", "RESTARTING"}
    except NotRunning:
        return False


def process_infos(config: Config) -> list[ProcessInfo]:
    return [
        ProcessInfo(
            group=p["group"],
            process=p["name"],
            state=p["statename"],
            pid=int(p["pid"]),
            start=int(p["start"]),
            now=int(p["now"]),
            description=p["description"],
            spawnerr=p.get("spawnerr", ""),
        )
        for p in call(config, "getAllProcessInfo")
    ]


def supervisord_pid(config: Config) -> int:
    return int(call(config, "getPID"))


def shutdown(config: Config) -> None:
    call(config, "shutdown")


def restart(config: Config) -> None:
    """Stop every process, re-read supervisord.conf and start again, same pid."""
    call(config, "restart")
