"""Study complete: a study with no committed instance for `study_quiet_s` ends a burst.

Across every association and receiver, since the committer sees every
commit. Each open study is a row of the history's `open_study` table, written
in the same transaction as its instances' feed rows; the study_complete
message and the row's removal are one transaction too. So a committer restart
neither loses a burst nor completes it twice.

Quiet time is measured with the arrival clock (CLOCK_MONOTONIC of this
boot), never the wall clock. After a reboot the last commit's tick means
nothing, so the quiet period of a study left open starts again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

NS_PER_S = 1_000_000_000
# Bounds on what one open study remembers (a hostile peer controls these values).
MAX_CALLING_AES = 16
MAX_SERIES = 10_000


@dataclass(slots=True)
class OpenStudy:
    first_time: str
    last_time: str
    instances: int = 0
    series: list[str] = field(default_factory=list)
    calling_aes: list[str] = field(default_factory=list)
    # Series beyond MAX_SERIES, counted without remembering them.
    extra_series: int = 0
    last_boot: int = 0
    last_tick: int = 0


def _row(study: OpenStudy) -> dict[str, Any]:
    return {name: getattr(study, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(OpenStudy))


class Studies:
    """Open studies; tells which ones have been quiet long enough."""

    def __init__(self, quiet_s: float, rows: dict[str, str], boot: int, now_tick: int) -> None:
        self.quiet_ns = int(quiet_s * NS_PER_S)
        self._open: dict[str, OpenStudy] = {}
        self._dirty: set[str] = set()
        for uid, state in rows.items():
            study = OpenStudy(**json.loads(state))
            if study.last_boot != boot:
                # A tick of another boot: restart its quiet period now.
                study.last_boot, study.last_tick = boot, now_tick
            self._open[uid] = study

    @property
    def enabled(self) -> bool:
        return self.quiet_ns > 0

    def __len__(self) -> int:
        return len(self._open)

    def add(
        self, study_uid: str, series_uid: str, calling_ae: str, time: str, boot: int, tick: int
    ) -> None:
        """Count a committed instance in its study's burst (committed at `time`, `tick`)."""
        if not self.enabled or not study_uid:
            return
        study = self._open.get(study_uid)
        if study is None:
            study = OpenStudy(first_time=time, last_time=time)
            self._open[study_uid] = study
        study.last_time = time
        study.instances += 1
        study.last_boot, study.last_tick = boot, tick
        if series_uid and series_uid not in study.series:
            if len(study.series) < MAX_SERIES:
                study.series.append(series_uid)
            else:
                study.extra_series += 1
        if calling_ae not in study.calling_aes and len(study.calling_aes) < MAX_CALLING_AES:
            study.calling_aes.append(calling_ae)
        self._dirty.add(study_uid)

    def take_dirty_rows(self) -> dict[str, str]:
        """open_study rows changed since the last call, for the history's transaction."""
        # Not asdict(): it deep-copies the lists, on every batch.
        rows = {uid: json.dumps(_row(self._open[uid])) for uid in self._dirty}
        self._dirty.clear()
        return rows

    def quiet(self, boot: int, now_tick: int) -> list[str]:
        """Studies whose last commit was `study_quiet_s` ago or more, oldest first."""
        if not self.enabled:
            return []
        due = [
            (study.last_tick, uid)
            for uid, study in self._open.items()
            if study.last_boot == boot and now_tick - study.last_tick >= self.quiet_ns
        ]
        return [uid for _, uid in sorted(due)]

    def completion(self, uid: str) -> dict[str, Any]:
        """StudyComplete fields (but seq and time) of a quiet study."""
        study = self._open[uid]
        return {
            "study_instance_uid": uid,
            "calling_aes": tuple(study.calling_aes),
            "series": len(study.series) + study.extra_series,
            "instances": study.instances,
            "first_time": study.first_time,
            "last_time": study.last_time,
        }

    def close(self, uid: str) -> None:
        """Forget a study once its study_complete is durable."""
        self._open.pop(uid, None)
        self._dirty.discard(uid)
