"""Fuzzing the running receiver over real sockets, within a wall-clock budget.

One service for the module (one receiver, 2 s timeouts so that a stalled
connection ends quickly). Each hypothesis example is one `Attack` from
`support.fuzzing` on its own connection: associate first if the attack says
so, send its bytes, perhaps half-close, read what comes back, close.

After every example (a failure fails the example, so hypothesis shrinks it):
whatever came back is well-formed PDUs an acceptor may send; the receiver is
back to its idle thread count (the connection's thread ended: no hang); every
component runs under its first pid; the depot holds no instance data; the
receiver's peak memory grew by less than MEMORY_ALLOWANCE_BYTES; and no
component wrote anything to its stderr log (`run/*.out.log`): neither a
traceback nor a line of a peer's choosing. After every round: a C-ECHO
succeeds, the receiver holds no more file descriptors than when idle, and no
file appeared outside the storage directory. At the end: a valid C-STORE
succeeds and its file is committed.

The budget: hypothesis has no wall-clock limit, so the test runs it in
rounds of ROUND_EXAMPLES examples, each a fresh run with a new seed, until
STORSCP_FUZZ_SECONDS (default 30, what `make test` runs) have passed; the
last round may overrun by one example. Examples that the last round still
generates after the deadline return at once and are not counted, unless a
failure was seen: then the deadline is ignored so that shrinking replays
faithfully. `make fuzz` runs the same test for STORSCP_FUZZ_SECONDS=1200 by
default. The counts of inputs sent and survived are printed at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from support import dicomfiles as df
from support.fuzzing import GOOD_RQ, Attack, attacks
from support.rawscu import EXPLICIT_LE, VERIFICATION, RawAssociation, minimal_dataset
from support.service import Service, poll_for, short_tempdir

DEFAULT_FUZZ_SECONDS = 30.0
ROUND_EXAMPLES = 200
# How long to wait for replies when we did not half-close (the receiver may be
# waiting for the rest of a PDU); with a half-close we read to EOF.
QUIET_S = 0.2
# Generous: two cores shared with other test runs.
EOF_TIMEOUT_S = 20.0
SETTLE_TIMEOUT_S = 30.0
TERMINAL_PDUS = {0x03, 0x06, 0x07}
# Memory one connection may add to the receiver at its peak: buffers of a few
# hundred KB and the 1 MiB that pydicom may read are far below it; a value
# read whole (support.fuzzing.HIDDEN_VALUE_BYTES) is far above.
MEMORY_ALLOWANCE_BYTES = 16 * 1024 * 1024
CT = df.CT.encode()
UID_NAME = re.compile(r"^[0-9]+(\.[0-9]+)*\.dcm$")


def fuzz_seconds() -> float:
    return float(os.environ.get("STORSCP_FUZZ_SECONDS", DEFAULT_FUZZ_SECONDS))


@dataclass
class Tally:
    sent: int = 0
    survived: int = 0
    bytes_sent: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    failed: bool = False

    def summary(self, seconds: float) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        replies = ", ".join(f"{k} {n}" for k, n in sorted(self.replies.items()))
        return (
            f"fuzz: {self.sent} inputs sent, {self.survived} survived in {seconds:.0f} s "
            f"({self.bytes_sent} bytes; {kinds}; replies: {replies})"
        )


class Watch:
    """What 'the service is unharmed' means, measured once when idle."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.pids = {int(e["pid"]): e["proc"] for e in svc.events("START") if "pid" in e.fields}
        self.receiver = next(p for p, proc in self.pids.items() if proc == "receiver")
        self.log_offsets: dict[Path, int] = {}
        self.read_new_log_text()  # start from the current ends
        self.idle_threads = self.threads()
        self.idle_fds = poll_for(self._steady_fds, SETTLE_TIMEOUT_S, "a steady fd count")
        self.rss_before = 0
        self.peak_growth = 0

    def memory_bytes(self, field: str) -> int:
        """VmRSS or VmHWM (the peak, since the last reset) of the receiver."""
        with open(f"/proc/{self.receiver}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} for the receiver")

    def before_example(self) -> None:
        """Reset the receiver's peak memory, so that the example's own peak is measured."""
        with open(f"/proc/{self.receiver}/clear_refs", "w") as fh:
            fh.write("5")
        self.rss_before = self.memory_bytes("VmRSS")

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.receiver}/task"))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.receiver}/fd"))

    def _steady_fds(self) -> int:
        first = self.fds()
        time.sleep(0.3)
        return first if self.fds() == first else 0

    def read_new_log_text(self) -> str:
        """What the components wrote to their stderr logs since the last call."""
        out = []
        logs = [*self.svc.run_dir.glob("*.out.log"), *self.svc.run_dir.glob("*.err.log")]
        for path in sorted(logs):
            start = self.log_offsets.get(path, 0)
            with open(path, "rb") as fh:
                fh.seek(start)
                data = fh.read()
            self.log_offsets[path] = start + len(data)
            if data:
                out.append(f"--- {path.name}\n" + data.decode(errors="replace"))
        return "".join(out)

    def check_after_example(self, attack: Attack) -> None:
        """The receiver finished with our connection, unharmed and holding nothing."""
        self.check_settled(f"after {attack.kind}")
        grown = self.memory_bytes("VmHWM") - self.rss_before
        self.peak_growth = max(self.peak_growth, grown)
        assert grown < MEMORY_ALLOWANCE_BYTES, f"the receiver's memory peaked {grown} bytes higher"

    def check_settled(self, when: str) -> None:
        """No connection thread left, same pids, an empty depot, silent stderr logs."""
        poll_for(
            lambda: self.threads() <= self.idle_threads,
            SETTLE_TIMEOUT_S,
            f"the receiver's connection thread to end {when}",
            interval_s=0.005,
        )
        self.check_pids()
        poll_for(
            lambda: self.svc.depot_entries() == [],
            SETTLE_TIMEOUT_S,
            f"the depot to hold no instance data {when}",
            interval_s=0.01,
        )
        self.check_logs()

    def check_pids(self) -> None:
        alive = set(self.svc.live_components())
        dead = {pid: proc for pid, proc in self.pids.items() if pid not in alive}
        assert not dead, f"components died: {dead}"

    def check_logs(self) -> None:
        """Silence: events go to the bus; stderr is for bugs, and for libraries we muted."""
        text = self.read_new_log_text()
        assert not text, f"a component wrote to its stderr log:\n{text}"

    def check_idle(self) -> None:
        """No descriptors held beyond what the idle receiver holds (parts, sockets)."""
        poll_for(
            lambda: self.fds() <= self.idle_fds,
            SETTLE_TIMEOUT_S,
            f"the receiver's fd count to return to {self.idle_fds} (now {self.fds()})",
        )


