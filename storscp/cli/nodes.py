"""`storscp recover --node NAME` and `storscp haproxy-check`: the commands of several nodes.

`recover` hands a dead node's acknowledged instances to this node: it takes
the dead node's lock exclusively (refused, exit 69, while any process of
that node lives), moves its ready files into this node's depot, removes its
partial files, then waits for this node's committer to commit what it
moved. Run it on a live node; its WRITE events are that node's. The dead
node's pending Storage Commitment requests move too: this node's commitment
process reports them (on new associations).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

from storscp import nodelock
from storscp.balancer import haproxy_check_lines
from storscp.commitmentfiles import RequestStore
from storscp.committer.takeover import take_over
from storscp.config import Config, validate
from storscp.errors import CommandRefused
from storscp.exitcodes import ExitCode

# The committer sweeps every depot_scan_interval_s; give it a few.
COMMIT_WAIT_SWEEPS = 5
COMMIT_WAIT_MIN_S = 15.0


def cmd_recover(config: Config, dead_node: str) -> int:
    if not config.node:
        raise CommandRefused(
            ExitCode.CONFIG, "recover needs this node's `node` key: its committer takes over"
        )
    if dead_node == config.node:
        raise CommandRefused(
            ExitCode.USAGE,
            f"node {dead_node} is this node: start it, its committer commits its own depot",
        )
    dead = replace(config, node=dead_node)
    validate(dead)  # the name becomes a path: the same rule as the key
    if not dead.depot_dir.is_dir():
        raise CommandRefused(ExitCode.NOINPUT, f"node {dead_node} has no depot {dead.depot_dir}")
    if not config.depot_dir.is_dir():
        raise CommandRefused(
            ExitCode.CANTCREAT,
            f"this node's depot {config.depot_dir} does not exist: start it once",
        )
    try:
        lock = nodelock.take_exclusive(dead.depot_dir)
    except nodelock.NodeLockHeld as exc:
        raise CommandRefused(ExitCode.UNAVAILABLE, f"node {dead_node} is alive: {exc}") from None
    try:
        done = take_over(dead.depot_dir, config.depot_dir)
        requests = RequestStore(config.commitment_dir).adopt(RequestStore(dead.commitment_dir))
    finally:
        os.close(lock)
    if requests:
        noun = "request" if len(requests) == 1 else "requests"
        print(
            f"node {dead_node}: {len(requests)} pending Storage Commitment {noun}"
            f" handed to node {config.node}"
        )
    for name, size in done.parts_removed:
        if size:
            print(f"removed partial file {name} ({size} bytes): its sender got no Success")
    for name in done.quarantined:
        print(f"left quarantined file {dead.depot_dir / name} for an operator", file=sys.stderr)
    count = len(done.moved)
    noun = "instance" if count == 1 else "instances"
    print(f"node {dead_node}: {count} acknowledged {noun} handed to node {config.node}")
    left = _wait_committed(config, done.moved)
    if left:
        print(
            f"{len(left)} of them not committed yet: is node {config.node}'s committer running?"
            f" They stay in {config.depot_dir} until it is.",
            file=sys.stderr,
        )
        return ExitCode.UNAVAILABLE
    if count:
        print(f"committed {count} {noun} into {config.storage_dir}")
    return ExitCode.OK


def _wait_committed(config: Config, names: list[str]) -> list[str]:
    """Names still in this node's depot after its committer had time to sweep."""
    deadline = time.monotonic() + max(
        COMMIT_WAIT_MIN_S, COMMIT_WAIT_SWEEPS * config.depot_scan_interval_s
    )
    left = list(names)
    while left and time.monotonic() < deadline:
        left = [name for name in left if (config.depot_dir / name).exists()]
        time.sleep(0.1)
    return left


def cmd_haproxy_check(config: Config) -> int:
    """The `tcp-check` lines of deploy/haproxy.cfg for this `ae_title`."""
    for line in haproxy_check_lines(config.ae_title.strip()):
        print(f"    {line}")
    return ExitCode.OK
