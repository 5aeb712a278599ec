"""Event senders under disruption: no C-STORE waits for the logger; a killed sender loses little.

Issue 15, item 2: the receiver never waits for the logger. Eight senders
(separate processes, support.timedscu) store tiny instances, first through
a quiet stretch, then while the logger is frozen (SIGSTOP) and killed with
SIGKILL; the slowest C-STORE answer must stay under a second (one was once
seen unanswered for 20 s right after a logger kill). Every acknowledged
store's WRITE event arrives: the committer held them while the logger was
away.

Issue 15, item 3: when a *sender* dies (kill -9 of a receiver), the events
it held unacknowledged die with it. The senders open short associations
(two stores each: `requested`, `accepted` and `released` events), a
receiver is killed mid-stream, and we count the associations the clients
saw accepted or released that have no such line. The instances are safe
(depot), and the committer's WRITE event for each acknowledged store is
there.

    .venv/bin/python -m pytest -s tests/system/test_logger_outage.py            # make test's part
    .venv/bin/python -m pytest -s -m slow tests/system/test_logger_outage.py    # the measurements

The killed receiver is a measurement only (`slow`): it asserts that every
WRITE event arrives and reports the lost ASSOCIATION events.
"""

from __future__ import annotations

import contextlib
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.outage import (
    Run,
    Window,
    freeze,
    kill,
    make_files,
    slowest,
    store_through,
    wait_writes,
)
from support.service import Service, poll_for, running_service, short_tempdir

SENDERS = 8
FILES_PER_SENDER = 25
MAX_ANSWER_S = 1.0
FREEZE_S = 2.0
CONTROL_S = 3.0
ASSOCIATION_STORES = 10
# Seconds a killed receiver's missing events get to turn up after all.
LATE_EVENTS_S = 3.0


@pytest.fixture(scope="module")
def files() -> Iterator[list[list[Path]]]:
    root = short_tempdir("lgo")
    yield make_files(root, SENDERS, FILES_PER_SENDER, seed=91000)
    shutil.rmtree(root, ignore_errors=True)


# Two receivers (one may be killed); files large enough to keep every line of a test.
SERVICE_KEYS: dict[str, object] = {"receivers": 2, "log_max_bytes": 64_000_000}


@pytest.fixture
def outage_service() -> Iterator[Service]:
    with running_service(**SERVICE_KEYS) as svc:
        yield svc


def check_writes(svc: Service, run: Run, before: Counter[str]) -> None:
    """Each acknowledged store was committed, and each commit's WRITE event is in the log.

    A store that got no Success may have been committed too (its receiver was
    killed after the file was durable, before the answer went out): per UID,
    acknowledged <= WRITE events <= attempted.
    """
    least, most = before + run.acknowledged, before + run.attempted
    wait_writes(svc, sum(least.values()))
    # Late commits of unanswered stores: none once no ready file is left.
    poll_for(
        lambda: not any(n.endswith(".ready") for n in svc.depot_entries()),
        60,
        "every ready file committed",
    )
    written = writes(svc)
    short = {uid: (written[uid], n) for uid, n in least.items() if written[uid] < n}
    extra = {uid: (written[uid], n) for uid, n in written.items() if n > most[uid]}
    assert not short, f"WRITE events missing (written, acknowledged): {short}"
    assert not extra, f"WRITE events of stores never sent (written, attempted): {extra}"


def writes(svc: Service) -> Counter[str]:
    return Counter(w["sop_instance_uid"] for w in svc.events("WRITE", proc="committer"))


@dataclass
class Answers:
    slowest_control_s: float
    slowest_disrupted_s: float
    summary: str
    run: Run
    writes_before: Counter[str]


def answer_times(
    svc: Service, files: list[list[Path]], schedule: list[Callable[[], Window]]
) -> Answers:
    """Store through `schedule`; the slowest answers with and without disruption.

    Associations of ASSOCIATION_STORES stores each, so that the receiver has
    events to say (requested, accepted, released) all along; their answers
    (A-ASSOCIATE-AC, A-RELEASE-RP) count as much as the C-STOREs'.
    """
    before = writes(svc)
    run = store_through(svc, files, schedule, CONTROL_S, "logger", ASSOCIATION_STORES)
    timings = run.timings + run.association_timings
    control_s, _ = slowest(timings, [run.control])
    disrupted_s, sent = slowest(timings, run.windows)
    store_s, _ = slowest(run.timings, run.windows)
    during = [w.what for w in run.windows if w.overlaps(sent, sent + disrupted_s)]
    answers = Answers(
        control_s,
        disrupted_s,
        f"{SENDERS} senders, {len(run.timings)} C-STOREs on"
        f" {len(run.association_timings) // 2} associations in {run.seconds:.0f} s;"
        f" {', '.join(w.what for w in run.windows)};"
        f" slowest answer while the logger was disrupted {disrupted_s * 1000:.0f} ms"
        f" (during {' and '.join(during) or '-'}; C-STORE {store_s * 1000:.0f} ms),"
        f" in {CONTROL_S:.0f} s without disruption {control_s * 1000:.0f} ms;"
        f" failures {len(run.failures)}",
        run,
        before,
    )
    print(answers.summary)
    assert run.failures == [], run.failures
    return answers


