"""Writing events through a failing disk without crash-looping.

A write that fails (full disk, I/O error, permission changed by hand) puts
the writer in a failing state: lines wait in a bounded in-memory backlog and
the file is reopened and retried every RETRY_INTERVAL_S. The failure is said
on stderr at once and every REPORT_INTERVAL_S. When a write works again the
backlog goes out, then one ERROR line saying how long it failed, why, and
how many lines were dropped. While the backlog is full the logger stops
reading its socket, so events wait in the senders' queues instead of being
lost here. If it is still failing at stop, the backlog goes to stderr
(Supervisor's child log): kept somewhere rather than nowhere. A failing
fsync is said once, then at a bounded rate (`storscp.repeats`).

An event with an origin and seq is reported to `Streams.written` only once
its line is in the file: the acknowledgement follows the write, never the
receipt, so a line waiting in the backlog is still held by its sender.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from storscp import bus
from storscp.logger.lines import encode_event
from storscp.logger.logfile import AlternatingLog
from storscp.logger.streams import Streams
from storscp.repeats import Repeats, recovered_fields, still_failing_fields

log = logging.getLogger(__name__)

BACKLOG_MAX_LINES = 10_000
BACKLOG_MAX_BYTES = 8 * 1024 * 1024
RETRY_INTERVAL_S = 1.0
REPORT_INTERVAL_S = 60.0
SYNC_INTERVAL_S = 1.0


@dataclass
class Failure:
    reason: str
    since_iso: str
    since: float
    next_retry: float
    next_report: float


# A line waiting in the backlog, and the (origin, seq) to acknowledge once it is written.
_Waiting = tuple[bytes, str | None, int]


class LogWriter:
    """The logger's only path to the files: format, write, survive failures."""

    def __init__(
        self,
        logfile: AlternatingLog,
        proc: str,
        clock: Callable[[], float] = time.monotonic,
        streams: Streams | None = None,
    ) -> None:
        self.logfile = logfile
        self.proc = proc
        self.clock = clock
        self.streams = streams if streams is not None else Streams()
        self.failure: Failure | None = None
        self.backlog: deque[_Waiting] = deque()
        self.backlog_bytes = 0
        self.dropped = 0
        self.written = 0
        # Totals for the metrics (`dropped` restarts at each recovery).
        self.failures = 0
        self.dropped_total = 0
        self._next_sync = clock() + SYNC_INTERVAL_S
        self.fsyncs = Repeats(retry_s=SYNC_INTERVAL_S, clock=clock)

    @property
    def accepting(self) -> bool:
        """False while the backlog is full: leave events in the senders' queues."""
        return len(self.backlog) < BACKLOG_MAX_LINES and self.backlog_bytes < BACKLOG_MAX_BYTES

    def write(self, event: bus.Event, origin: str | None = None, seq: int = 0) -> None:
        """Write `event` (event `seq` of sender `origin`, if it has one) or keep it for later."""
        event_id = f"{origin}:{seq}" if origin is not None else None
        line = encode_event(event, self.logfile.max_bytes, event_id)
        if self.failure is None:
            try:
                self.logfile.write_line(line)
            except OSError as exc:
                self._fail(exc)
            else:
                self.written += 1
                if origin is not None:
                    self.streams.written(origin, seq)
                return
        self._keep((line, origin, seq))

    def error(self, **fields: bus.FieldValue) -> None:
        """Write an ERROR event of the logger itself."""
        self.write(bus.Event(bus.EventType.ERROR, self.proc, dict(fields)))

    def tick(self) -> None:
        """Called from the main loop: fsync now and then, retry when failing."""
        now = self.clock()
        if self.failure is not None:
            if now >= self.failure.next_retry:
                self.retry()
            return
        if now >= self._next_sync:
            self._next_sync = now + SYNC_INTERVAL_S
            self._sync()

    def _sync(self) -> None:
        """fsync what was written; a failure is said once, then at a bounded rate.

        A failing fsync (the kernel may have dropped written pages) fails again
        every second, and each ERROR line it causes is one more line to sync:
        said every time, it would fill both files with nothing else.
        """
        path = str(self.logfile.current_path)
        if not self.fsyncs.due(path):
            return
        try:
            self.logfile.sync()
        except OSError as exc:
            if self.fsyncs.failed(path, str(exc)):
                log.error("fsync of %s failed: %s", path, exc)
                self.error(what="log fsync failed", file=path, reason=str(exc))
        else:
            recovered = self.fsyncs.succeeded(path)
            if recovered is not None:
                log.warning("fsync of %s works again", path)
                self.error(what="log fsync failed", file=path, **recovered_fields(recovered))
        reminder = self.fsyncs.reminder()
        if reminder is not None:
            log.error("fsync of %s still failing: %s", reminder.key, reminder.reason)
            self.error(what="log fsync failed", file=reminder.key, **still_failing_fields(reminder))

    def retry(self) -> bool:
        """Reopen and write the backlog; True once writing works again."""
        failure = self.failure
        if failure is None:
            return True
        now = self.clock()
        failure.next_retry = now + RETRY_INTERVAL_S
        try:
            self.logfile.reopen()
            while self.backlog:
                line, origin, seq = self.backlog[0]
                self.logfile.write_line(line)
                self.backlog.popleft()
                self.backlog_bytes -= len(line)
                self.written += 1
                if origin is not None:
                    self.streams.written(origin, seq)
        except OSError as exc:
            failure.reason = _reason(exc)
            if now >= failure.next_report:
                failure.next_report = now + REPORT_INTERVAL_S
                log.error(
                    "still cannot write the log (%s) after %.0fs; %d lines waiting, %d dropped",
                    failure.reason,
                    now - failure.since,
                    len(self.backlog),
                    self.dropped,
                )
            return False
        self.failure = None
        log.warning(
            "log writes work again after %.1fs; %d lines dropped", now - failure.since, self.dropped
        )
        self.error(
            what="log write failed",
            reason=failure.reason,
            since=failure.since_iso,
            seconds=round(now - failure.since, 1),
            lines_dropped=self.dropped,
        )
        self.dropped = 0
        return self.failure is None

    def close(self) -> None:
        """Last retry, fsync; a backlog that still cannot be written goes to stderr."""
        if self.failure is not None:
            self.retry()
        if self.failure is not None:
            log.error(
                "stopping with %d log lines unwritten (%s); they follow on stderr",
                len(self.backlog),
                self.failure.reason,
            )
            for line, _origin, _seq in self.backlog:
                sys.stderr.write("unwritten: " + line.decode("utf-8", "replace"))
            sys.stderr.flush()
        try:
            self.logfile.close()
        except OSError as exc:
            log.error("closing %s failed: %s", self.logfile.current_path, exc)

    def _fail(self, exc: OSError) -> None:
        now = self.clock()
        reason = _reason(exc)
        self.failures += 1
        self.failure = Failure(
            reason=reason,
            since_iso=bus.now_iso(),
            since=now,
            next_retry=now + RETRY_INTERVAL_S,
            next_report=now + REPORT_INTERVAL_S,
        )
        log.error(
            "cannot write %s: %s; keeping up to %d lines in memory, retrying every %.0fs",
            self.logfile.current_path,
            reason,
            BACKLOG_MAX_LINES,
            RETRY_INTERVAL_S,
        )

    def _keep(self, waiting: _Waiting) -> None:
        if not self.accepting:
            self.dropped += 1
            self.dropped_total += 1
            _line, origin, seq = waiting
            if origin is not None:
                self.streams.reject(origin, seq)  # its sender still holds it: take it next time
            return
        self.backlog.append(waiting)
        self.backlog_bytes += len(waiting[0])


def _reason(exc: OSError) -> str:
    return str(exc)  # "[Errno 28] No space left on device: '/var/log/storscp/storscp1.log'"
