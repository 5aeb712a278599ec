"""The admin's and the script writer's side: `storscp feed`, the README's consumer, `storscp echo`.

One service for the module: these tests only read from it, or add instances
that the others count from their own starting seq.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import dicomfiles as df
from support.scu import storescu
from support.service import STORSCP, Service, as_from_a_terminal, poll_for, short_tempdir

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    root = short_tempdir("fcmd")
    service = Service(root, study_quiet_s=0).start()
    yield service
    service.stop()
    shutil.rmtree(root, ignore_errors=True)


def send(svc: Service, tmp: Path, count: int, first_seed: int) -> list[str]:
    paths, uids = [], []
    for seed in range(first_seed, first_seed + count):
        path = tmp / f"c{seed}.dcm"
        uids.append(df.make_image(path, df.CT, seed=seed, rows=8, columns=8))
        paths.append(path)
    assert storescu(svc.port, paths).returncode == 0
    svc.wait_stored(uids)
    return uids


def feed(svc: Service, *args: str) -> subprocess.CompletedProcess[str]:
    return svc.command("feed", *args, timeout_s=60)


def last_seq(svc: Service) -> int:
    lines = feed(svc).stdout.splitlines()
    return json.loads(lines[-1])["seq"] if lines else 0


def test_storscp_feed_prints_the_history_as_json_lines(svc: Service, tmp_path: Path) -> None:
    start = last_seq(svc)
    uids = send(svc, tmp_path, 3, 100)
    poll_for(lambda: last_seq(svc) >= start + 3, 30, "three new feed messages")
    result = feed(svc, "--since", str(start))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [m["seq"] for m in lines] == [start + 1, start + 2, start + 3]
    assert [m["sop_instance_uid"] for m in lines] == uids
    assert {m["kind"] for m in lines} == {"instance"}
    assert all(Path(m["path"]).exists() and m["modality"] == "CT" for m in lines)
    # --since the last one: nothing to print, and that is not an error
    assert feed(svc, "--since", str(start + 3)).stdout == ""


def test_storscp_feed_follow_prints_what_comes_next(svc: Service, tmp_path: Path) -> None:
    start = last_seq(svc)
    proc = subprocess.Popen(
        [STORSCP, "feed", "-f", "--since", str(start), "-c", str(svc.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_from_a_terminal,
    )
    try:
        uids = send(svc, tmp_path, 2, 200)
        assert proc.stdout is not None
        got = [json.loads(proc.stdout.readline()) for _ in uids]
        assert [m["sop_instance_uid"] for m in got] == uids
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_the_readme_consumer_resumes_from_its_saved_seq(svc: Service, tmp_path: Path) -> None:
    code = re.search(r"```python\n(import json, pathlib, zmq.*?)```", README.read_text(), re.S)
    assert code is not None, "the consumer example is gone from the README"
    program = code.group(1).replace("ipc:///srv/storscp/run/bus/", f"ipc://{svc.run_dir}/bus/")
    (tmp_path / "consumer.py").write_text(program)
    start = last_seq(svc)
    (tmp_path / "last_seq").write_text(str(start))  # it has seen everything before

    def run_until(last: int) -> list[int]:
        proc = subprocess.Popen(
            [sys.executable, "consumer.py"], cwd=tmp_path, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        seqs = [int(proc.stdout.readline().split()[1])]
        while seqs[-1] < last:
            seqs.append(int(proc.stdout.readline().split()[1]))
        proc.kill()  # as abruptly as a consumer can end
        proc.wait(10)
        return seqs

    send(svc, tmp_path, 2, 300)
    first = run_until(start + 2)
    send(svc, tmp_path, 2, 310)  # while it is not running
    second = run_until(start + 4)
    assert first == [start + 1, start + 2]
    # At least once: the last one again if it was killed before it saved it, never a gap
    assert second in ([start + 3, start + 4], [start + 2, start + 3, start + 4])


def test_storscp_echo_answers_like_echoscu(svc: Service) -> None:
    ok = subprocess.run(
        [STORSCP, "echo", "127.0.0.1", str(svc.port), "--aec", "STORSCP"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (ok.returncode, ok.stdout) == (0, "I: Received Echo Response (Success)\n"), ok.stderr
    assert ok.stderr == ""
    svc.wait_event("ASSOCIATION", state="released", calling_ae="ECHOSCU")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # a port nobody listens on
        closed = probe.getsockname()[1]
        refused = subprocess.run(
            [STORSCP, "echo", "127.0.0.1", str(closed)], capture_output=True, text=True, timeout=60
        )
    assert refused.returncode == 1 and refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith("F: Association Request Failed:") and "refused" in line

    rejected = subprocess.run(
        [STORSCP, "echo", "127.0.0.1", str(svc.port), "--aec", "NOT_US"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rejected.returncode == 1
    [line] = rejected.stderr.splitlines()
    assert line.startswith("F: Association Rejected:")
