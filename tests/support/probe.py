"""A real sender of numbered events, for measuring what reaches the log.

Run as a process (`python -m support.probe ENDPOINT RUN COUNT RATE`): it uses
the components' own Outbox, so its events take the path a receiver's do.
Each event is `WRITE proc=probe run=RUN seq=N`. It prints a JSON line when
all are queued, and one when done: how many it sent and how many the outbox
dropped (queue full). Closing waits up to a minute for the logger.
"""

from __future__ import annotations

import argparse
import json
import time

from storscp import bus
from storscp.outbox import Outbox

PROC = "probe"


def send(endpoint: str, run: str, count: int, rate: float) -> dict[str, int]:
    """Send `count` events at about `rate` per second (0: as fast as possible)."""
    # A long linger: what is still queued at exit is delivered, not discarded,
    # so the count measures the logger's losses and nothing else.
    outbox = Outbox(PROC, {"logger": endpoint}, linger_ms=60_000)
    outbox.start()
    started = time.monotonic()
    try:
        for seq in range(count):
            if rate > 0:
                # Pace the load; this is the generator's clock, not a wait for a result.
                delay = started + seq / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            outbox.event(bus.EventType.WRITE, run=run, seq=seq)
        print(json.dumps({"queued": count}), flush=True)
    finally:
        outbox.close(timeout_s=90.0)
    return {"sent": count, "dropped": outbox.dropped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.probe")
    parser.add_argument("endpoint")
    parser.add_argument("run")
    parser.add_argument("count", type=int)
    parser.add_argument("rate", type=float)
    args = parser.parse_args(argv)
    print(json.dumps(send(args.endpoint, args.run, args.count, args.rate)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
