"""The base of storscp's own exceptions.

At the bottom of the import graph (it imports nothing of ours), so every
module can derive its exceptions from `StorscpError` without a cycle, and a
boundary can tell our failures, each with a sentence for the admin, from a
library's or a bug.
"""


class StorscpError(Exception):
    """Base of every exception storscp defines; the message says what and where."""

