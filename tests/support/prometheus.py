"""A real Prometheus server (Debian's `prometheus`) scraping a service under test.

`PrometheusServer` writes a scrape configuration for one target, starts the
server on a free loopback port with its TSDB in a temporary directory, and
answers instant queries through the HTTP API (/api/v1/query). `promtool`
(same package) checks expositions and rule files. The server runs in its own
process group and is stopped (SIGTERM, then SIGKILL) by `stop()`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from .service import poll_for

PROMETHEUS = "prometheus"
PROMTOOL = "promtool"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def http_get(url: str, timeout_s: float = 10.0) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as rsp:
            return int(rsp.status), rsp.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60
    )


class PrometheusServer:
    """One Prometheus scraping `target` (host:port) every `interval_s`."""

    def __init__(self, root: Path, target: str, interval_s: float = 1.0) -> None:
        self.root = root
        self.target = target
        self.interval_s = interval_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> PrometheusServer:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "prometheus.yml"
        interval = f"{int(self.interval_s * 1000)}ms"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {interval}\n"
            f"  scrape_timeout: {interval}\n"
            "scrape_configs:\n"
            "  - job_name: storscp\n"
            "    static_configs:\n"
            f"      - targets: ['{self.target}']\n"
        )
        self.port = free_port()
        log = open(self.root / "prometheus.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        poll_for(self._ready, timeout_s, "Prometheus to be ready", interval_s=0.1)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log()}")
        try:
            return http_get(f"{self.url}/-/ready", timeout_s=2)[0] == 200
        except OSError:
            return False

    def log(self) -> str:
        return (self.root / "prometheus.log").read_text(errors="replace")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (each: {"metric": {...}, "value": [t, "v"]})."""
        params = urllib.parse.urlencode({"query": expr})
        status, body = http_get(f"{self.url}/api/v1/query?{params}")
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", f"{expr}: {body}"
        return list(answer["data"]["result"])

    def value(self, expr: str) -> float | None:
        """The single value of a query, or None when it has no result."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: more than one series: {result}"
        return float(result[0]["value"][1]) if result else None

    def by_label(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def wait_value(self, expr: str, expected: float, timeout_s: float = 30.0) -> None:
        """Poll until the query returns `expected` (fresh scrapes arrive every interval)."""
        seen: list[float | None] = []

        def matches() -> bool:
            seen.append(self.value(expr))
            return seen[-1] == expected

        try:
            poll_for(matches, timeout_s, f"{expr} == {expected}", interval_s=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last value {seen[-1] if seen else None}") from None

    def wait_scraped_after(self, moment: float, timeout_s: float = 30.0) -> None:
        """Wait for a successful scrape that started after `moment` (Unix time)."""

        def scraped() -> bool:
            targets = json.loads(http_get(f"{self.url}/api/v1/targets")[1])["data"]
            for target in targets["activeTargets"]:
                last = target.get("lastScrape", "")
                if target.get("health") == "up" and _rfc3339(last) > moment:
                    return True
            return False

        poll_for(scraped, timeout_s, "a fresh scrape", interval_s=0.2)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _rfc3339(text: str) -> float:
    """Prometheus's lastScrape ("2026-11-30T07:23:17.123456789Z") as Unix time."""
    if not text or text.startswith("0001-"):
        return 0.0  # never scraped
    return datetime.fromisoformat(text).timestamp()
