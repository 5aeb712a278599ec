"""The logger's metrics: lines written, write failures, events it dropped.

Read from the writer's own tallies once per turn of the main loop (at most
every POLL_MS or MAX_BATCH lines), so writing a line costs no metric update.
The heartbeat beats only while writing works: a logger that cannot write
is not healthy, however alive its process.
"""

from __future__ import annotations

from storscp.instruments import events_dropped, logger_metrics
from storscp.logger.writer import LogWriter


class LogCounter:
    def __init__(self) -> None:
        self.metrics = logger_metrics()
        # Lines the writer's in-memory backlog had no room for.
        self.dropped_family = events_dropped()
        self.dropped = self.dropped_family.labels("logger", "backlog")
        self._written = self._failures = self._dropped = 0

    def update(self, writer: LogWriter) -> None:
        m = self.metrics
        if writer.written > self._written:
            m.lines_written.inc(writer.written - self._written)
            self._written = writer.written
        if writer.failures > self._failures:
            m.write_failures.inc(writer.failures - self._failures)
            self._failures = writer.failures
        if writer.dropped_total > self._dropped:
            self.dropped.inc(writer.dropped_total - self._dropped)
            self._dropped = writer.dropped_total
        if writer.failure is None:
            m.heartbeat.beat()
