"""`storscp feed`: the stored-instance feed as JSON lines, for shell scripts.

Without `-f` it prints the history after `--since` (default 0: all of it)
and exits; with `-f` it then follows the live feed until interrupted,
reconnecting by itself while the service restarts. One JSON object a line,
`{"kind": ..., "seq": ..., ...}`; see README "Downstream: the feed".
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import TextIO

from storscp import bus
from storscp.config import Config
from storscp.errors import CommandRefused
from storscp.exitcodes import ExitCode
from storscp.feedclient import FeedClient, FeedError, HistoryGap, as_json_line

RETRY_S = 1.0


def cmd_feed(config: Config, since: int, follow: bool) -> int:
    live = bus.feed_live_endpoint(config.run_dir, config.feed_live_endpoint)
    replay = bus.feed_replay_endpoint(config.run_dir, config.feed_replay_endpoint)
    out = sys.stdout
    try:
        with FeedClient(live, replay, since) as client:
            try:
                _print(out, client.catch_up())
            except HistoryGap as exc:
                raise CommandRefused(ExitCode.DATAERR, str(exc)) from None
            except FeedError as exc:
                if not follow:
                    raise CommandRefused(ExitCode.UNAVAILABLE, str(exc)) from None
                _say(exc)
            while follow:
                try:
                    _print(out, client.receive(RETRY_S))
                except HistoryGap as exc:
                    raise CommandRefused(ExitCode.DATAERR, str(exc)) from None
                except FeedError as exc:  # the service restarts: keep trying
                    _say(exc)
                    time.sleep(RETRY_S)
    except KeyboardInterrupt:
        return ExitCode.OK
    except BrokenPipeError:
        # The reader went away (`storscp feed | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return ExitCode.OK


def _print(out: TextIO, messages: Iterable[bus.FeedMessage]) -> None:
    for msg in messages:
        out.write(as_json_line(msg) + "\n")
    out.flush()


def _say(exc: Exception) -> None:
    print(f"storscp feed: {exc}; retrying", file=sys.stderr, flush=True)
