"""`storscp logs`: storscp1.log and storscp2.log as one stream, oldest first."""

from __future__ import annotations

import os
import sys
import time

from storscp.config import Config
from storscp.errors import CommandRefused
from storscp.exitcodes import ExitCode
from storscp.logger.reader import LogFollower

# How often `storscp logs -f` looks for new lines: well under the time the
# logger needs to fill a whole file, so no alternation goes unseen.
FOLLOW_INTERVAL_S = 0.1
FOLLOW_BUSY_INTERVAL_S = 0.01


def cmd_logs(config: Config, follow: bool, last: int | None) -> int:
    """Print both log files as one stream; with `follow`, keep printing."""
    follower = LogFollower(config.log_dir, config.log_max_bytes)
    out = sys.stdout.buffer
    try:
        lines = follower.poll()
        if not lines and not follow and not any(p.exists() for p in follower.paths):
            raise CommandRefused(ExitCode.NOINPUT, f"no log files in {config.log_dir}")
        out.writelines(lines if last is None else lines[len(lines) - last :])
        out.flush()
        lost, maybe_lost = 0, 0
        while follow:
            # Busy log: look again soon, so no file fills up between two looks.
            time.sleep(FOLLOW_BUSY_INTERVAL_S if lines else FOLLOW_INTERVAL_S)
            lines = follower.poll()
            out.writelines(lines)
            out.flush()
            if follower.lost > lost or follower.maybe_lost > maybe_lost:
                how = "were" if follower.lost > lost else "may have been"
                lost, maybe_lost = follower.lost, follower.maybe_lost
                print(
                    "storscp: the log alternated twice between two reads;"
                    f" some lines {how} overwritten before they could be shown",
                    file=sys.stderr,
                    flush=True,
                )
    except KeyboardInterrupt:
        return ExitCode.OK
    except BrokenPipeError:
        # The reader went away (`storscp logs | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    return ExitCode.OK