def read_pdus(data: bytes) -> list[tuple[int, bytes]]:
    """Complete PDUs in what the receiver sent (a cut tail is ignored: RST may eat it)."""
    pdus = []
    pos = 0
    while pos + 6 <= len(data):
        pdu_type, length = struct.unpack_from(">BxL", data, pos)
        if pos + 6 + length > len(data):
            break
        pdus.append((pdu_type, data[pos + 6 : pos + 6 + length]))
        pos += 6 + length
    return pdus


BEFORE_ASSOCIATION = {0x02, 0x03, 0x07}
AFTER_ASSOCIATION = {0x04, 0x06, 0x07}


def check_replies(attack: Attack, data: bytes, tally: Tally) -> None:
    """Only PDUs an acceptor may send, nothing after a terminal one, P-DATA items that fit."""
    # An A-ASSOCIATE-AC (ours, or one for a valid request followed by junk) moves it on.
    allowed = AFTER_ASSOCIATION if attack.associate_first else BEFORE_ASSOCIATION
    pdus = read_pdus(data)
    for i, (pdu_type, body) in enumerate(pdus):
        tally.replies[f"0x{pdu_type:02X}"] += 1
        assert pdu_type in allowed, f"receiver sent PDU type 0x{pdu_type:02X}"
        if pdu_type == 0x02:
            allowed = AFTER_ASSOCIATION
        if pdu_type in TERMINAL_PDUS:
            assert i == len(pdus) - 1, f"receiver sent {pdus[i + 1 :]!r} after 0x{pdu_type:02X}"
            assert len(body) == 4, f"PDU 0x{pdu_type:02X} of {len(body)} bytes"
        if pdu_type == 0x04:
            pos = 0
            while pos < len(body):
                length = struct.unpack_from(">L", body, pos)[0]
                assert length >= 2 and pos + 4 + length <= len(body), "bad PDV from receiver"
                pos += 4 + length


def receive_all(sock: socket.socket, until_eof: bool) -> bytes:
    """What the receiver sends until it closes (or, without EOF, until it goes quiet)."""
    sock.settimeout(EOF_TIMEOUT_S if until_eof else QUIET_S)
    deadline = time.monotonic() + EOF_TIMEOUT_S
    out = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            assert not until_eof, "the receiver did not close after our half-close"
            return bytes(out)
        except ConnectionResetError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data
        assert time.monotonic() < deadline, "the receiver keeps sending"


