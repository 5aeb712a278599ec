"""The clients: DCMTK storescu processes, as a modality would send.

storescu keeps its default negotiation: it proposes every storage SOP class
it knows (~120 presentation contexts), each with the uncompressed transfer
syntaxes, whatever the files are. That is what real modalities do and it
makes association setup a realistic cost. TCP_NODELAY=1 is in its environment
(see servers.py for why).

Three uses:
- `senders` parallel storescu processes, each sending its share of the files
  over one association;
- `per_instance`: `senders` clients that each run storescu once per file, so
  every instance opens and releases its own association. storescu has no
  option for that (`--repeat` repeats the whole file list), hence a shell loop;
  the process start of storescu (~ms) is in the measured time for all servers;
- `timed`: as the first, but storescu logs through a log4cplus configuration
  that stamps every line with the wall-clock time in microseconds, so the
  latency scenario learns when each Success response arrived. storescu logs
  "Received Store Response" as soon as DIMSE_storeUser returns.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.servers import AE_TITLE, DCMTK_ENV

SEND_TIMEOUT_S = 900.0

# One association per file; stop at the first failure so it cannot go unnoticed.
# $1 is the port, the rest are files.
_PER_INSTANCE_LOOP = (
    'port=$1; shift; for f in "$@"; do '
    f'storescu -aet STORESCU -aec {AE_TITLE} 127.0.0.1 "$port" "$f" || exit 1; done'
)

# %d is UTC; %s (glibc strftime) the Unix seconds; %Q milliseconds with a
# microsecond fraction, e.g. "1795811909.835.382" = 1795811909.835382 s.
TIMESTAMP_LOG_CONFIG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %d{%s.%Q} %p %m%n
"""
_STAMPED = re.compile(r"^(\d+)\.(\d+\.\d+) (\w+) (.*)$")


@dataclass(frozen=True, slots=True)
class SendResult:
    wall_s: float
    failures: list[str]
    # file -> wall-clock time (time.time() scale) its Success arrived; `timed` only
    success_at: dict[str, float] = field(default_factory=dict)


def shares(files: list[Path], senders: int) -> list[list[Path]]:
    """Round-robin split, so each sender gets the same mix and about the same count."""
    return [part for part in (files[i::senders] for i in range(senders)) if part]


def _storescu_argv(port: int, *options: str) -> list[str]:
    return ["storescu", *options, "-aet", "STORESCU", "-aec", AE_TITLE, "127.0.0.1", str(port)]


def send(
    port: int,
    files: list[Path],
    senders: int,
    log_dir: Path,
    *,
    per_instance: bool = False,
    timed: bool = False,
) -> SendResult:
    """Send all files with `senders` concurrent clients; wall time from first spawn to last exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    options: list[str] = []
    if timed:
        config = log_dir / "storescu-timestamps.cfg"
        config.write_text(TIMESTAMP_LOG_CONFIG)
        options = ["-lc", str(config)]
    argvs: list[list[str]] = []
    for part in shares(files, senders):
        names = [str(p) for p in part]
        if per_instance:
            argvs.append(["sh", "-c", _PER_INSTANCE_LOOP, "sh", str(port), *names])
        else:
            argvs.append([*_storescu_argv(port, *options), *names])
    log_paths = [log_dir / f"sender{i}.log" for i in range(len(argvs))]
    logs = [open(path, "wb") for path in log_paths]  # noqa: SIM115
    try:
        start = time.monotonic()
        procs = [
            subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=DCMTK_ENV)
            for argv, log in zip(argvs, logs, strict=True)
        ]
        codes = [_wait_or_kill(proc) for proc in procs]
        wall_s = time.monotonic() - start
    finally:
        for log in logs:
            log.close()
    failures = []
    success_at: dict[str, float] = {}
    for index, (code, path) in enumerate(zip(codes, log_paths, strict=True)):
        lines = path.read_text(errors="replace").splitlines()
        if timed:
            errors = _read_timed_log(lines, success_at)
        else:
            # storescu reports failed stores as E: lines; some versions still exit 0.
            errors = [line for line in lines if line.startswith(("E:", "F:"))]
        if code != 0 or errors:
            failures.append(f"sender {index} exit {code}: " + " | ".join(errors[:3]))
    return SendResult(wall_s, failures, success_at)


def _wait_or_kill(proc: subprocess.Popen[bytes]) -> int:
    """Exit code of a client we started; a hung one is killed (by its pid) and fails."""
    try:
        return proc.wait(SEND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -1


def _read_timed_log(lines: list[str], success_at: dict[str, float]) -> list[str]:
    """Fill success_at from a timestamped storescu log; return its error lines."""
    errors = []
    current = None
    for line in lines:
        match = _STAMPED.match(line)
        if match is None:
            continue  # "XMIT: ..." progress output
        seconds, millis, level, message = match.groups()
        if level in ("ERROR", "FATAL"):
            errors.append(message)
        elif message.startswith("Sending file: "):
            current = message.removeprefix("Sending file: ")
        elif message.startswith("Received Store Response"):
            if current is None or "(Success)" not in message:
                errors.append(f"{current}: {message}")
            else:
                success_at[current] = int(seconds) + float(millis) / 1000
            current = None
    return errors
