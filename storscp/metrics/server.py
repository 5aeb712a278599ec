"""The HTTP side: `/metrics` (prometheus_client's WSGI app) and `/healthz`.

A thread per request (wsgiref with ThreadingMixIn, as prometheus_client's
own server), each with a socket timeout, so a stuck scraper holds one
thread of this process and nothing else: the endpoint has a process of its
own precisely so that no scrape can delay a commit or a log line.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.registry import CollectorRegistry

from storscp.metrics.health import Verdict

# A client that sends nothing (or reads nothing) for this long is dropped.
REQUEST_TIMEOUT_S = 10.0

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def make_app(registry: CollectorRegistry, health: Callable[[], Verdict]) -> WsgiApp:
    """`GET /metrics`: the exposition; `GET /healthz`: 200 or 503 and one line."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
                return _plain(start_response, "405 Method Not Allowed", "use GET")
            verdict = health()
            status = "200 OK" if verdict.ok else "503 Service Unavailable"
            return _plain(start_response, status, verdict.reason)
        return _plain(start_response, "404 Not Found", "try /metrics or /healthz")

    return app


def _plain(start_response: StartResponse, status: str, line: str) -> list[bytes]:
    body = (line + "\n").encode("utf-8")
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck client must not hold up our exit


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing per request: a scrape a second would fill the child log."""


def listen(host: str, port: int, app: WsgiApp) -> WSGIServer:
    """Bind now (OSError if we cannot); serve with `serve_forever` on a thread."""
    server_class = _Server6 if ":" in host else _Server
    return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
