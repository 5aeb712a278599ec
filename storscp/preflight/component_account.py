"""The component account: may we start as it, and can it run us?

With `user` set, supervisord starts the components as that account; a start
that would leave them unable to run our interpreter or to write where they
write is refused here, naming the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from storscp.config import Config, ConfigError
from storscp.errors import CommandRefused, NotPermitted
from storscp.exitcodes import ExitCode
from storscp.preflight import Account, named, not_writable_message

# Run as the component account: can it start our interpreter, import every
# component, write where the components write and read what the receiver
# reads (the paths after "--read")? Exit 3 names a directory, 4 a file.
_PROBE = """
import os, sys
import storscp.commitment.main, storscp.committer.main, storscp.feed.main
import storscp.logger.main, storscp.receiver.main
import storscp.supervisor.listener, storscp.metrics.main
mode, code = os.W_OK | os.X_OK, 3
for path in sys.argv[1:]:
    if path == "--read":
        mode, code = os.R_OK, 4
    elif not os.access(path, mode):
        print(path)
        sys.exit(code)
"""


def require_root_for(account: Account | None) -> None:
    """Only root may start processes as another account."""
    if account is not None and os.geteuid() != 0:
        raise NotPermitted(
            f"key 'user' ({account.name}) needs storscp started as root, not uid {os.geteuid()}"
        )


def check_account(config: Config, account: Account | None) -> None:
    """Components running as `user` need an interpreter that account can run,
    write access to storage, depot, state directory, logs and bus sockets, and
    (the receiver) read access to the `[tls]` files.
    """
    if account is None:
        return
    paths = [
        config.storage_dir,
        config.depot_dir,
        config.state_dir,
        config.log_dir,
        config.bus_dir,
    ]
    result = _probe(account, [*paths, Path("--read"), *named.tls_files(config).values()])
    if result.returncode == 3:
        path = Path(result.stdout.strip())
        raise CommandRefused(ExitCode.CANTCREAT, not_writable_message(config, path, account))
    if result.returncode == 4:
        who = f"user {account.name} (uid {account.uid})"
        raise ConfigError(named.unreadable_tls_message(config, Path(result.stdout.strip()), who))
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise CommandRefused(
            ExitCode.CANTCREAT,
            f"user {account.name} cannot run storscp with {sys.executable}: {detail}"
            " (install storscp where that account can read it)",
        )


def _probe(account: Account, paths: list[Path]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-c", _PROBE, *map(str, paths)],
            user=account.uid,
            group=account.gid,
            extra_groups=list(account.groups),
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
    except OSError as exc:
        # exec itself failed: the interpreter is out of that account's reach.
        return subprocess.CompletedProcess([], 126, "", exc.strerror or str(exc))
