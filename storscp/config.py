"""The one configuration object of storscp, loaded from TOML and flags.

Every process gets the same frozen `Config`: the CLI builds it from
`storscp.toml` plus command-line flags, validates everything up front and
writes the effective result to `<run_dir>/effective.toml`, which the
components then load. A `ConfigError` names the key and the file.
This module imports nothing from the process packages.
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

DEFAULT_CONFIG_NAME = "storscp.toml"
EFFECTIVE_CONFIG_NAME = "effective.toml"

# A Unix socket path must fit sockaddr_un.sun_path (108 bytes with the NUL).
MAX_IPC_PATH_BYTES = 100

_AE_TITLE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")
_EXTENSION_RE = re.compile(r"^(\.[A-Za-z0-9_-]{1,16})?$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
# POSIX portable user and group names (useradd's default rule, plus a trailing $).
_ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")


class ConfigError(Exception):
    """A configuration value is missing, malformed or unusable."""


class ConfigNotReadable(ConfigError):
    """The file exists but is not ours to read: a permission matter, not a typo."""


@dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration; paths are absolute once loaded."""

    ae_title: str = "STORSCP"
    host: str = "0.0.0.0"
    port: int = 11112
    storage_dir: Path = Path("storage")
    extension: str = ".dcm"
    log_dir: Path = Path("log")
    log_max_bytes: int = 256000
    run_dir: Path = Path("run")
    # Largest P-DATA PDU we announce; big PDUs mean fewer reads per instance.
    max_pdu_bytes: int = 4 * 1024 * 1024
    # How often the committer sweeps the depot for files the bus missed.
    depot_scan_interval_s: float = 2.0
    # A receiver lets associations in flight finish for this long on SIGTERM.
    drain_timeout_s: float = 20.0
    # Members of this group may use the control socket (status, stop, restart).
    admin_group: str = ""
    # Run the components as this account (supervisord itself stays root).
    user: str = ""
    _source: str = field(default="defaults", compare=False, repr=False)
    _explicit: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def depot_dir(self) -> Path:
        """Staging area inside the storage directory (same filesystem)."""
        return self.storage_dir / "depot"

    @property
    def effective_path(self) -> Path:
        return self.run_dir / EFFECTIVE_CONFIG_NAME

    @property
    def bus_dir(self) -> Path:
        """The components' ZeroMQ sockets: writable by `user`, unlike run_dir."""
        return self.run_dir / "bus"  # bus.BUS_DIR_NAME; config.py must not import bus

    def is_explicit(self, key: str) -> bool:
        """Whether the file or a flag set `key` (else it is the default)."""
        return key in self._explicit

    def to_toml(self) -> str:
        """Render as TOML that `load` reads back to an equal Config."""
        return tomli_w.dumps(as_dict(self))


# key -> (type, help) for every user-visible key, in display order.
KEYS: dict[str, tuple[type, str]] = {
    "ae_title": (str, "our AE title"),
    "host": (str, "listen address"),
    "port": (int, "listen port (0: pick a free one, reported in START)"),
    "storage_dir": (Path, "the Storage SCP directory (depot inside it)"),
    "extension": (str, "appended to the SOP Instance UID"),
    "log_dir": (Path, "where storscp1.log / storscp2.log live"),
    "log_max_bytes": (int, "alternation threshold of the two log files"),
    "run_dir": (Path, "sockets, generated supervisord.conf, pid file"),
    "max_pdu_bytes": (int, "largest PDU we accept from a peer"),
    "depot_scan_interval_s": (float, "committer's depot sweep period"),
    "drain_timeout_s": (float, "how long a stop waits for associations"),
    "admin_group": (str, "group allowed to status/stop/restart (empty: owner only)"),
    "user": (str, "account the components run as (empty: the one starting them)"),
}


def as_dict(config: Config) -> dict[str, Any]:
    """Plain TOML-able values of every key."""
    out: dict[str, Any] = {}
    for key in KEYS:
        value = getattr(config, key)
        out[key] = str(value) if isinstance(value, Path) else value
    return out