def test_c_store_answers_do_not_wait_for_a_frozen_or_killed_logger(
    outage_service: Service, files: list[list[Path]]
) -> None:
    svc = outage_service
    freeze_s = 3.0
    answers = answer_times(
        svc,
        files,
        [
            lambda: freeze(svc, "logger", freeze_s),
            lambda: kill(svc, "logger"),
            lambda: kill(svc, "logger"),
        ],
    )
    # A receiver that waited for the logger would not answer for the whole freeze.
    assert answers.slowest_disrupted_s < freeze_s / 2, answers.summary
    # And none is slower than a second, unless the machine is that slow anyway:
    # other test runs share these two cores (the slow measurement asserts 1 s flat).
    bound = max(MAX_ANSWER_S, 2 * answers.slowest_control_s)
    assert answers.slowest_disrupted_s < bound, answers.summary
    check_writes(svc, answers.run, answers.writes_before)


@pytest.mark.slow
def test_c_store_answer_times_under_logger_outages_measurement(
    outage_service: Service, files: list[list[Path]]
) -> None:
    svc = outage_service
    schedule: list[Callable[[], Window]] = []
    for _ in range(4):
        schedule += [
            lambda: freeze(svc, "logger", FREEZE_S),
            lambda: kill(svc, "logger"),
            lambda: kill(svc, "logger"),
            lambda: freeze(svc, "logger", FREEZE_S),
        ]
    answers = answer_times(svc, files, schedule)
    assert answers.slowest_disrupted_s < MAX_ANSWER_S, answers.summary
    check_writes(svc, answers.run, answers.writes_before)


@dataclass
class SenderLoss:
    associations: int
    events_expected: int
    events_missing: int
    summary: str


def kill_a_receiver(svc: Service, files: list[list[Path]]) -> SenderLoss:
    """Short associations; kill -9 one receiver mid-stream; which ASSOCIATION events are missing."""
    before_writes = writes(svc)
    before_lines = len(svc.events("ASSOCIATION", proc="receiver"))
    run = store_through(svc, files, [lambda: kill(svc, "receiver")], 1.0, "receiver", 2)
    # The clients' view: an association they saw accepted has an `accepted` line,
    # one whose release was answered a `released` line.
    expected = {("accepted", p) for p, state in run.associations.items() if state != "refused"}
    expected |= {("released", p) for p, state in run.associations.items() if state == "released"}

    def missing() -> set[tuple[str, int]]:
        lines = svc.events("ASSOCIATION", proc="receiver")[before_lines:]
        seen = {(e["state"], int(e["peer"].rsplit(":", 1)[1])) for e in lines}
        return expected - seen

    # The instances are safe, and the committer's events for them all arrived;
    # the killed receiver's partial file goes with a sweep once its grace is over.
    check_writes(svc, run, before_writes)
    poll_for(lambda: svc.depot_entries() == [], 60, "the depot to drain")
    # What is still missing after a while is what died with the receiver.
    with contextlib.suppress(AssertionError):
        poll_for(lambda: not missing(), LATE_EVENTS_S, "every ASSOCIATION event")
    lost = missing()
    events_per_s = len(expected) / run.seconds
    loss = SenderLoss(
        len(run.associations),
        len(expected),
        len(lost),
        f"kill -9 of a receiver under {SENDERS} senders ({len(run.associations)} associations,"
        f" {len(run.timings)} stores in {run.seconds:.0f} s, ~{events_per_s:.0f} accepted/released"
        f" events/s): {len(lost)} of {len(expected)} such events lost"
        f" ({', '.join(f'{s} {p}' for s, p in sorted(lost)) or 'none'})",
    )
    print(loss.summary)
    return loss


@pytest.mark.slow
def test_what_a_killed_receiver_loses_measurement(
    outage_service: Service, files: list[list[Path]]
) -> None:
    losses = [kill_a_receiver(outage_service, files) for _ in range(5)]
    print(
        "kill -9 of a receiver, events lost per run:"
        f" {[(x.events_missing, x.events_expected) for x in losses]}"
    )
