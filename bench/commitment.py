"""Storage Commitment measurements: `python -m bench.commitment` (or `make bench-commitment`).

1. Latency: from the N-ACTION-RSP to the report in the modality's hands,
   for a request of `--references` stored instances, with the report on a
   new association (the modality releases at once) and on the association
   held open. pynetdicom plays the modality, as in the tests.
2. Receive rate: DCMTK `storescu` stores `--instances` small instances over
   one association, alone, then while another modality asks for commitment
   of `--references` instances again and again (each waits for its report).

Rounds alternate the two conditions so that drifts of a shared machine hit
both. Prints a Markdown table; the README quotes it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian

from tests.support import dicomfiles as df
from tests.support.modality import Modality
from tests.support.scu import DCMTK_ENV, pynetdicom_store
from tests.support.service import Service, short_tempdir


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make(root: Path, count: int, first_seed: int) -> list[tuple[Path, str]]:
    """(path, uid) of `count` small CT images."""
    out = []
    for seed in range(first_seed, first_seed + count):
        path = root / f"i{seed}.dcm"
        out.append((path, df.make_image(path, df.CT, seed=seed, rows=16, columns=16)))
    return out


def storescu_rate(port: int, files: list[Path]) -> float:
    """Instances per second of one DCMTK storescu over one association."""
    started = time.monotonic()
    result = subprocess.run(
        ["storescu", "-aet", "RATE", "-aec", "STORSCP", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"storescu failed: {result.stderr[-2000:]}")
    return len(files) / elapsed


class Asker(threading.Thread):
    """Asks for commitment of `refs` again and again until stopped."""

    def __init__(self, modality: Modality, port: int, refs: list[tuple[str, str]]) -> None:
        super().__init__(daemon=True)
        self.modality, self.port, self.refs = modality, port, refs
        self.stop = threading.Event()
        self.served = 0
        self.number = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.number += 1
            transaction = df.uid_for(f"bench-load-{time.time_ns()}-{self.number}")
            status, _ = self.modality.request(self.port, transaction, self.refs)
            assert status == 0, status
            self.modality.wait_report(transaction, timeout_s=120)
            self.served += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.commitment")
    parser.add_argument("--references", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    root = short_tempdir("scbench")
    modality = Modality()
    modality_port = modality.listen()
    svc = Service(
        root / "svc",
        remote_ae=[
            {
                "name": "bench modality",
                "ae_title": "MODALITY",
                "host": "127.0.0.1",
                "port": modality_port,
                "storage_commitment": True,
            }
        ],
    )
    (root / "svc").mkdir()
    try:
        log(f"making {args.references} + {args.instances} instances in {root}")
        committed = make(root, args.references, 1)
        rate_files = [p for p, _ in make(root, args.instances, 100_000)]
        svc.start()
        files = [(p, df.CT, str(ExplicitVRLittleEndian)) for p, _ in committed]
        statuses = pynetdicom_store(svc.port, files, calling_ae="MODALITY")
        assert statuses == [0] * len(files), "storing the referenced instances failed"
        svc.wait_stored(uid for _, uid in committed)
        refs = [(df.CT, uid) for _, uid in committed]

        latency: dict[str, list[float]] = {"new": [], "same": []}
        for round_ in range(args.rounds):
            for mode in ("new", "same") if round_ % 2 == 0 else ("same", "new"):
                transaction = df.uid_for(f"bench-latency-{mode}-{round_}-{time.time_ns()}")
                hold_s = 120.0 if mode == "same" else 0.0
                status, answered = modality.request(svc.port, transaction, refs, hold_s=hold_s)
                assert status == 0, status
                report = modality.wait_report(transaction, timeout_s=120)
                assert report.same_association == (mode == "same")
                assert len(report.committed) == len(refs) and not report.failed
                latency[mode].append(report.at - answered)
                log(f"latency {mode} round {round_ + 1}: {report.at - answered:.3f} s")

        rates: dict[str, list[float]] = {"alone": [], "with requests": []}
        served: list[float] = []
        for round_ in range(args.rounds):
            for condition in (
                ("alone", "with requests") if round_ % 2 == 0 else ("with requests", "alone")
            ):
                asker = None
                if condition == "with requests":
                    asker = Asker(modality, svc.port, refs)
                    asker.start()
                    time.sleep(0.5)  # the first request is being served
                started = time.monotonic()
                rate = storescu_rate(svc.port, rate_files)
                elapsed = time.monotonic() - started
                if asker is not None:
                    asker.stop.set()
                    asker.join(120)
                    served.append(asker.served / (elapsed + 0.5))
                rates[condition].append(rate)
                log(f"rate {condition} round {round_ + 1}: {rate:.0f}/s")

        print(f"\nStorage Commitment, {args.references} references, {args.rounds} rounds\n")
        print("| N-ACTION-RSP -> report delivered | median | min | max |")
        print("| --- | --- | --- | --- |")
        for mode, label in (("new", "new association"), ("same", "same association")):
            values = latency[mode]
            print(
                f"| {label} | {statistics.median(values):.3f} s | {min(values):.3f} s"
                f" | {max(values):.3f} s |"
            )
        print(f"\n| storescu, {args.instances} instances of 16x16 CT | median | min | max |")
        print("| --- | --- | --- | --- |")
        for condition, values in rates.items():
            print(
                f"| {condition} | {statistics.median(values):.0f}/s | {min(values):.0f}/s"
                f" | {max(values):.0f}/s |"
            )
        print(
            f"\nRequests served meanwhile: {statistics.median(served):.2f}/s"
            f" ({args.references} references each, report delivered)"
        )
        return 0
    finally:
        modality.stop_listening()
        svc.stop(clean_depot=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
