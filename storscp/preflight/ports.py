"""The ports: taken ones refused before supervisord starts, port 0 made concrete."""

from __future__ import annotations

import contextlib
import errno
import socket
from dataclasses import replace

from storscp.config import Config
from storscp.errors import CommandRefused
from storscp.exitcodes import ExitCode


def with_ports(config: Config, running: Config | None = None) -> Config:
    """Fail early if a port is taken; turn port 0 into a free port (plain, TLS, metrics).

    The feed's TCP endpoints, if any, are probed too (they never use port 0).

    A port the `running` service (being restarted) already listens on is
    kept without probing: our own receiver holds it.
    """
    with contextlib.ExitStack() as probes:
        # All probes stay bound until every port is known: never one free port twice.
        port = config.port
        if running is not None and port in (0, running.port):
            port = running.port
        else:
            port = _probe_port(probes, config.host, port, "port")
        tls = config.tls
        if tls is not None:
            held = running.tls.port if running is not None and running.tls else None
            if held is not None and tls.port in (0, held):
                tls = replace(tls, port=held)
            else:
                tls = replace(tls, port=_probe_port(probes, config.host, tls.port, "[tls] port"))
        metrics = config.metrics
        if config.metrics_address is not None:
            metrics = _metrics_port(probes, config.metrics_address, running)
        for key in ("feed_live_endpoint", "feed_replay_endpoint"):
            endpoint = getattr(config, key)
            held = running is not None and getattr(running, key) == endpoint
            if endpoint.startswith("tcp://") and not held:
                host, _, number = endpoint[len("tcp://") :].rpartition(":")
                host = host.strip("[]").replace("*", "0.0.0.0")
                _probe_port(probes, host, int(number), key)
    return replace(config, port=port, tls=tls, metrics=metrics)


def _metrics_port(
    probes: contextlib.ExitStack, address: tuple[str, int], running: Config | None
) -> str:
    """`metrics` with a concrete port: port 0 picks one, a restart keeps its own."""
    host, port = address
    held = running.metrics_address if running is not None else None
    if held is not None and held[0] == host and port in (0, held[1]):
        port = held[1]
    else:
        port = _probe_port(probes, host, port, "metrics")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _probe_port(probes: contextlib.ExitStack, host: str, port: int, key: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = probes.enter_context(socket.socket(family, socket.SOCK_STREAM))
    # As the receiver binds: TIME_WAIT leftovers must not count as "in use".
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
        probe.listen(1)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CommandRefused(
                ExitCode.UNAVAILABLE, f"{key} {port} on {host} is already in use"
            ) from None
        raise CommandRefused(
            ExitCode.UNAVAILABLE, f"cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    return int(probe.getsockname()[1])
