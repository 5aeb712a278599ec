"""The stored-instance feed end to end: real senders, a real consumer, kill -9 of the committer.

Given a running service with a short study_quiet_s,
When DCMTK storescu processes (or reconnecting pynetdicom senders) store
instances of several studies, and consumers follow the feed (live, from seq
0, after a pause, across committer kills),
Then each consumer gets every committed instance exactly once, in seq order
without a gap, each message after its file is in place and with fields that
match the file; one study_complete per study and burst; and the history's
bound is an explicit answer.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from storscp import bus
from storscp.feedclient import FeedClient, HistoryGap
from support import dicomfiles as df
from support.feedconsumer import Consumer, endpoints
from support.scu import DCMTK_ENV, storescu
from support.senders import Instance, SenderPool
from support.service import Service, poll_for, short_tempdir

SENDERS = 4
PER_SENDER = 200
STUDIES = 3
QUIET_S = 1.0


@pytest.fixture(scope="module")
def three_studies() -> Iterator[list[list[Path]]]:
    """4 batches of 200 small CT images; instance i of each batch is in study i % 3."""
    root = short_tempdir("feed")
    batches = []
    for s in range(SENDERS):
        batch = []
        for i in range(PER_SENDER):
            path = root / f"s{s}_{i}.dcm"
            study = i % STUDIES
            df.make_image(
                path,
                df.CT,
                seed=90000 + s * PER_SENDER + i,
                rows=8,
                columns=8,
                study_uid=df.uid_for(f"feed-study-{study}"),
                series_uid=df.uid_for(f"feed-series-{study}-{s % 2}"),
            )
            batch.append(path)
        batches.append(batch)
    yield batches
    shutil.rmtree(root, ignore_errors=True)


def send_in_parallel(port: int, batches: list[list[Path]]) -> None:
    """One storescu process per batch, all at once, each over one association."""
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", "STORSCP", "127.0.0.1", str(port), *map(str, batch)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=DCMTK_ENV,
        )
        for batch in batches
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode(errors="replace")[-2000:]


def consumer_for(svc: Service, after: int = 0, page_size: int = bus.REPLAY_PAGE_MAX) -> Consumer:
    return Consumer(*endpoints(svc.run_dir), after=after, page_size=page_size)


def check_gapless(seqs: list[int], first: int = 1) -> None:
    assert seqs == list(range(first, first + len(seqs))), "seqs must go up by one, no gap"


def check_matches_file(msg: bus.InstanceCommitted) -> None:
    path = Path(msg.path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (msg.sop_instance_uid, msg.sop_class_uid) == (ds.SOPInstanceUID, ds.SOPClassUID)
    assert (msg.study_instance_uid, msg.series_instance_uid) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
    )
    assert msg.modality == ds.Modality
    assert msg.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert msg.bytes == path.stat().st_size


def test_four_senders_three_studies_each_instance_once_in_order_then_study_complete(
    service_factory: type[Service], three_studies: list[list[Path]]
) -> None:
    svc = service_factory(study_quiet_s=QUIET_S).start()
    live = consumer_for(svc).start()
    send_in_parallel(svc.port, three_studies)
    total = SENDERS * PER_SENDER
    poll_for(lambda: len(live.studies()) >= STUDIES, 60, "three study_complete messages")

    # A consumer that starts now, from seq 0, gets the same history
    late = consumer_for(svc).start()
    poll_for(lambda: len(late.received) >= total + STUDIES, 30, "the replay of the history")
    time.sleep(QUIET_S)  # time enough for a wrong second study_complete to show up
    live.stop()
    late.stop()
    assert not live.errors and not late.errors, live.errors + late.errors
    for consumer in (live, late):
        check_gapless(consumer.seqs())
        uids = [m.sop_instance_uid for m in consumer.instances()]
        assert len(uids) == len(set(uids)) == total
    assert [r.message for r in live.received] == [r.message for r in late.received]
    # Each message came after its file was in place, with the file's identifiers
    assert all(r.file_existed for r in live.received)
    for msg in live.instances():
        check_matches_file(msg)
        assert (msg.calling_ae, msg.replaced) == ("STORESCU", False)
    # Commit order is the order of the WRITE events, which carry the seq
    writes = [int(e["seq"]) for e in svc.events("WRITE")]
    assert writes == [m.seq for m in live.instances()]
    # One study_complete per study, after its last instance, with its counts
    per_study = Counter(m.study_instance_uid for m in live.instances())
    completes = {m.study_instance_uid: m for m in live.studies()}
    assert len(live.studies()) == STUDIES and set(completes) == set(per_study)
    last_seq = {m.study_instance_uid: m.seq for m in live.instances()}
    for uid, complete in completes.items():
        assert complete.instances == per_study[uid]
        assert complete.series == 2 and complete.calling_aes == ("STORESCU",)
        assert complete.seq > last_seq[uid]


def test_kill_9_of_the_committer_mid_load_loses_and_repeats_no_feed_message(
    service_factory: type[Service], short_tmp: Path
) -> None:
    svc = service_factory(study_quiet_s=1.0).start()
    root = short_tmp / "src"
    root.mkdir()
    batches = [
        [
            Instance(
                root / f"k{s}_{i}.dcm",
                df.make_image(
                    root / f"k{s}_{i}.dcm", df.CT, seed=95000 + s * 100 + i, rows=8, columns=8
                ),
            )
            for i in range(100)
        ]
        for s in range(SENDERS)
    ]
    consumer = consumer_for(svc).start()
    pool = SenderPool(batches, port=svc.current_port).start()
    # When the committer dies three times while instances keep coming,
    # and the consumer itself restarts in between, resuming from its last seq
    for kills in range(3):
        target = 80 * (kills + 1)
        poll_for(
            lambda n=target: pool.acknowledged_count() >= n,  # type: ignore[misc]
            120,
            f"{target} acknowledgements",
        )
        victim = svc.running_pids("committer")[0]
        os.kill(victim, signal.SIGKILL)
        consumer.stop()
        consumer.start()
        svc.wait_running_again("committer", victim, 15)
    pool.join(240)
    poll_for(lambda: svc.depot_entries() == [], 60, "the depot to drain")
    stored = {str(p) for p in svc.storage_dir.glob("*.dcm")}
    poll_for(lambda: len(consumer.instances()) >= len(stored), 30, "every commit in the feed")
    consumer.stop()
    assert not consumer.errors, consumer.errors
    # Then the union of what the consumer got is exactly what is in storage, once each
    check_gapless(consumer.seqs())
    paths = [m.path for m in consumer.instances()]
    assert len(paths) == len(set(paths)) and set(paths) == stored
    assert pool.acknowledged() <= {Path(p).stem for p in stored}
    assert all(r.file_existed for r in consumer.received)
    # Three kills, each seen by Supervisor
    svc.wait_event("ERROR", 30, count=3, proc="listener", program="committer", signal="SIGKILL")


class RepeatingSender:
    """storescu over the same files, run after run, until told to stop.

    The load must outlast the consumer's absence however fast the machine
    is (a fixed number of copies once ended before a fast CI runner's
    consumer came back), so it runs until the test has seen what it needs.
    """

    def __init__(self, port: int, files: list[Path]) -> None:
        self.args = ["storescu", "-aec", "STORSCP", "127.0.0.1", str(port), *map(str, files)]
        self.runs = 0
        self.failure: str | None = None
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> RepeatingSender:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._proc = subprocess.Popen(
                self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=DCMTK_ENV
            )
            out, _ = self._proc.communicate()
            if self._proc.returncode != 0:
                self.failure = out.decode(errors="replace")[-2000:]
                return
            self.runs += 1

    def sending(self) -> bool:
        return self._thread.is_alive() and self.failure is None

    def finish(self, timeout: float) -> int:
        """Let the current run end normally; how many complete runs there were."""
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the last run did not end"
        assert self.failure is None, self.failure
        return self.runs

    def kill(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._thread.join(30)


@pytest.mark.parametrize("away_s", [pytest.param(30, marks=pytest.mark.slow), 2])
def test_a_consumer_away_under_load_gets_everything_it_missed(
    service_factory: type[Service], three_studies: list[list[Path]], away_s: float
) -> None:
    svc = service_factory(study_quiet_s=0).start()
    consumer = consumer_for(svc, page_size=10).start()
    files = [p for batch in three_studies for p in batch]
    sender = RepeatingSender(svc.port, files).start()
    try:
        poll_for(lambda: len(consumer.received) >= 50, 60, "the first 50 messages")
        consumer.stop()
        left_at = consumer.last
        time.sleep(away_s)  # away: its process is gone, the load goes on
        assert left_at < len(list(svc.storage_dir.glob("*.dcm"))), "nothing was missed"
        consumer.start()
        # It comes back into a running load: live messages arrive while it replays
        assert sender.sending(), sender.failure
        poll_for(lambda: consumer.last > left_at + 50, 60, "messages after the return")
        runs = sender.finish(300)
    finally:
        sender.kill()
    total = len(files) * runs  # a copy sent again is committed again
    poll_for(lambda: len(consumer.instances()) >= total, 60, "all instances")
    consumer.stop()
    assert not consumer.errors, consumer.errors
    check_gapless(consumer.seqs())
    assert len(consumer.instances()) == total


def test_asking_for_history_that_was_dropped_is_an_explicit_answer(
    service_factory: type[Service], three_studies: list[list[Path]]
) -> None:
    svc = service_factory(study_quiet_s=0, feed_max_bytes=65536).start()
    assert storescu(svc.port, three_studies[0]).returncode == 0
    live, replay = endpoints(svc.run_dir)

    def start_of_history() -> int:
        """Where the history starts once every commit is in it (0 until then)."""
        with FeedClient(live, replay, 0) as client:
            try:
                list(client.catch_up())
            except HistoryGap as gap:
                page = client.last_page
                return gap.history_start if page and page.last_seq == PER_SENDER else 0
        return 0

    start = poll_for(start_of_history, 30, "the history to be cut")
    assert start > 1
    # The same for a shell script: one line on stderr, exit status 65 (the
    # committer may have cut a little more since: its pruning lags by a second)
    result = svc.command("feed", "--since", "0")
    assert (result.returncode, result.stdout) == (65, "")
    said = re.fullmatch(
        r"storscp feed: history starts at (\d+) \(asked for after 0\)\n", result.stderr
    )
    assert said is not None and int(said[1]) >= start, result.stderr
    start = int(said[1])
    with FeedClient(live, replay, start - 1) as client:
        replayed = list(client.catch_up())
    check_gapless([m.seq for m in replayed], first=start)
    assert replayed[-1].seq == PER_SENDER


def test_issue_10_a_stored_file_with_a_future_mtime_is_replaced(
    service: Service, short_tmp: Path
) -> None:
    uid = df.uid_for("future-mtime")
    first, second = short_tmp / "first.dcm", short_tmp / "second.dcm"
    df.make_image(first, df.CT, seed=1, uid=uid, rows=8, columns=8)
    df.make_image(second, df.CT, seed=2, uid=uid, rows=8, columns=8)
    assert storescu(service.port, [first]).returncode == 0
    service.wait_stored([uid])
    # Given the stored file looks an hour newer than now (restored from a backup)
    stored = service.stored_path(uid)
    ahead = time.time() + 3600
    os.utime(stored, (ahead, ahead))
    # When the same UID is sent again
    assert storescu(service.port, [second]).returncode == 0
    # Then the new copy replaces it, and the log and the feed say replaced=true
    write = service.wait_event("WRITE", count=2, sop_instance_uid=uid)[-1]
    assert write["replaced"] == "true"
    assert df.dataset_bytes(stored) == df.dataset_bytes(second)
    with FeedClient(*endpoints(service.run_dir), 0) as client:
        messages = list(client.catch_up())
    assert [m.replaced for m in messages if isinstance(m, bus.InstanceCommitted)] == [False, True]
    assert not service.events("ERROR")
