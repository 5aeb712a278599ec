"""Where the committer keeps a SOP Instance UID, in either layout (Storage Commitment).

The flat layout is computed: `<storage_dir>/<UID><ext>`. The study layout
needs the Study and Series Instance UID, which the request does not carry;
the feed's history records the path of every commit while it keeps it (see
`feed_max_bytes`, `feed_max_age_s`). Behind a load balancer every node's
history counts, as every node's depot does: a modality may store through one
node and ask through another. With `layout = "study"` an instance older than
every history is not found.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from storscp import bus
from storscp.config import STATE_DIR_NAME, Config
from storscp.history import FEED_DIR_NAME, HistoryError, HistoryReader
from storscp.uids import storage_path


class Locator:
    """Paths of stored instances; holds the histories open for one check."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._readers: list[HistoryReader] = []
        if config.layout == "flat":
            return
        for state in _state_dirs(config):
            try:
                self._readers.append(HistoryReader(state))
            except HistoryError:
                continue  # that node has not committed anything yet

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers.clear()

    def __enter__(self) -> Locator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def path(self, uid: str) -> Path:
        """Where `uid` is stored. UIDError if it cannot be a file name;
        FileNotFoundError when no history knows it (study layout)."""
        config = self.config
        if config.layout == "flat":
            return storage_path(config.storage_dir, uid, config.extension)
        storage_path(config.storage_dir, uid, config.extension)  # validates the UID
        found: list[bus.InstanceCommitted] = []
        for reader in self._readers:
            msg = reader.newest_instance(uid)
            if msg is not None:
                found.append(msg)
        if not found:
            raise FileNotFoundError(f"{uid} is in no feed history")
        # Between nodes the copy committed last wins (README, "Running several gateways").
        return Path(max(found, key=lambda msg: msg.time).path)


def _state_dirs(config: Config) -> list[Path]:
    """This node's state directory first, then every other node's beside it."""
    dirs = [config.state_dir]
    if not config.node:
        return dirs
    root = config.storage_dir / STATE_DIR_NAME
    try:
        others = sorted(p for p in root.iterdir() if p != config.state_dir)
    except OSError:
        return dirs
    return dirs + [p for p in others if (p / FEED_DIR_NAME).is_dir()]
