from __future__ import annotations

from pathlib import Path

import pytest

from storscp.config import Config, ConfigError, load


def test_defaults_serve_from_the_current_directory(tmp_path: Path) -> None:
    config = load(None, base_dir=tmp_path)
    assert config.ae_title == "STORSCP"
    assert config.port == 11112
    assert config.storage_dir == tmp_path / "storage"
    assert config.depot_dir == tmp_path / "storage" / "depot"
    assert config.log_max_bytes == 256000


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('ae_title = "FROMFILE"\nport = 2000\n')
    config = load(path, {"port": "3000", "extension": ".img"}, base_dir=tmp_path)
    assert (config.ae_title, config.port, config.extension) == ("FROMFILE", 3000, ".img")
    assert config.is_explicit("port") and not config.is_explicit("host")


def test_to_toml_round_trips(tmp_path: Path) -> None:
    config = load(None, {"ae_title": "X Y", "port": "0"}, base_dir=tmp_path)
    path = tmp_path / "eff.toml"
    path.write_text(config.to_toml())
    assert load(path) == config


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("port = 70000", "'port'"),
        ('port = "abc"', "'port'"),
        ('ae_title = "A\\\\B"', "'ae_title'"),
        ('ae_title = "THIS TITLE IS TOO LONG"', "'ae_title'"),
        ('extension = "../x"', "'extension'"),
        ("log_max_bytes = 10", "'log_max_bytes'"),
        ('colour = "blue"', "'colour'"),
        ("port = [1", "not valid TOML"),
        ("accept_any = false", "no [[remote_ae]]"),
        ('file_mode = "rw-r-----"', "'file_mode'"),
        ('[[remote_ae]]\nname = "X"', "'ae_title' is required"),
        ('[[remote_ae]]\nname = "X"\nae_title = "Y"\nhost = "bad host!"', "'host'"),
        ('[tls]\nport = 2762\ncertificate = "a"\nprivate_key = "b"\nkey = "c"', "'key'"),
        (
            '[tls]\nport = 2762\ncertificate = "a"\nprivate_key = "b"\nmin_version = "1.0"',
            "min_version",
        ),
        ('require_called_aet = "maybe"', "'require_called_aet'"),
        ('layout = "by-patient"', "'layout'"),
        ("study_quiet_s = -1", "'study_quiet_s'"),
        ("feed_max_bytes = 1000", "'feed_max_bytes'"),
        ("feed_max_age_s = -5", "'feed_max_age_s'"),
        ('feed_live_endpoint = "tcp://localhost:7001"', "'feed_live_endpoint'"),
        ('feed_replay_endpoint = "ipc://relative.sock"', "'feed_replay_endpoint'"),
        ('feed_replay_endpoint = "tcp://127.0.0.1:0"', "'feed_replay_endpoint'"),
        (
            'feed_live_endpoint = "tcp://127.0.0.1:7001"\n'
            'feed_replay_endpoint = "tcp://127.0.0.1:7001"',
            "are equal",
        ),
        # A trailing newline is not part of a valid value ("$" matched before it).
        ('ae_title = "STORSCP\\n"', "'ae_title'"),
        ('extension = ".dcm\\n"', "'extension'"),
        ('host = "localhost\\n"', "'host'"),
        ('[[remote_ae]]\nname = "X"\nae_title = "Y\\n"', "'ae_title'"),
        ('metrics = "9112"', "'metrics'"),
        ('metrics = "localhost"', "'metrics'"),
        ('metrics = "127.0.0.1:99999"', "'metrics'"),
        ('metrics = "::1:9112"', "'metrics'"),
        ('metrics = "bad host!:9112"', "'metrics'"),
        ("metrics = 9112", "'metrics'"),
        ('port = 9112\nmetrics = "0.0.0.0:9112"', "'metrics'"),
        ('node = "../other"', "'node'"),
        ('node = ".hidden"', "'node'"),
        ("proxy_protocol = true", "trusted_proxies is empty"),
        ('trusted_proxies = ["10.0.0.1/24"]', "'trusted_proxies'"),
        ('trusted_proxies = ["balancer.local"]', "'trusted_proxies'"),
        ("trusted_proxies = [1]", "'trusted_proxies'"),
        ('[[remote_ae]]\nname = "X"\nae_title = "Y"\nmax_associations = 0', "'max_associations'"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load(path, base_dir=tmp_path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.toml")


def test_run_dir_too_long_for_a_socket(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run_dir"):
        load(None, {"run_dir": "/tmp/" + "x" * 120})


def test_state_dir_is_beside_the_storage_and_feed_keys_round_trip(tmp_path: Path) -> None:
    keys = {
        "layout": "study",
        "study_quiet_s": "0",
        "feed_max_bytes": "65536",
        "feed_live_endpoint": "tcp://127.0.0.1:7001",
        "feed_replay_endpoint": "ipc:///run/storscp/feed.sock",
    }
    config = load(None, keys, base_dir=tmp_path)
    assert config.state_dir == tmp_path / "storage" / ".storscp"
    path = tmp_path / "eff.toml"
    path.write_text(config.to_toml())
    assert load(path) == config


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Config().port = 1  # type: ignore[misc]


def test_tables_modes_and_booleans_round_trip(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    path = tmp_path / "s.toml"
    path.write_text(
        'accept_any = false\nfile_mode = "0600"\ndir_mode = 0o700\n'
        '[[remote_ae]]\nname = "CT"\nae_title = "CT_1"\nhost = "10.1.2.3"\nport = 104\n'
        '[[remote_ae]]\nname = "MR"\nae_title = "MR_1"\n'
        f'[tls]\nport = 2762\ncertificate = "{cert}"\nprivate_key = "{cert}"\n'
    )
    config = load(path, {"require_called_aet": "false"}, base_dir=tmp_path)
    assert config.accept_any is False and config.require_called_aet is False
    assert (config.file_mode, config.dir_mode) == (0o600, 0o700)
    assert [ae.ae_title for ae in config.remote_ae] == ["CT_1", "MR_1"]
    assert config.remote_ae[0].host == "10.1.2.3" and config.remote_ae[1].host is None
    assert config.tls is not None and config.tls.port == 2762 and config.tls.min_version == "1.2"
    again = tmp_path / "again.toml"
    again.write_text(config.to_toml())
    assert load(again) == config


def test_account_names_must_be_account_names(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('user = "root; rm"\n')
    with pytest.raises(ConfigError, match=f"{path}: key 'user' must be an account name"):
        load(path, base_dir=tmp_path)


def test_issue_10_loading_touches_nothing_on_disk(tmp_path: Path) -> None:
    # Given accounts and TLS files that do not exist here (or exist only where
    # the components run): whether they do is preflight's business, not the value's
    path = tmp_path / "s.toml"
    path.write_text(
        'user = "no-such-user-here"\nadmin_group = "no-such-group-here"\n'
        '[tls]\nport = 2762\ncertificate = "/nonexistent/c.pem"\nprivate_key = "/nonexistent/k"\n'
    )
    # When loaded, then it is the value written, nothing more
    config = load(path, base_dir=tmp_path)
    assert (config.user, config.admin_group) == ("no-such-user-here", "no-such-group-here")
    assert config.tls is not None and config.tls.private_key == Path("/nonexistent/k")


def test_user_and_admin_group_default_to_none(tmp_path: Path) -> None:
    config = load(None, {"user": "root", "admin_group": "root"}, base_dir=tmp_path)
    assert (config.user, config.admin_group) == ("root", "root")
    assert load(None, base_dir=tmp_path).user == ""


def test_metrics_endpoint_is_on_loopback_by_default(tmp_path: Path) -> None:
    config = load(None, base_dir=tmp_path)
    assert config.metrics_address == ("127.0.0.1", 9112)
    assert config.metrics_dir == tmp_path / "run" / "bus" / "metrics"


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("", None),
        ("0.0.0.0:9112", ("0.0.0.0", 9112)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_metrics_addresses(tmp_path: Path, value: str, address: tuple[str, int] | None) -> None:
    config = load(None, {"metrics": value}, base_dir=tmp_path)
    assert config.metrics_address == address


def test_node_has_its_own_depot_and_state_beside_the_shared_storage(tmp_path: Path) -> None:
    single = load(None, base_dir=tmp_path)
    assert single.node == "" and single.state_dir == tmp_path / "storage" / ".storscp"
    node = load(None, {"node": "gw-2"}, base_dir=tmp_path)
    assert node.depot_dir == tmp_path / "storage" / "depot" / "gw-2"
    assert node.state_dir == tmp_path / "storage" / ".storscp" / "gw-2"


def test_scale_out_keys_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        'node = "a"\nproxy_protocol = true\ntrusted_proxies = ["127.0.0.1", "10.0.0.0/8"]\n'
        '[[remote_ae]]\nname = "CT"\nae_title = "CT_1"\nmax_associations = 3\n'
    )
    config = load(path, base_dir=tmp_path)
    assert config.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert config.remote_ae[0].max_associations == 3
    again = tmp_path / "again.toml"
    again.write_text(config.to_toml())
    assert load(again) == config
    flags = load(None, {"trusted_proxies": "::1, 192.0.2.0/24", "proxy_protocol": "yes"})
    assert flags.trusted_proxies == ("::1", "192.0.2.0/24") and flags.proxy_protocol


# -- issue 10.2: file and directory modes, as an admin writes them ----------------

MODE_SPELLINGS = ['"0640"', '"640"', "0o640", "640", '"0o640"', "0o0640"]


@pytest.mark.parametrize("spelling", MODE_SPELLINGS)
def test_issue_10_modes_are_octal_however_they_are_written(tmp_path: Path, spelling: str) -> None:
    # Given a mode written the way an admin writes it (the integer 640 too)
    path = tmp_path / "s.toml"
    path.write_text(f"file_mode = {spelling}\ndir_mode = {spelling.replace('64', '75')}\n")
    # When loaded, then it is read as octal digits, and shown as such
    config = load(path, base_dir=tmp_path)
    assert (config.file_mode, config.dir_mode) == (0o640, 0o750)
    assert 'file_mode = "0640"' in config.to_toml() and 'dir_mode = "0750"' in config.to_toml()


@pytest.mark.parametrize("flag", ["0640", "640", "0o640"])
def test_issue_10_mode_flags_are_octal(tmp_path: Path, flag: str) -> None:
    assert load(None, {"file_mode": flag}, base_dir=tmp_path).file_mode == 0o640


@pytest.mark.parametrize(
    ("spelling", "why"),
    [
        ("1200", "at most 0o777"),  # what `file_mode = 640` used to become
        ('"1640"', "at most 0o777"),
        ("0o4750", "at most 0o777"),
        ('"0o1777"', "at most 0o777"),
        ("648", "octal digits 0-7"),
        ('"0690"', "octal digits 0-7"),
        ('"rw-r-----"', "octal mode"),
        ("-640", "octal mode"),
        ("6.4", "octal mode"),
        ("true", "octal mode"),
    ],
)
def test_issue_10_modes_beyond_0o777_or_not_octal_are_refused(
    tmp_path: Path, spelling: str, why: str
) -> None:
    for key in ("file_mode", "dir_mode"):
        path = tmp_path / f"{key}.toml"
        path.write_text(f"{key} = {spelling}\n")
        with pytest.raises(ConfigError) as info:
            load(path, base_dir=tmp_path)
        assert str(info.value).startswith(f"{path}: key {key!r} must"), info.value
        assert why in str(info.value)
