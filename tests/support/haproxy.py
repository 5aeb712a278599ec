"""A real HAProxy (Debian's `haproxy`) in front of storscp nodes, for a test.

`mode tcp`, `balance leastconn`, the servers' PROXY header (`send-proxy-v2`
by default) and storscp's own health check (an association, from
storscp.balancer), as in deploy/haproxy.cfg but with short timers. HAProxy
cannot bind port 0, so a free loopback port is probed first and the start
retried on the rare clash. Its runtime socket answers `show stat`, which
says whether each node is UP or DOWN. Stopping kills its process group.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from storscp.balancer import haproxy_check_lines

from .service import poll_for

HAPROXY = "/usr/sbin/haproxy"


@dataclass(frozen=True)
class Backend:
    name: str
    host: str
    port: int


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class HAProxy:
    """One haproxy process; `port` is its frontend."""

    def __init__(
        self,
        root: Path,
        backends: Sequence[Backend],
        *,
        ae_title: str = "STORSCP",
        send_proxy: str = "send-proxy-v2",
        check_inter_ms: int = 300,
        host: str = "127.0.0.1",
        health_check: bool = True,
    ) -> None:
        """`health_check` False: no check, servers count as UP (a TLS port behind its plain one)."""
        self.root = root
        self.backends = list(backends)
        self.ae_title = ae_title
        self.send_proxy = send_proxy
        self.check_inter_ms = check_inter_ms
        self.host = host
        self.health_check = health_check
        self.port = 0
        self.config_path = root / "haproxy.cfg"
        self.stats_socket = root / "haproxy.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def render(self) -> str:
        lines = haproxy_check_lines(self.ae_title) if self.health_check else []
        check = "\n".join(f"    {line}" for line in lines)
        checked = f" check inter {self.check_inter_ms}ms fall 2 rise 1" if self.health_check else ""
        servers = "\n".join(
            f"    server {b.name} {b.host}:{b.port} {self.send_proxy}{checked}"
            for b in self.backends
        )
        return f"""global
    stats socket {self.stats_socket} mode 600 level admin
    maxconn 1000

defaults
    mode tcp
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout check 2s
    retries 2
    option redispatch

frontend dicom
    bind {self.host}:{self.port}
    default_backend nodes

backend nodes
    balance leastconn
{check}
{servers}
"""

    def start(self, timeout_s: float = 15.0) -> HAProxy:
        for _attempt in range(5):
            self.port = free_port(self.host)
            self.config_path.write_text(self.render())
            out = open(self.root / "haproxy.out", "ab")  # noqa: SIM115
            self.proc = subprocess.Popen(
                [HAPROXY, "-f", str(self.config_path), "-db"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            out.close()
            poll_for(lambda: self._listening() or self._exited(), timeout_s, "haproxy")
            if self.proc.poll() is None:
                return self
            self.proc.wait(5)  # the port was taken between probe and bind: again
        raise AssertionError(f"haproxy did not start: {self.output()}")

    def _listening(self) -> bool:
        """HAProxy binds every listener before its runtime socket answers.

        (Never probed by connecting: that would be a session to a node.)
        """
        if not self.stats_socket.exists():
            return False
        try:
            return "Pid:" in self.command("show info")
        except OSError:
            return False

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def output(self) -> str:
        try:
            return (self.root / "haproxy.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def command(self, line: str) -> str:
        """One runtime API command (`show stat`, `disable server nodes/a`)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_stats(self) -> dict[str, dict[str, str]]:
        """Per node: HAProxy's stat row (status, stot = sessions total, ...)."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(text.splitlines())
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == "nodes" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def status(self, node: str) -> str:
        """UP, DOWN, 'UP 1/2' (going down) ..."""
        return self.server_stats()[node]["status"]

    def wait_status(self, node: str, wanted: str, timeout_s: float = 15.0) -> float:
        """Poll until `node` is `wanted` (UP or DOWN); returns the seconds it took."""
        started = time.monotonic()
        poll_for(lambda: self.status(node) == wanted, timeout_s, f"haproxy: {node} {wanted}")
        return time.monotonic() - started

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.proc = None
