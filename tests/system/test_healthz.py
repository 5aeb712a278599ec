"""GET /healthz: 200 only while the service can take and keep images; else 503 and why.

Given a running service, /healthz answers 200 "ok". When the receiver is
stopped through supervisorctl, when the committer is stopped while ready
files pile up in the depot, or when the storage filesystem (a real tmpfs)
has less than min_free_bytes free, it answers 503 with a one-line reason
naming what failed, and 200 again once that is repaired. The endpoint is
on loopback by default, and a wrong `metrics` value refuses the start.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from storscp.exitcodes import ExitCode
from support import dicomfiles as df
from support.prometheus import http_get
from support.scu import storescu
from support.service import Service, poll_for


def healthz(svc: Service) -> tuple[int, str]:
    return http_get(f"http://127.0.0.1:{svc.metrics_port}/healthz")


def wait_health(svc: Service, status: int, words: str = "", timeout_s: float = 20) -> str:
    """Poll /healthz until it answers `status` with `words` in its line; return the line."""
    seen: list[tuple[int, str]] = []

    def answered() -> bool:
        seen.append(healthz(svc))
        return seen[-1][0] == status and words in seen[-1][1]

    try:
        poll_for(answered, timeout_s, f"/healthz {status} {words!r}", interval_s=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answer {seen[-1] if seen else None}") from None
    body = seen[-1][1]
    assert body.endswith("\n") and body.count("\n") == 1, body  # one line
    return body.strip()


def test_healthz_is_200_ok_while_serving_on_loopback(service: Service) -> None:
    assert wait_health(service, 200) == "ok"
    # `storscp status` shows the same verdict
    result = service.command("status")
    assert result.returncode == 0 and result.stdout.startswith("service running\n")
    assert re.search(r"^  health +ok$", result.stdout, re.MULTILINE), result.stdout
    # The endpoint listens on the configured loopback address only
    port_hex = f"{service.metrics_port:04X}"
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A"
    ]
    assert [a for a in listening if a.endswith(f":{port_hex}")] == [f"0100007F:{port_hex}"]


def test_receiver_or_committer_stopped_through_supervisorctl_is_503(
    service: Service, short_tmp: Path
) -> None:
    wait_health(service, 200)
    # When every receiver process is stopped
    assert service.supervisorctl("stop", "receiver:*").returncode == 0
    # Then /healthz says the receiver is not accepting associations
    line = wait_health(service, 503, "receiver not accepting associations")
    assert "committer" not in line and "logger" not in line
    # And once it runs again, all is well
    assert service.supervisorctl("start", "receiver:*").returncode == 0
    wait_health(service, 200)

    # When the committer is stopped and instances keep arriving (the receiver
    # answers Success: they wait in the depot)
    assert service.supervisorctl("stop", "committer").returncode == 0
    files = [short_tmp / f"pile{i}.dcm" for i in range(5)]
    uids = [
        df.make_image(p, df.CT, seed=5100 + i, rows=16, columns=16) for i, p in enumerate(files)
    ]
    assert storescu(service.port, files).returncode == 0
    # Then /healthz names the committer and the backlog
    line = wait_health(service, 503, "committer not committing: not running; 5 ready files waiting")
    assert "receiver" not in line
    # And a restarted committer commits them and health returns
    assert service.supervisorctl("start", "committer").returncode == 0
    service.wait_stored(uids)
    wait_health(service, 200)


@pytest.fixture
def tmpfs_storage(short_tmp: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs as the storage directory (mounting needs root; CI is root)."""
    target = short_tmp / "tmpfs"
    target.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0750", "tmpfs", str(target)],
        check=True,
        capture_output=True,
    )
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def free_masked(line: str) -> str:
    return re.sub(r"\d+ bytes free", "N bytes free", line)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_storage_below_min_free_bytes_is_503(
    service_factory: type[Service], tmpfs_storage: Path
) -> None:
    min_free = 16 * 1024 * 1024
    svc = service_factory(storage_dir=str(tmpfs_storage), min_free_bytes=min_free, receivers=1)
    svc.storage_dir = tmpfs_storage
    svc.start()
    wait_health(svc, 200)
    # When something else fills the filesystem to below min_free_bytes
    filler = tmpfs_storage / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * (20 * 1024 * 1024))
    # Then /healthz says how much is free against what is required
    line = wait_health(svc, 503, f"below min_free_bytes={min_free}")
    assert line.startswith(f"storage_dir {tmpfs_storage}: ")
    # And `storscp status` says the same, though every process is RUNNING
    result = svc.command("status")
    assert result.returncode == 1 and result.stdout.startswith("service degraded\n")
    # (The name column is as wide as the longest program name; the free bytes
    # move as the service writes its own state, so any number will do.)
    health = re.search(r"^  health +503: (.*)$", result.stdout, re.MULTILINE)
    assert health and free_masked(health[1]) == free_masked(line), result.stdout
    # And freeing space makes it healthy again
    filler.unlink()
    wait_health(svc, 200)


def test_the_default_endpoint_is_loopback(service_factory: type[Service]) -> None:
    # Given no `metrics` key at all
    svc = service_factory()
    del svc.keys["metrics"]
    svc.write_config()
    assert 'metrics = "127.0.0.1:9112"' in svc.command("config").stdout


@pytest.mark.parametrize("value", ["localhost", "::1:9112"])
def test_a_wrong_metrics_value_refuses_the_start(
    service_factory: type[Service], value: str
) -> None:
    svc = service_factory(metrics=value)
    svc.storage_dir.mkdir(parents=True)
    svc.write_config()
    result = svc.command("start")
    assert result.returncode == ExitCode.CONFIG
    assert "key 'metrics'" in result.stderr and str(svc.config_path) in result.stderr
    assert not svc.is_up()