def load(
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Build a validated Config from an optional TOML file and flag overrides.

    Relative paths are resolved against `base_dir` (default: the current
    directory), so the components see the same absolute paths as the CLI.
    """
    source = str(path) if path is not None else "defaults"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except PermissionError:
            raise ConfigNotReadable(f"{path}: configuration file is not readable") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
            source = source if path is not None else "command line"

    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}")

    values: dict[str, Any] = {}
    for key, (kind, _help) in KEYS.items():
        if key in raw:
            values[key] = _coerce(source, key, raw[key], kind)
    config = replace(Config(), **values, _source=source, _explicit=frozenset(values))
    config = _absolutise(config, base_dir or Path.cwd())
    validate(config)
    return config


def _coerce(source: str, key: str, value: Any, kind: type) -> Any:
    """Turn a TOML or flag value into the key's type, or say why not."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: key {key!r} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: key {key!r} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            return int(value)
        raise ConfigError(f"{source}: key {key!r} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: key {key!r} must be a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        try:
            return float(str(value))
        except ValueError:
            raise ConfigError(f"{source}: key {key!r} must be a number, got {value!r}") from None
    if kind is Path:
        if isinstance(value, str | Path) and str(value):
            return Path(value)
        raise ConfigError(f"{source}: key {key!r} must be a non-empty path, got {value!r}")
    if isinstance(value, str):
        return value
    raise ConfigError(f"{source}: key {key!r} must be a string, got {value!r}")


def _absolutise(config: Config, base_dir: Path) -> Config:
    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else (base_dir / p)

    return replace(
        config,
        storage_dir=absolute(config.storage_dir),
        log_dir=absolute(config.log_dir),
        run_dir=absolute(config.run_dir),
    )


def validate(config: Config) -> None:
    """Raise ConfigError naming the first bad key; nothing is touched on disk."""
    src = config._source
    if not _AE_TITLE_RE.match(config.ae_title) or "\\" in config.ae_title:
        raise ConfigError(
            f"{src}: key 'ae_title' must be 1-16 printable ASCII characters without"
            f" backslash, got {config.ae_title!r}"
        )
    if not config.ae_title.strip():
        raise ConfigError(f"{src}: key 'ae_title' must not be all spaces")
    if not _is_host(config.host):
        raise ConfigError(
            f"{src}: key 'host' must be an IP address or host name, got {config.host!r}"
        )
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"{src}: key 'port' must be 0-65535, got {config.port}")
    if not _EXTENSION_RE.match(config.extension):
        raise ConfigError(
            f"{src}: key 'extension' must be empty or a dot and 1-16 letters, digits,"
            f" '_' or '-', got {config.extension!r}"
        )
    if config.log_max_bytes < 1024:
        raise ConfigError(
            f"{src}: key 'log_max_bytes' must be at least 1024, got {config.log_max_bytes}"
        )
    if not 16384 <= config.max_pdu_bytes <= 64 * 1024 * 1024:
        raise ConfigError(
            f"{src}: key 'max_pdu_bytes' must be 16384-67108864, got {config.max_pdu_bytes}"
        )
    if not 0.05 <= config.depot_scan_interval_s <= 3600:
        raise ConfigError(
            f"{src}: key 'depot_scan_interval_s' must be 0.05-3600,"
            f" got {config.depot_scan_interval_s}"
        )
    if not 0 <= config.drain_timeout_s <= 3600:
        raise ConfigError(
            f"{src}: key 'drain_timeout_s' must be 0-3600, got {config.drain_timeout_s}"
        )
    _validate_accounts(config)
    longest = config.bus_dir / "committer.sock"
    if len(str(longest).encode()) > MAX_IPC_PATH_BYTES:
        raise ConfigError(
            f"{src}: key 'run_dir' is too long for a Unix socket path"
            f" ({len(str(longest).encode())} > {MAX_IPC_PATH_BYTES} bytes): {config.run_dir}"
        )


def _validate_accounts(config: Config) -> None:
    """`user` and `admin_group` must name an account that exists here."""
    src = config._source
    for key, value in (("user", config.user), ("admin_group", config.admin_group)):
        if value and not _ACCOUNT_RE.match(value):
            raise ConfigError(f"{src}: key {key!r} must be an account name, got {value!r}")
    if config.user:
        try:
            pwd.getpwnam(config.user)
        except KeyError:
            raise ConfigError(
                f"{src}: key 'user' names no user on this system: {config.user!r}"
            ) from None
    if config.admin_group:
        try:
            grp.getgrnam(config.admin_group)
        except KeyError:
            raise ConfigError(
                f"{src}: key 'admin_group' names no group on this system: {config.admin_group!r}"
            ) from None


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME_RE.match(host))


def key_names() -> list[str]:
    """Keys in display order, for the CLI's flags."""
    return list(KEYS)


def flag_for(key: str) -> str:
    """The command-line flag of a key: storage_dir -> --storage-dir."""
    return "--" + key.replace("_", "-")