def send_attack(port: int, attack: Attack) -> bytes:
    """One connection: associate if asked, send, maybe half-close, read back, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=EOF_TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if attack.associate_first:
            sock.sendall(GOOD_RQ)
            header = b""
            while len(header) < 6:
                more = sock.recv(6 - len(header))
                assert more, "connection closed instead of A-ASSOCIATE-AC"
                header += more
            assert header[0] == 0x02, f"a valid request got PDU type 0x{header[0]:02X}"
            length = struct.unpack(">L", header[2:6])[0]
            while length:
                length -= len(sock.recv(min(length, 65536)))
        try:
            for chunk in attack.chunks:
                sock.sendall(chunk)
            if attack.half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the receiver gave up early (EPIPE, ECONNRESET, ENOTCONN): read what it said
        return receive_all(sock, until_eof=attack.half_close)


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def unexpected_files(svc: Service, before: set[Path]) -> list[str]:
    """New files that are neither stored instances, logs, nor service bookkeeping."""
    out = []
    for path in all_files(svc.root.parent) - before:
        if path.parent == svc.storage_dir and UID_NAME.match(path.name):
            continue
        if path.parent == svc.depot_dir and path.name.endswith(".part"):
            continue  # spare parts (empty; depot_entries() checks the rest)
        if path.parent in (svc.log_dir, svc.run_dir):
            continue
        out.append(str(path))
    return out


def store_one(svc: Service, tag: str) -> None:
    """A valid C-STORE succeeds and its file is committed."""
    uid = df.uid_for(f"fuzz-check-{tag}-{os.getpid()}")
    with RawAssociation(svc.port) as assoc:
        assoc.associate(contexts=[(df.CT, [EXPLICIT_LE])])
        rsp = assoc.c_store(
            assoc.context_for(df.CT), CT, uid.encode(), minimal_dataset(CT, uid.encode())
        )
        assert rsp.status == 0x0000, rsp
        assoc.release()
    svc.wait_stored([uid])


def echo_once(svc: Service) -> None:
    with RawAssociation(svc.port) as assoc:
        assoc.associate(contexts=[(VERIFICATION, ["1.2.840.10008.1.2"])])
        assert assoc.c_echo() == 0
        assoc.release()


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    """One service for every example: the point is that the same processes survive."""
    outer = short_tempdir("fuzz")
    (outer / "s").mkdir()
    # A fixed threshold keeps glibc from raising it after the first large
    # free: every large buffer is then mapped and unmapped, so the receiver's
    # peak memory is measured afresh when hypothesis replays an example.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
        service = Service(
            outer / "s",
            receivers=1,
            acse_timeout_s=2,
            network_timeout_s=2,
            dimse_timeout_s=2,
            max_associations=500,
        ).start()
    yield service
    service.stop()
    shutil.rmtree(outer, ignore_errors=True)


def test_fuzz_receiver_survives_hostile_input(
    svc: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given: an idle service that has stored one instance (caches and pools warm).
    store_one(svc, "warmup")
    watch = Watch(svc)
    files_before = all_files(svc.root.parent)
    tally = Tally()
    started = time.monotonic()
    deadline = started + fuzz_seconds()

    @settings(
        max_examples=ROUND_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(attack=attacks())
    def one(attack: Attack) -> None:
        if time.monotonic() > deadline and not tally.failed:
            return  # budget spent: the rest of this round is skipped, not counted
        tally.sent += 1
        tally.bytes_sent += attack.size
        tally.kinds[attack.kind] += 1
        try:
            # When: the attack hits the receiver on its own connection.
            watch.before_example()
            replies = send_attack(svc.port, attack)
            # Then: it answered sanely and is unharmed.
            check_replies(attack, replies, tally)
            watch.check_after_example(attack)
        except BaseException:
            tally.failed = True
            raise
        tally.survived += 1

    try:
        while time.monotonic() < deadline:
            one()
            # Then, after each round: it still answers, holds no extra fds, wrote no stray files.
            echo_once(svc)
            watch.check_settled("after a round")
            watch.check_idle()
            stray = unexpected_files(svc, files_before)
            assert not stray, stray
        # And finally: a valid store still works, served by the same processes.
        store_one(svc, "final")
        watch.check_settled("after the final C-STORE")
        watch.check_idle()
    finally:
        with capsys.disabled():
            print("\n" + tally.summary(time.monotonic() - started))
            print(f"fuzz: the receiver's peak memory rose by at most {watch.peak_growth} bytes")
