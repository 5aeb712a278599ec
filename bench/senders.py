"""The clients: DCMTK storescu processes, as a modality would send.

storescu keeps its default negotiation: it proposes every storage SOP class
it knows (~120 presentation contexts), each with the uncompressed transfer
syntaxes, whatever the files are. That is what real modalities do and it
makes association setup a realistic cost. TCP_NODELAY=1 is in its environment
(see servers.py for why).

Two modes:
- `senders` parallel storescu processes, each sending its share of the files
  over one association;
- `per_instance`: `senders` clients that each run storescu once per file, so
  every instance opens and releases its own association. storescu has no
  option for that (`--repeat` repeats the whole file list), hence a shell loop;
  the process start of storescu (~ms) is in the measured time for all servers.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.servers import AE_TITLE, DCMTK_ENV

SEND_TIMEOUT_S = 900.0

# One association per file; stop at the first failure so it cannot go unnoticed.
# $1 is the port, the rest are files.
_PER_INSTANCE_LOOP = (
    'port=$1; shift; for f in "$@"; do '
    f'storescu -aet STORESCU -aec {AE_TITLE} 127.0.0.1 "$port" "$f" || exit 1; done'
)


@dataclass(frozen=True, slots=True)
class SendResult:
    wall_s: float
    failures: list[str]


def shares(files: list[Path], senders: int) -> list[list[Path]]:
    """Round-robin split, so each sender gets the same mix and about the same count."""
    return [part for part in (files[i::senders] for i in range(senders)) if part]


def _storescu_argv(port: int) -> list[str]:
    return ["storescu", "-aet", "STORESCU", "-aec", AE_TITLE, "127.0.0.1", str(port)]


def send(
    port: int, files: list[Path], senders: int, per_instance: bool, log_dir: Path
) -> SendResult:
    """Send all files with `senders` concurrent clients; wall time from first spawn to last exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    argvs: list[list[str]] = []
    for part in shares(files, senders):
        names = [str(p) for p in part]
        if per_instance:
            argvs.append(["sh", "-c", _PER_INSTANCE_LOOP, "sh", str(port), *names])
        else:
            argvs.append([*_storescu_argv(port), *names])
    logs = [open(log_dir / f"sender{i}.log", "wb") for i in range(len(argvs))]  # noqa: SIM115
    try:
        start = time.monotonic()
        procs = [
            subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=DCMTK_ENV)
            for argv, log in zip(argvs, logs, strict=True)
        ]
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(SEND_TIMEOUT_S))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        wall_s = time.monotonic() - start
    finally:
        for log in logs:
            log.close()
    failures = []
    for index, code in enumerate(codes):
        text = (log_dir / f"sender{index}.log").read_text(errors="replace")
        # storescu reports failed stores as E: lines; some versions still exit 0.
        errors = [line for line in text.splitlines() if line.startswith(("E:", "F:"))]
        if code != 0 or errors:
            failures.append(f"sender {index} exit {code}: " + " | ".join(errors[:3]))
    return SendResult(wall_s, failures)
