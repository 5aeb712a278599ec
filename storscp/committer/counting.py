"""The committer's metrics: what it made visible, for whom, and how fast.

Counted once per batch, after the directory fsync (when the instances are
stored for good): one counter update per calling AE in the batch, one
histogram observation per instance. The latency runs from the ready file's
rename (its ctime, just before the receiver answered Success) to now.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from storscp.ae_labels import AeLabels
from storscp.config import Config
from storscp.instruments import committer_metrics


class Visible(Protocol):
    """What the committer knows of one instance it made visible."""

    @property
    def replaced(self) -> bool: ...
    @property
    def ready_ctime(self) -> float: ...
    @property
    def calling_ae(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...


class CommitCounter:
    def __init__(self, config: Config) -> None:
        self.metrics = committer_metrics()
        directory = config.metrics_dir if config.metrics_address is not None else None
        self.ae_label = AeLabels((ae.ae_title for ae in config.remote_ae), directory)

    def committed(self, items: Sequence[Visible]) -> None:
        if not items:
            return
        now = time.time()
        m = self.metrics
        per_ae: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        replaced = 0
        for item in items:
            counts = per_ae[self.ae_label(item.calling_ae)]
            counts[0] += 1
            counts[1] += item.size_bytes
            replaced += item.replaced
            m.visible_seconds.observe(max(0.0, now - item.ready_ctime))
        for label, (instances, size) in per_ae.items():
            m.stored.labels(label).inc(instances)
            m.stored_bytes.labels(label).inc(size)
        if replaced:
            m.replaced.inc(replaced)
        m.last_stored.set(now)
        m.heartbeat.beat()
