"""Preflight checks on real directories and sockets."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from storscp.config import ConfigError, load
from storscp.errors import CommandRefused
from storscp.exitcodes import ExitCode
from storscp.preflight import STORAGE_DIR_MESSAGE
from storscp.preflight.directories import prepare_run_dir, prepare_storage
from storscp.preflight.named import check_accounts, check_tls_files
from storscp.preflight.ports import with_ports


def test_a_fresh_run_dir_is_closed_to_others(tmp_path: Path) -> None:
    config = load(None, {"run_dir": str(tmp_path / "run")}, base_dir=tmp_path)
    prepare_run_dir(config, None)
    assert stat.S_IMODE(config.run_dir.stat().st_mode) == 0o750
    assert stat.S_IMODE(config.bus_dir.stat().st_mode) == 0o700


def test_a_shared_directory_named_as_run_dir_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "someone-elses-file").write_text("x")
    config = load(None, {"run_dir": str(shared)}, base_dir=tmp_path)
    prepare_run_dir(config, None)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777


def test_an_explicit_storage_dir_must_exist(tmp_path: Path) -> None:
    config = load(None, {"storage_dir": str(tmp_path / "nope")}, base_dir=tmp_path)
    with pytest.raises(CommandRefused) as info:
        prepare_storage(config, None)
    assert info.value.code == ExitCode.CANTCREAT
    assert str(info.value) == f"{STORAGE_DIR_MESSAGE}: {tmp_path / 'nope'} does not exist"


def test_the_default_storage_dir_is_created_with_its_depot(tmp_path: Path) -> None:
    config = load(None, base_dir=tmp_path)
    prepare_storage(config, None)
    assert config.depot_dir.is_dir()


def test_a_busy_port_is_refused_and_port_0_becomes_a_free_one(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config = load(None, {"host": "127.0.0.1", "port": str(port)}, base_dir=tmp_path)
        with pytest.raises(CommandRefused) as info:
            with_ports(config)
        assert info.value.code == ExitCode.UNAVAILABLE
        assert str(info.value) == f"port {port} on 127.0.0.1 is already in use"
    free = with_ports(load(None, {"host": "127.0.0.1", "port": "0"}, base_dir=tmp_path))
    assert free.port != 0


def test_user_and_admin_group_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('user = "no-such-user-here"\n')
    with pytest.raises(ConfigError, match=f"{path}: key 'user' names no user"):
        check_accounts(load(path, base_dir=tmp_path))
    path.write_text('admin_group = "no-such-group-here"\n')
    with pytest.raises(ConfigError, match=f"{path}: key 'admin_group' names no group"):
        check_accounts(load(path, base_dir=tmp_path))
    check_accounts(load(None, {"user": "root", "admin_group": "root"}, base_dir=tmp_path))


@pytest.mark.parametrize("key", ["certificate", "private_key", "ca_file"])
def test_tls_files_must_exist_naming_the_key_and_the_file(tmp_path: Path, key: str) -> None:
    files = {name: tmp_path / f"{name}.pem" for name in ("certificate", "private_key", "ca_file")}
    for name, file in files.items():
        if name != key:
            file.write_text("x")
    path = tmp_path / "s.toml"
    path.write_text("[tls]\nport = 2762\n" + "".join(f'{n} = "{f}"\n' for n, f in files.items()))
    with pytest.raises(ConfigError) as info:
        check_tls_files(load(path, base_dir=tmp_path))
    assert str(info.value) == f"{path}: [tls] key {key!r}: {files[key]} does not exist"
