"""The log files of a running service: events, injection, alternation, one writer.

The receiver is a black box here: we send DICOM and read events and files.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import zmq
from pydicom.uid import ExplicitVRLittleEndian

from storscp import __version__, bus
from storscp.logger.lines import parse_line
from support import dicomfiles as df
from support.scu import echoscu, pynetdicom_store, storescu
from support.service import STORSCP, Service, as_from_a_terminal, poll_for

EVENT_TYPES = {"START", "ASSOCIATION", "WRITE", "ERROR"}
PROCS = {"receiver", "committer", "feed", "commitment", "logger", "listener", "metrics"}
LOG_NAMES = ("storscp1.log", "storscp2.log")


def make_images(directory: Path, count: int, first_seed: int) -> dict[str, Path]:
    """uid -> path of `count` small CT images."""
    files: dict[str, Path] = {}
    for seed in range(first_seed, first_seed + count):
        path = directory / f"img{seed}.dcm"
        files[df.make_image(path, df.CT, seed=seed, rows=16, columns=16)] = path
    return files


def assert_every_line_is_an_event(svc: Service) -> None:
    """Only service events, each a whole, well-formed line, in both files."""
    for name in LOG_NAMES:
        path = svc.log_dir / name
        if not path.exists():
            continue
        data = path.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{name} ends inside a line"
        for raw in data.decode("utf-8").split("\n")[:-1]:
            parsed = parse_line(raw)
            assert parsed is not None, f"{name}: not an event line: {raw!r}"
            assert parsed.type in EVENT_TYPES, raw
            assert datetime.fromisoformat(parsed.time).tzinfo is not None, raw
            assert parsed["proc"] in PROCS, raw


def sizes(svc: Service) -> dict[str, int]:
    return {n: (svc.log_dir / n).stat().st_size for n in LOG_NAMES if (svc.log_dir / n).exists()}


def newer_file(svc: Service) -> str:
    stats = {n: (svc.log_dir / n).stat() for n in LOG_NAMES if (svc.log_dir / n).exists()}
    return max(stats, key=lambda n: (stats[n].st_mtime_ns, -stats[n].st_size))


def write_uids(path: Path) -> list[str]:
    """SOP Instance UIDs of the WRITE lines of one file, in order."""
    if not path.exists():
        return []
    lines = [parse_line(raw) for raw in path.read_text().splitlines()]
    return [p["sop_instance_uid"] for p in lines if p is not None and p.type == "WRITE"]


# -- events ------------------------------------------------------------------


def test_start_events_name_the_service_and_every_component(service: Service) -> None:
    receiver = service.last_start("receiver")
    assert receiver is not None
    assert receiver["version"] == __version__
    assert receiver["ae_title"] == "STORSCP"
    assert receiver["host"] == "127.0.0.1" and int(receiver["port"]) == service.port > 0
    assert receiver["storage_dir"] == str(service.storage_dir)
    assert receiver["log_dir"] == str(service.log_dir)
    # Supervisor calls a component RUNNING after startsecs; START comes first.
    processes = len(service.singles) + service.receiver_count() + (1 if service.has_metrics else 0)
    status = poll_for(
        lambda: (
            (out := service.supervisorctl("status").stdout).count("RUNNING") == processes and out
        ),
        30,
        "every process RUNNING",
        interval_s=0.5,
    )
    for proc in PROCS:
        # With several receivers the names are receiver:receiver_0, ...
        count = service.receiver_count() if proc == "receiver" else 1
        for start in service.events("START", proc=proc)[-count:]:
            pattern = rf"^{proc}(:{proc}_\d+)?\s+RUNNING\s+pid {start['pid']},"
            assert re.search(pattern, status, re.M), (proc, status)
    logger = service.last_start("logger")
    assert logger is not None and logger["file"] == "storscp1.log"


def test_one_write_per_stored_instance_naming_its_uid(service: Service, short_tmp: Path) -> None:
    files = make_images(short_tmp, 12, first_seed=100)
    result = storescu(service.port, list(files.values()), calling_ae="MODALITY1")
    assert result.returncode == 0, result.stderr
    service.wait_stored(files)
    writes = service.wait_event("WRITE", count=len(files))
    poll_for(lambda: service.events("ASSOCIATION", state="released"), 15, "the release")
    writes = service.events("WRITE")
    assert sorted(w["sop_instance_uid"] for w in writes) == sorted(files)
    for w in writes:
        uid = w["sop_instance_uid"]
        assert w["path"] == str(service.stored_path(uid))
        assert w["sop_class_uid"] == df.CT
        assert w["transfer_syntax"] == ExplicitVRLittleEndian
        assert 0 < int(w["bytes"]) <= service.stored_path(uid).stat().st_size
        assert w["calling_ae"] == "MODALITY1"
        assert w["replaced"] == "false"


def test_association_accepted_and_released_with_the_right_ae_titles(
    service: Service, short_tmp: Path
) -> None:
    files = make_images(short_tmp, 3, first_seed=200)
    result = storescu(service.port, list(files.values()), calling_ae="CT_ROOM_2")
    assert result.returncode == 0, result.stderr
    accepted = service.wait_event("ASSOCIATION", state="accepted", calling_ae="CT_ROOM_2")
    released = service.wait_event("ASSOCIATION", state="released", calling_ae="CT_ROOM_2")
    assert len(accepted) == len(released) == 1
    for event in accepted + released:
        assert event["called_ae"] == "STORSCP"
        assert re.fullmatch(r"127\.0\.0\.1:\d+", event["peer"]), event
    assert accepted[0]["peer"] == released[0]["peer"]
    assert int(released[0]["instances"]) == 3
    assert int(released[0]["bytes"]) >= sum(p.stat().st_size for p in files.values()) // 2


def test_rejected_c_store_is_an_error_event(service: Service, short_tmp: Path) -> None:
    # Given a file whose meta says one SOP Instance UID and whose dataset says another
    sent = short_tmp / "mismatch.dcm"
    uid = df.make_image(sent, df.CT, seed=300)
    other = short_tmp / "other.dcm"
    df.make_image(other, df.CT, seed=301)
    sent.write_bytes(sent.read_bytes()[: df.dataset_offset(sent)] + df.dataset_bytes(other))
    # When pynetdicom sends it (the request carries the meta's UID)
    statuses = pynetdicom_store(service.port, [(sent, df.CT, ExplicitVRLittleEndian)])
    # Then the C-STORE fails with 0xA900 and the log says so
    assert statuses == [0xA900]
    error = service.wait_event("ERROR", sop_instance_uid=uid)[0]
    assert error["status"].upper().endswith("A900")
    assert error["reason"]
    assert not service.stored_path(uid).exists()


def test_calling_ae_with_quotes_and_equals_cannot_forge_a_field(
    service: Service, short_tmp: Path
) -> None:
    hostile = 'X" WRITE a="b'  # 13 characters: a valid AE title on the wire
    files = make_images(short_tmp, 1, first_seed=400)
    statuses = pynetdicom_store(
        service.port,
        [(path, df.CT, ExplicitVRLittleEndian) for path in files.values()],
        calling_ae=hostile,
    )
    assert statuses == [0]
    accepted = service.wait_event("ASSOCIATION", state="accepted", calling_ae=hostile)
    assert "a" not in accepted[0].fields
    write = service.wait_event("WRITE", calling_ae=hostile)[0]
    assert write["sop_instance_uid"] in files
    assert len(service.events("WRITE")) == 1
    assert_every_line_is_an_event(service)


def _item(kind: int, body: bytes) -> bytes:
    return bytes([kind, 0]) + struct.pack(">H", len(body)) + body


def associate_rq(called: bytes, calling: bytes) -> bytes:
    """A raw A-ASSOCIATE-RQ (PS3.8 9.3.2) for Verification, AE titles as given."""
    context = bytes([1, 0, 0, 0]) + _item(0x30, b"1.2.840.10008.1.1")
    context += _item(0x40, b"1.2.840.10008.1.2")
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, df.UID_ROOT.encode() + b"99")
    body = struct.pack(">H", 1) + b"\0\0" + called.ljust(16) + calling.ljust(16) + b"\0" * 32
    body += _item(0x10, b"1.2.840.10008.3.1.1.1") + _item(0x20, context) + _item(0x50, user)
    return bytes([1, 0]) + struct.pack(">I", len(body)) + body


def test_control_characters_in_a_raw_association_request_never_reach_the_log_raw(
    service: Service,
) -> None:
    # pynetdicom refuses to build these, so the request is written by hand.
    peers = []
    for calling in (b"X\n2026 WRITE a=b", b'A"B=C\rD', b"\x1b[2J\x00\x85x"):
        with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
            peers.append(f"127.0.0.1:{sock.getsockname()[1]}")
            sock.sendall(associate_rq(b"STORSCP", calling))
            sock.settimeout(30)
            try:
                while sock.recv(65536):
                    pass  # whatever the answer, read until the receiver closes
            except (TimeoutError, ConnectionResetError):
                pass
    # A normal association afterwards is logged, so the ones before have been too.
    assert echoscu(service.port).returncode == 0
    service.wait_event("ASSOCIATION", state="released", calling_ae="ECHOSCU")
    # Each hostile request was logged, once, as the refusal it was (peer and reason).
    for peer in peers:
        [refused] = [e for e in service.events() if e.get("peer") == peer]
        assert (refused.type, refused["what"]) == ("ERROR", "protocol error"), refused
        assert refused["reason"].startswith("malformed A-ASSOCIATE-RQ"), refused
    assert_every_line_is_an_event(service)
    assert service.events("WRITE") == []


def test_only_events_reach_the_log_files(service: Service, short_tmp: Path) -> None:
    files = make_images(short_tmp, 2, first_seed=500)
    assert storescu(service.port, list(files.values())).returncode == 0
    service.wait_event("WRITE", count=2)
    for args in (["config"], ["status"], ["logs"], ["logs", "-n", "1"]):
        result = subprocess.run(
            [STORSCP, *args, "-c", str(service.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    before = {n: (service.log_dir / n).read_bytes() for n in sizes(service)}
    subprocess.run([STORSCP, "config", "-c", str(service.config_path)], timeout=60)
    assert {n: (service.log_dir / n).read_bytes() for n in sizes(service)} == before
    assert_every_line_is_an_event(service)
    assert "serving STORSCP" in service.output()  # the CLI's own words went to stdout


# -- alternation -----------------------------------------------------------------


def check_alternation(svc: Service, files: dict[str, Path], limit: int) -> None:
    """Both files within the limit; the newest WRITE in the newer file; ≥3 alternations."""
    svc.wait_stored(files)
    last_uid = list(files)[-1]
    poll_for(
        lambda: svc.events("WRITE", sop_instance_uid=last_uid), 30, "the last WRITE in the log"
    )
    assert all(size <= limit for size in sizes(svc).values()), sizes(svc)
    newer = newer_file(svc)
    older = next(n for n in LOG_NAMES if n != newer)
    in_newer = write_uids(svc.log_dir / newer)
    if in_newer:
        assert in_newer[-1] == last_uid
    else:  # lines after the last WRITE (the release) alternated once more
        assert write_uids(svc.log_dir / older)[-1] == last_uid
    # A WRITE line carries at least the stored path and the UID: a lower bound
    # of the bytes written. More than 4 files' worth means at least 3 alternations.
    written = sum(len(str(svc.stored_path(uid))) + len(uid) for uid in files)
    assert written > 4 * limit
    assert_every_line_is_an_event(svc)


def test_alternation_at_4096_bytes_before_and_after_a_restart(
    service_factory: type[Service], short_tmp: Path
) -> None:
    limit = 4096
    svc = service_factory(log_max_bytes=limit).start()
    files = make_images(short_tmp, 120, first_seed=1000)
    assert storescu(svc.port, list(files.values())).returncode == 0
    check_alternation(svc, files, limit)

    # Given the service stopped, when it starts again, the logger continues in
    # the file written last (or, if that one is full, empties the other).
    svc.stop()
    newest = newer_file(svc)
    before = {n: (svc.log_dir / n).read_bytes() for n in sizes(svc)}
    svc.start()
    logger = svc.last_start("logger")
    assert logger is not None
    after = (svc.log_dir / newest).read_bytes()
    if logger["file"] == newest:
        assert after.startswith(before[newest]) and len(after) > len(before[newest])
    else:
        assert len(before[newest]) + len(logger.raw.encode()) + 1 > limit
        other = (svc.log_dir / logger["file"]).read_bytes()
        assert other.startswith(logger.raw.encode())

    more = make_images(short_tmp, 120, first_seed=2000)
    assert storescu(svc.port, list(more.values())).returncode == 0
    check_alternation(svc, more, limit)


def start_follower(svc: Service, out_path: Path, err_path: Path) -> subprocess.Popen[bytes]:
    """`storscp logs -f -n 0`, printing into out_path once it is reading."""
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        follower = subprocess.Popen(
            [STORSCP, "logs", "-f", "-n", "0", "-c", str(svc.config_path)],
            stdout=out,
            stderr=err,
            preexec_fn=as_from_a_terminal,
        )
    # -n 0 prints nothing old, so an echo it prints shows it is reading; once it
    # has printed an echo's last line, it has printed every line written so far.
    poll_for(
        lambda: echoscu(svc.port).returncode == 0 and b"ECHOSCU" in out_path.read_bytes(),
        60,
        "the follower to print an echo's events",
        interval_s=1.0,
    )
    released = b"state=released calling_ae=ECHOSCU"
    poll_for(lambda: released in out_path.read_bytes(), 30, "the follower to print the release")
    return follower


def stop_follower(follower: subprocess.Popen[bytes]) -> None:
    follower.send_signal(signal.SIGINT)
    assert follower.wait(30) == 0


def followed_writes(out_path: Path) -> list[str]:
    lines = [parse_line(raw) for raw in out_path.read_text().splitlines()]
    assert all(p is not None for p in lines)
    return [p["sop_instance_uid"] for p in lines if p is not None and p.type == "WRITE"]


def test_logs_follows_the_stream_across_alternations(
    service_factory: type[Service], short_tmp: Path
) -> None:
    svc = service_factory(log_max_bytes=4096).start()
    out_path, err_path = short_tmp / "follow.out", short_tmp / "follow.err"
    follower = start_follower(svc, out_path, err_path)
    files = make_images(short_tmp, 60, first_seed=3000)
    try:
        # One instance at a time, each WRITE seen before the next is sent:
        # about eight WRITE lines fill a file, so this alternates seven times.
        def seen(path: Path, status: int | None) -> None:
            assert status == 0
            uid = next(u for u, p in files.items() if p == path)
            poll_for(lambda: uid.encode() in out_path.read_bytes(), 30, f"WRITE {uid} followed")

        pynetdicom_store(
            svc.port,
            [(path, df.CT, ExplicitVRLittleEndian) for path in files.values()],
            calling_ae="FOLLOWED",
            after_each=seen,
        )
    finally:
        stop_follower(follower)
    assert followed_writes(out_path) == list(files)  # each once, in order
    assert out_path.stat().st_size > 4 * 4096  # at least three alternations followed
    assert err_path.read_bytes() == b""


def test_logs_follow_under_a_burst_never_repeats_and_says_when_it_missed_lines(
    service_factory: type[Service], short_tmp: Path
) -> None:
    # A burst can fill a whole 4096-byte file between two reads of the follower.
    svc = service_factory(log_max_bytes=4096).start()
    out_path, err_path = short_tmp / "burst.out", short_tmp / "burst.err"
    follower = start_follower(svc, out_path, err_path)
    echo_released = b"state=released calling_ae=ECHOSCU"
    echoes = out_path.read_bytes().count(echo_released)
    files = make_images(short_tmp, 120, first_seed=3500)
    try:
        assert storescu(svc.port, list(files.values()), calling_ae="BURST").returncode == 0
        svc.wait_stored(files)
        # The committer's WRITEs may reach the log after the receiver's release:
        # wait for the last one (commits keep arrival order), then for one line
        # after them all (an echo) to be printed: by then the follower has
        # printed, or said it missed, the whole burst.
        last = list(files)[-1]
        poll_for(lambda: svc.events("WRITE", sop_instance_uid=last), 60, "the last WRITE")
        assert echoscu(svc.port).returncode == 0
        poll_for(
            lambda: out_path.read_bytes().count(echo_released) > echoes,
            30,
            "the follower to print the echo after the burst",
        )
    finally:
        stop_follower(follower)
    followed = followed_writes(out_path)
    assert len(followed) == len(set(followed)) and set(followed) <= set(files)
    order = list(files)
    assert followed == sorted(followed, key=order.index)  # never out of order
    # Every line written since the follower caught up is the burst's: its requested,
    # accepted and released, and a WRITE per instance. Count what was missed of those.
    printed = out_path.read_bytes().splitlines()
    burst = [raw for raw in printed if b" calling_ae=BURST " in raw + b" "]
    assert len(burst) == len(set(burst))  # never repeated
    missed = len(files) + 3 - len(burst)
    said = err_path.read_bytes()
    print(f"burst of {len(files) + 3} lines: follower printed {len(burst)}, missed {missed}")
    # A loss is always said; "were overwritten" only when one happened for sure (it
    # says "may have been" when it had read the file to its end before it alternated).
    if missed:
        assert b"some lines were overwritten" in said or b"may have been overwritten" in said
    if b"some lines were overwritten" in said:
        assert missed > 0, said


def test_logs_prints_both_files_oldest_first_and_the_last_n(
    service_factory: type[Service], short_tmp: Path
) -> None:
    svc = service_factory(log_max_bytes=4096).start()
    files = make_images(short_tmp, 30, first_seed=4000)
    assert storescu(svc.port, list(files.values())).returncode == 0
    last = list(files)[-1]
    poll_for(lambda: svc.events("WRITE", sop_instance_uid=last), 30, "the last WRITE")
    poll_for(lambda: svc.events("ASSOCIATION", state="released"), 30, "the release")
    newest = newer_file(svc)
    oldest = next(n for n in LOG_NAMES if n != newest)
    expected = (svc.log_dir / oldest).read_bytes() + (svc.log_dir / newest).read_bytes()
    run = [STORSCP, "logs", "-c", str(svc.config_path)]
    result = subprocess.run(run, capture_output=True, timeout=60)
    assert result.returncode == 0 and result.stdout == expected
    result = subprocess.run([*run, "-n", "3"], capture_output=True, timeout=60)
    assert result.stdout.splitlines(keepends=True) == expected.splitlines(keepends=True)[-3:]


def test_logs_without_log_files_says_so(short_tmp: Path) -> None:
    result = subprocess.run(
        [STORSCP, "logs", "--log-dir", str(short_tmp / "nothing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 66
    assert "no log files in" in result.stderr and result.stdout == ""


# -- one writer ------------------------------------------------------------------


def test_second_service_on_the_same_log_dir_refuses_and_writes_nothing(
    service: Service, service_factory: type[Service]
) -> None:
    second = service_factory(log_dir=str(service.log_dir))
    second.storage_dir.mkdir(parents=True)
    second.write_config()
    before = {n: (service.log_dir / n).read_bytes() for n in sizes(service)}
    proc = subprocess.Popen(
        [STORSCP, "run", "-c", str(second.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        raise AssertionError("a second service on the same log_dir did not refuse") from None
    assert proc.returncode == 69, (out, err)
    assert f"log_dir {service.log_dir} is in use" in err
    assert f"pid {service.pid_of('logger')}" in err
    assert not (second.run_dir / "supervisord.conf").exists()
    assert {n: (service.log_dir / n).read_bytes() for n in sizes(service)} == before


def test_second_logger_exits_at_once_and_writes_nothing(service: Service) -> None:
    # Given the service's own logger, when a second one is started by hand
    # with the same configuration (same log dir, same socket)
    before = {n: (service.log_dir / n).read_bytes() for n in sizes(service)}
    result = subprocess.run(
        [sys.executable, "-m", "storscp.logger", "-c", str(service.run_dir / "effective.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it refuses with a clear message before touching anything
    assert result.returncode == 69, result.stderr
    assert f"log_dir {service.log_dir} is in use" in result.stderr
    assert {n: (service.log_dir / n).read_bytes() for n in sizes(service)} == before
    # And the first logger still owns its socket: events keep arriving.
    assert echoscu(service.port).returncode == 0
    service.wait_event("ASSOCIATION", state="released", calling_ae="ECHOSCU")


# -- faults ----------------------------------------------------------------------


def test_malformed_bus_messages_become_error_lines(service: Service) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 5000)
    try:
        sock.connect(bus.logger_endpoint(service.run_dir))
        sock.send_multipart([b"event", b"\xff not json"])
        sock.send_multipart([b"event\nWRITE", b"{}"])
        sock.send_multipart([b"one frame"])
        stored = bus.InstanceStored("x.ready", "1.2", "1.2.3", "1.2.840.10008.1.2", 1, "AE")
        sock.send_multipart(bus.encode(stored))  # a committer message on the logger's socket
        # a numbered event from a socket without an origin (its routing id is ZeroMQ's)
        event = bus.Event(bus.EventType.WRITE, "receiver", {"n": 1})
        sock.send_multipart(bus.encode(bus.EventSent(1, 1, event)))
    finally:
        sock.close()
        context.term()
    errors = service.wait_event("ERROR", count=4, what="malformed bus message")
    assert {e["frames"] for e in errors} == {"2", "1"}
    assert [e["reason"] for e in errors].count("sender has no origin") == 1
    service.wait_event("ERROR", what="unexpected bus message", kind="InstanceStored")
    assert_every_line_is_an_event(service)
    assert service.events("WRITE") == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_logger_on_a_full_disk_keeps_running_and_catches_up(
    service_factory: type[Service],
) -> None:
    # Given a log file on a "disk" that is full (writes to /dev/full fail with ENOSPC)
    svc = service_factory()
    svc.log_dir.mkdir(parents=True)
    current = svc.log_dir / "storscp1.log"
    current.symlink_to("/dev/full")
    svc.launch()
    # Then the logger says so on its stderr and keeps running: no crash loop.
    logger_err = svc.run_dir / "logger.out.log"
    poll_for(
        lambda: logger_err.exists() and "No space left on device" in logger_err.read_text(),
        30,
        "the logger to report the full disk",
    )
    poll_for(
        lambda: re.search(r"^logger\s+RUNNING", svc.supervisorctl("status").stdout, re.M),
        30,
        "the logger RUNNING past startsecs",
        interval_s=0.5,
    )
    assert logger_err.read_text().count("cannot write") == 1  # one logger, no restarts
    # When space comes back, what waited in memory is written, then one ERROR.
    current.unlink()
    svc.wait_started(set())
    error = svc.wait_event("ERROR", what="log write failed")[0]
    assert "No space left on device" in error["reason"]
    assert error["lines_dropped"] == "0"
    assert not current.is_symlink()
    assert_every_line_is_an_event(svc)
    assert echoscu(svc.port).returncode == 0
    svc.wait_event("ASSOCIATION", state="released", calling_ae="ECHOSCU")
