"""The generated supervisord.conf, read back by Supervisor's own parser."""

from __future__ import annotations

import grp
import os
from pathlib import Path

import pytest
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions

from storscp.config import Config, load
from storscp.supervisor import conf


def parsed(config: Config) -> ServerOptions:
    config.run_dir.mkdir(parents=True, exist_ok=True)
    path = conf.conf_path(config)
    path.write_text(conf.render(config))
    options = ServerOptions()
    options.realize(args=["-c", str(path)])
    return options


def programs(options: ServerOptions) -> dict[str, object]:
    return {pc.name: pc for group in options.process_group_configs for pc in group.process_configs}


def test_every_program_restarts_and_starts_in_order(tmp_path: Path) -> None:
    options = parsed(load(None, {"receivers": "1"}, base_dir=tmp_path))
    procs = programs(options)
    order = sorted(procs, key=lambda name: procs[name].priority)  # type: ignore[attr-defined]
    # Supervisor starts by ascending priority and stops in reverse.
    assert order == [
        "listener",
        "logger",
        "committer",
        "feed",
        "commitment",
        "receiver",
        "metrics",
    ]
    for pc in procs.values():
        assert pc.autorestart is RestartUnconditionally  # type: ignore[attr-defined]
        assert pc.stopasgroup and pc.killasgroup  # type: ignore[attr-defined]
        assert 1 <= pc.startsecs <= 3 and pc.startretries == 3  # type: ignore[attr-defined]
        assert pc.uid is None  # type: ignore[attr-defined]


def test_child_logs_are_rotated_in_run_dir(tmp_path: Path) -> None:
    config = load(None, {"receivers": "1"}, base_dir=tmp_path)
    procs = programs(parsed(config))
    for name in ("logger", "committer", "commitment", "receiver"):
        pc = procs[name]
        assert pc.stdout_logfile == str(config.run_dir / f"{name}.out.log")  # type: ignore[attr-defined]
        assert pc.redirect_stderr  # type: ignore[attr-defined]
        assert pc.stdout_logfile_maxbytes == 10 * 1024 * 1024  # type: ignore[attr-defined]
        assert pc.stdout_logfile_backups == 5  # type: ignore[attr-defined]
    listener = procs["listener"]
    assert listener.stdout_logfile is None  # type: ignore[attr-defined]  # the protocol channel
    assert listener.stderr_logfile == str(config.run_dir / "listener.err.log")  # type: ignore[attr-defined]


@pytest.mark.parametrize("drain_s", [0.0, 5.0, 20.0, 61.5])
def test_receiver_stopwaitsecs_leaves_room_for_the_drain(tmp_path: Path, drain_s: float) -> None:
    config = load(None, {"drain_timeout_s": str(drain_s), "receivers": "1"}, base_dir=tmp_path)
    receiver = programs(parsed(config))["receiver"]
    assert receiver.stopwaitsecs >= drain_s + 5  # type: ignore[attr-defined]


def test_several_receivers_are_one_program_group(tmp_path: Path) -> None:
    config = load(None, {"receivers": "3"}, base_dir=tmp_path)
    options = parsed(config)
    [group] = [g for g in options.process_group_configs if g.name == "receiver"]
    names = [pc.name for pc in group.process_configs]
    assert names == ["receiver_0", "receiver_1", "receiver_2"]
    logs = {pc.stdout_logfile for pc in group.process_configs}
    assert logs == {str(config.run_dir / f"receiver_{i}.out.log") for i in range(3)}


def test_receivers_default_to_one_per_core(tmp_path: Path) -> None:
    procs = programs(parsed(load(None, base_dir=tmp_path)))
    receivers = [name for name in procs if name.startswith("receiver")]
    assert len(receivers) == (os.cpu_count() or 1)


def test_control_socket_is_for_the_owner_only(tmp_path: Path) -> None:
    [server] = parsed(load(None, base_dir=tmp_path)).server_configs
    assert server["chmod"] == 0o700
    assert server["chown"] == (os.geteuid(), -1)


def test_admin_group_gets_the_control_socket_too(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getegid()).gr_name
    [server] = parsed(load(None, {"admin_group": group}, base_dir=tmp_path)).server_configs
    assert server["chmod"] == 0o770
    assert server["chown"] == (os.geteuid(), os.getegid())


def test_user_runs_every_program_as_that_account(tmp_path: Path) -> None:
    name = "nobody"
    config = load(None, {"user": name}, base_dir=tmp_path)
    procs = programs(parsed(config))
    for pc in procs.values():
        assert pc.uid == 65534  # type: ignore[attr-defined]


def test_metrics_program_and_its_directory_follow_the_metrics_key(tmp_path: Path) -> None:
    # Given the default configuration: the endpoint on, every program counts into bus/metrics
    config = load(None, {"receivers": "1"}, base_dir=tmp_path)
    procs = programs(parsed(config))
    assert "metrics" in procs
    for pc in procs.values():
        env = pc.environment  # type: ignore[attr-defined]
        assert env["PROMETHEUS_MULTIPROC_DIR"] == str(config.run_dir / "bus" / "metrics")
    # When `metrics` is empty: no endpoint, and nobody writes metric files
    config = load(None, {"receivers": "1", "metrics": ""}, base_dir=tmp_path)
    procs = programs(parsed(config))
    assert "metrics" not in procs
    assert all("PROMETHEUS_MULTIPROC_DIR" not in pc.environment for pc in procs.values())  # type: ignore[attr-defined]
