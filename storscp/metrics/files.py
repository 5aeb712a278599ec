"""The metrics directory's life cycle, as the `storscp` command sees it.

`<run_dir>/bus/metrics/` holds prometheus_client's per-process files. They
outlive the processes that wrote them (so a restarted component does not
make a counter go backwards) and are emptied only when the whole service
starts: that is the one counter reset Prometheus sees. `started` records
when; the metrics process reports it as storscp_start_time_seconds.
`health()` asks a running service's /healthz, for `storscp status`.
"""

from __future__ import annotations

import http.client
import os
import shutil
import time

from storscp.config import Config

STARTED_FILE = "started"
HEALTH_TIMEOUT_S = 5.0


def reset(config: Config, owner: tuple[int, int] | None) -> None:
    """Empty the metrics directory for a service about to start; chown it to `owner`."""
    directory = config.metrics_dir
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700)
    (directory / STARTED_FILE).write_text(f"{time.time():.3f}\n")
    if owner is not None:
        os.chown(directory, *owner)
        os.chown(directory / STARTED_FILE, *owner)


def health(config: Config) -> tuple[int, str] | None:
    """(HTTP status, its one line) of GET /healthz; None when `metrics` is empty.

    An endpoint that does not answer is status 0 with the reason.
    """
    address = config.metrics_address
    if address is None:
        return None
    host, port = address
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    connection = http.client.HTTPConnection(host, port, timeout=HEALTH_TIMEOUT_S)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        line = response.read().decode("utf-8", "replace").strip()
        return response.status, line
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"no answer from {config.metrics}: {exc}"
    finally:
        connection.close()
