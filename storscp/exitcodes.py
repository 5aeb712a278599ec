"""Process exit codes, sysexits values so Supervisor and shells can tell them apart."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # clean stop
    USAGE = 64  # bad command line
    DATAERR = 65  # what was asked for is not there: feed history older than kept
    NOINPUT = 66  # an input file does not exist: no log files to show
    UNAVAILABLE = 69  # a needed resource is busy: port in use, log dir locked
    SOFTWARE = 70  # internal error: a bug, with a traceback on stderr
    CANTCREAT = 73  # cannot create or write a directory or file we own
    NOPERM = 77  # permission denied: not allowed to control the service
    CONFIG = 78  # invalid configuration
