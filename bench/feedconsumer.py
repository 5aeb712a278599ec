"""A feed consumer process for bench/feed.py: one line per message, stamped at receipt.

`python -m bench.feedconsumer LIVE REPLAY OUT AFTER` follows the feed from
seq AFTER and writes `<time.time()> <seq> <sop_instance_uid>` per instance
to OUT, flushed, until SIGTERM. It prints `ready` on stdout once it has
caught up with the history, so the harness can start the senders.
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

from storscp import bus
from storscp.feedclient import FeedClient


def main(argv: list[str] | None = None) -> int:
    live, replay, out_path, after = (argv or sys.argv[1:])[:4]
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    with FeedClient(live, replay, int(after)) as client, open(out_path, "w") as out:
        for _ in client.catch_up():
            pass  # what came before this run is not measured
        print("ready", flush=True)
        while not stopping:
            for msg in client.receive(0.1):
                now = time.time()
                if isinstance(msg, bus.InstanceCommitted):
                    out.write(f"{now:.6f} {msg.seq} {msg.sop_instance_uid}\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
