"""The base of storscp's own exceptions, and the refusal of a `storscp` command.

At the bottom of the import graph (only `exitcodes.py` below it), so every
module can derive its exceptions from `StorscpError` without a cycle, and a
boundary can tell our failures, each with a sentence for the admin, from a
library's or a bug.
"""

from storscp.exitcodes import ExitCode


class StorscpError(Exception):
    """Base of every exception storscp defines; the message says what and where."""


class CommandRefused(StorscpError):
    """A `storscp` command refused with a clear message and an exit code, never a traceback.

    Raised by preflight and by the commands themselves; `storscp.cli.main`
    prints the message and returns the code.
    """

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class NotPermitted(CommandRefused):
    """The caller may not control this service (run_dir or socket not theirs)."""

    def __init__(self, message: str) -> None:
        super().__init__(ExitCode.NOPERM, message)
