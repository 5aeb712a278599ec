"""The one configuration object of storscp, loaded from TOML and flags.

Every process gets the same frozen `Config`: the CLI builds it from
`storscp.toml` plus command-line flags, validates everything up front and
writes the effective result to `<run_dir>/effective.toml`, which the
components then load. A `ConfigError` names the key and the file.
This module imports nothing from the process packages.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from storscp.errors import StorscpError

DEFAULT_CONFIG_NAME = "storscp.toml"
LAYOUTS = ("flat", "study")
EFFECTIVE_CONFIG_NAME = "effective.toml"

# A Unix socket path must fit sockaddr_un.sun_path (108 bytes with the NUL).
MAX_IPC_PATH_BYTES = 100

# \Z, not $: "$" also matches before a trailing newline ("STORSCP\n", ".dcm\n").
_AE_TITLE_RE = re.compile(r"^[\x20-\x7e]{1,16}\Z")
_EXTENSION_RE = re.compile(r"^(\.[A-Za-z0-9_-]{1,16})?\Z")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
# POSIX portable user and group names (useradd's default rule, plus a trailing $).
_ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?\Z")
# A node name becomes a directory name on the shared storage.
_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
STATE_DIR_NAME = ".storscp"


class ConfigError(StorscpError):
    """A configuration value is missing, malformed or unusable."""


class Octal(int):
    """A permission mode; written and read as an octal string such as "0640"."""


DEFAULT_METRICS = "127.0.0.1:9112"
DEFAULT_FILE_MODE = Octal(0o640)
DEFAULT_DIR_MODE = Octal(0o750)


@dataclass(frozen=True, slots=True)
class RemoteAE:
    """A `[[remote_ae]]` table: a peer allowed when `accept_any` is false.

    With `storage_commitment`, it may ask for Storage Commitment, and its
    reports go to `host`:`port` when its association has ended.
    """

    name: str
    ae_title: str
    host: str | None = None
    port: int | None = None
    # Associations of this AE (from this host) at once, across receivers; None: no own cap.
    max_associations: int | None = None
    storage_commitment: bool = False


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The `[tls]` table: a second, TLS-only listening port."""

    port: int
    certificate: Path
    private_key: Path
    ca_file: Path | None = None
    min_version: str = "1.2"


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
    # Receiver processes sharing the port (SO_REUSEPORT); 0: one per CPU core.
    receivers: int = 0
    # Reject an association whose Called AE Title is not ours.
    require_called_aet: bool = True
    # Store instances of SOP classes pynetdicom does not list (private ones).
    accept_unknown_sop_classes: bool = True
    # Accept any calling AE title; when false only those in [[remote_ae]].
    accept_any: bool = True
    # Associations served at once (all receivers); the next is "local limit exceeded".
    max_associations: int = 32
    # Seconds to wait for an A-ASSOCIATE-RQ (and release) after connecting.
    acse_timeout_s: float = 30.0
    # Seconds of silence between PDUs before an association is aborted.
    network_timeout_s: float = 60.0
    # Seconds to receive one PDU once it has started: drops slow-drip peers.
    dimse_timeout_s: float = 60.0
    # Refuse instances larger than this (0: no limit).
    max_instance_bytes: int = 0
    # Refuse stores (0xA700) while the storage filesystem has less free space.
    min_free_bytes: int = 16 * 1024 * 1024
    # Modes of stored files and of directories we create: patient data.
    file_mode: Octal = DEFAULT_FILE_MODE
    dir_mode: Octal = DEFAULT_DIR_MODE
    # How often the committer sweeps the depot for files the bus missed.
    depot_scan_interval_s: float = 2.0
    # A receiver lets associations in flight finish for this long on SIGTERM.
    drain_timeout_s: float = 20.0
    # Storage Commitment: wait this long for acknowledged instances to be committed.
    commitment_wait_s: float = 30.0
    # First delay before a report is retried on a new association; doubles up to the max.
    commitment_retry_s: float = 10.0
    commitment_retry_max_s: float = 300.0
    # A report not delivered this long after its request is given up (an ERROR).
    commitment_deadline_s: float = 3600.0
    # More references in one N-ACTION are refused (0x0213 Resource limitation).
    commitment_max_references: int = 4096
    remote_ae: tuple[RemoteAE, ...] = ()
    tls: TlsConfig | None = None
    # Members of this group may use the control socket (status, stop, restart).
    admin_group: str = ""
    # Run the components as this account (supervisord itself stays root).
    user: str = ""
    # Where committed instances go: "flat" <UID><ext>, or "study" <Study>/<Series>/<UID><ext>.
    layout: str = "flat"
    # A study with no new instance for this long gets one study_complete (0: never).
    study_quiet_s: float = 60.0
    # The feed's history is cut, oldest first, beyond this size or age (0: no bound).
    feed_max_bytes: int = 256 * 1024 * 1024
    feed_max_age_s: float = 7 * 24 * 3600.0
    # ZeroMQ endpoints of the feed ("": ipc sockets in <run_dir>/bus/).
    feed_live_endpoint: str = ""
    feed_replay_endpoint: str = ""
    # HOST:PORT of the Prometheus endpoint and /healthz; empty: no endpoint.
    # Loopback by default: the numbers name the modalities that talk to us.
    metrics: str = DEFAULT_METRICS
    # This gateway's name among several sharing one storage_dir (empty: the only one).
    node: str = ""
    # Connections must start with a PROXY header (v1 or v2) and come from trusted_proxies.
    proxy_protocol: bool = False
    # Addresses or networks (CIDR) of the load balancers allowed to send PROXY headers.
    trusted_proxies: tuple[str, ...] = ()
    _source: str = field(default="defaults", compare=False, repr=False)
    _explicit: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def depots_dir(self) -> Path:
        """`<storage_dir>/depot`: the depot, or the parent of every node's own."""
        return self.storage_dir / "depot"

    @property
    def depot_dir(self) -> Path:
        """Staging area inside the storage directory (same filesystem); a node's own."""
        return self.depots_dir / self.node if self.node else self.depots_dir

    @property
    def state_dir(self) -> Path:
        """Durable per-node state (feed, commitment): beside storage, unlike run_dir."""
        state = self.storage_dir / STATE_DIR_NAME
        return state / self.node if self.node else state

    @property
    def commitment_dir(self) -> Path:
        """Pending Storage Commitment requests of this node (commitmentfiles.py)."""
        return self.state_dir / "commitment"

    @property
    def receiver_count(self) -> int:
        """How many receiver processes run: `receivers`, or one per CPU core."""
        return self.receivers or max(1, os.cpu_count() or 1)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of the metrics endpoint, or None when `metrics` is empty."""
        return parse_address(self.metrics) if self.metrics else None

    @property
    def metrics_dir(self) -> Path:
        """prometheus_client's per-process files (multiprocess mode), in bus_dir."""
        return self.bus_dir / "metrics"

    @property
    def effective_path(self) -> Path:
        return self.run_dir / EFFECTIVE_CONFIG_NAME

    @property
    def bus_dir(self) -> Path:
        """The components' ZeroMQ sockets: writable by `user`, unlike run_dir."""
        return self.run_dir / "bus"  # bus.BUS_DIR_NAME; config.py must not import bus

    @property
    def source(self) -> str:
        """Where the values came from (the file, "command line" or "defaults"), for errors."""
        return self._source

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
    "receivers": (int, "receiver processes sharing the port (0: one per core)"),
    "require_called_aet": (bool, "reject a called AE title that is not ours"),
    "accept_unknown_sop_classes": (bool, "store private and unknown SOP classes too"),
    "accept_any": (bool, "accept any calling AE title (else only [[remote_ae]])"),
    "max_associations": (int, "associations served at once"),
    "acse_timeout_s": (float, "wait for the association request"),
    "network_timeout_s": (float, "silence allowed between PDUs"),
    "dimse_timeout_s": (float, "time to receive one PDU"),
    "max_instance_bytes": (int, "refuse larger instances (0: no limit)"),
    "min_free_bytes": (int, "refuse stores below this free space"),
    "file_mode": (Octal, 'mode of stored files, octal digits ("0640")'),
    "dir_mode": (Octal, 'mode of directories we create, octal digits ("0750")'),
    "depot_scan_interval_s": (float, "committer's depot sweep period"),
    "drain_timeout_s": (float, "how long a stop waits for associations"),
    "commitment_wait_s": (float, "Storage Commitment: wait for acknowledged instances"),
    "commitment_retry_s": (float, "Storage Commitment: first retry of a report"),
    "commitment_retry_max_s": (float, "Storage Commitment: longest delay between retries"),
    "commitment_deadline_s": (float, "Storage Commitment: give a report up after this"),
    "commitment_max_references": (int, "Storage Commitment: most references per request"),
    "admin_group": (str, "group allowed to status/stop/restart (empty: owner only)"),
    "user": (str, "account the components run as (empty: the one starting them)"),
    "layout": (str, 'storage layout: "flat" or "study" (<Study>/<Series>/<UID>)'),
    "study_quiet_s": (float, "quiet time before study_complete (0: off)"),
    "feed_max_bytes": (int, "feed history size bound (0: none)"),
    "feed_max_age_s": (float, "feed history age bound (0: none)"),
    "feed_live_endpoint": (str, "feed PUB endpoint (empty: ipc in run_dir/bus)"),
    "feed_replay_endpoint": (str, "feed replay endpoint (empty: ipc in run_dir/bus)"),
    "metrics": (str, "HOST:PORT of the Prometheus endpoint and /healthz (empty: none)"),
    "node": (str, "this gateway's name when several share storage_dir (depot/<node>/)"),
    "proxy_protocol": (bool, "connections start with a PROXY header from trusted_proxies"),
    "trusted_proxies": (tuple, "load balancer addresses or CIDRs (comma-separated on a flag)"),
}


def as_dict(config: Config) -> dict[str, Any]:
    """Plain TOML-able values of every key."""
    out: dict[str, Any] = {}
    for key in KEYS:
        value = getattr(config, key)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, Octal):
            value = f"{value:04o}"
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    if config.remote_ae:
        out["remote_ae"] = [
            {k: v for k, v in asdict(ae).items() if v is not None} for ae in config.remote_ae
        ]
    if config.tls is not None:
        out["tls"] = {
            k: str(v) if isinstance(v, Path) else v
            for k, v in asdict(config.tls).items()
            if v is not None
        }
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
                text = fh.read().decode("utf-8")
            raw = tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except PermissionError:
            raise ConfigNotReadable(f"{path}: configuration file is not readable") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        for key in MODE_KEYS:
            if isinstance(raw.get(key), int) and not isinstance(raw[key], bool):
                # `640` and `0o640` are both ints once parsed; the text says which.
                raw[key] = _mode_literal(text, key) or str(raw[key])
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
            source = source if path is not None else "command line"

    unknown = sorted(set(raw) - set(KEYS) - TABLES)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}")

    values: dict[str, Any] = {}
    for key, (kind, _help) in KEYS.items():
        if key in raw:
            values[key] = _coerce(source, key, raw[key], kind)
    if "remote_ae" in raw:
        values["remote_ae"] = _remote_aes(source, raw["remote_ae"])
    if "tls" in raw:
        values["tls"] = _tls(source, raw["tls"])
    config = replace(Config(), **values, _source=source, _explicit=frozenset(values))
    config = _absolutise(config, base_dir or Path.cwd())
    validate(config)
    return config


def _coerce(source: str, key: str, value: Any, kind: type) -> Any:
    """Turn a TOML or flag value into the key's type, or say why not."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ConfigError(f"{source}: key {key!r} must be true or false, got {value!r}")
    if kind is Octal:
        return _mode(source, key, value)
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
    if kind is tuple:
        # A TOML array of strings, or one comma-separated string from a flag.
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, list | tuple) and all(isinstance(i, str) for i in items):
            return tuple(i.strip() for i in items if i.strip())
        raise ConfigError(f"{source}: key {key!r} must be a list of strings, got {value!r}")
    if kind is Path:
        if isinstance(value, str | Path) and str(value):
            return Path(value)
        raise ConfigError(f"{source}: key {key!r} must be a non-empty path, got {value!r}")
    if isinstance(value, str):
        return value
    raise ConfigError(f"{source}: key {key!r} must be a string, got {value!r}")


MODE_KEYS = ("file_mode", "dir_mode")
# A mode as an admin writes it: "0640", "640", 0o640 (TOML octal) or 640 (octal digits).
_MODE_RE = re.compile(r"(0o)?([0-9]+)")


def _mode(source: str, key: str, value: Any) -> Octal:
    """A permission mode from its spellings; digits are always octal, bits at most 0o777.

    A bare TOML integer arrives as the text of its literal (see `load`), so
    `file_mode = 640` means 0o640, not decimal 640 (which would be 0o1200).
    """
    if isinstance(value, Octal):
        return value
    text = value.strip().lower().replace("_", "") if isinstance(value, str) else ""
    match = _MODE_RE.fullmatch(text.removeprefix("+"))
    if match is None or not isinstance(value, str):
        raise ConfigError(
            f'{source}: key {key!r} must be an octal mode such as "0640", got {value!r}'
        )
    digits = match.group(2)
    if set(digits) & {"8", "9"}:
        raise ConfigError(
            f'{source}: key {key!r} must be octal digits 0-7 such as "0640", got {value.strip()}'
        )
    mode = int(digits, 8)
    if mode > 0o777:
        raise ConfigError(
            f"{source}: key {key!r} must be at most 0o777 (no setuid, setgid or sticky bit),"
            f" got {value.strip()}"
        )
    return Octal(mode)


def _mode_literal(text: str, key: str) -> str | None:
    """How `key = <integer>` is written at the top of a TOML document, if found.

    TOML octal (`0o640`) stays octal; a decimal literal (`640`) is returned
    as its digits, which `_mode` reads as octal. Hexadecimal and binary
    literals are numbers already, returned as octal text.
    """
    names = f"(?:{key}|\"{key}\"|'{key}')"
    for line in text.splitlines():
        if line.lstrip().startswith("["):
            return None  # top-level keys come before the first table
        found = re.match(rf"\s*{names}\s*=\s*([+]?[0-9a-zA-Z_]+)", line)
        if found is not None:
            literal = found.group(1).lower().replace("_", "").removeprefix("+")
            if literal.startswith(("0x", "0b")):
                return f"0o{int(literal, 0):o}"
            return literal
    return None


_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
TABLES = {"remote_ae", "tls"}
TLS_VERSIONS = ("1.2", "1.3")


def _remote_aes(source: str, value: Any) -> tuple[RemoteAE, ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{source}: [[remote_ae]] must be a list of tables")
    out = []
    for i, table in enumerate(value):
        where = f"{source}: [[remote_ae]] #{i + 1}"
        extra = set(table) - {
            "name",
            "ae_title",
            "host",
            "port",
            "max_associations",
            "storage_commitment",
        }
        if extra:
            raise ConfigError(f"{where}: unknown key {sorted(extra)[0]!r}")
        for key in ("name", "ae_title"):
            if not isinstance(table.get(key), str) or not table[key].strip():
                raise ConfigError(f"{where}: key {key!r} is required (a string)")
        host = table.get("host")
        if host is not None and (not isinstance(host, str) or not _is_host(host)):
            raise ConfigError(f"{where}: key 'host' must be an IP address or host name")
        port = table.get("port")
        if port is not None and (not isinstance(port, int) or not 1 <= port <= 65535):
            raise ConfigError(f"{where}: key 'port' must be 1-65535")
        if not _AE_TITLE_RE.match(table["ae_title"]) or "\\" in table["ae_title"]:
            raise ConfigError(f"{where}: key 'ae_title' must be 1-16 printable ASCII characters")
        limit = table.get("max_associations")
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10000
        ):
            raise ConfigError(f"{where}: key 'max_associations' must be 1-10000")
        commitment = table.get("storage_commitment", False)
        if not isinstance(commitment, bool):
            raise ConfigError(f"{where}: key 'storage_commitment' must be true or false")
        if commitment and (host is None or port is None):
            raise ConfigError(
                f"{where}: key 'storage_commitment' needs 'host' and 'port':"
                " reports go there once the association that asked has ended"
            )
        out.append(
            RemoteAE(
                table["name"],
                table["ae_title"].strip(),
                host,
                port,
                max_associations=limit,
                storage_commitment=commitment,
            )
        )
    return tuple(out)


def _tls(source: str, value: Any) -> TlsConfig:
    where = f"{source}: [tls]"
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    extra = set(value) - {"port", "certificate", "private_key", "ca_file", "min_version"}
    if extra:
        raise ConfigError(f"{where}: unknown key {sorted(extra)[0]!r}")
    port = value.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"{where}: key 'port' must be 0-65535")
    paths: dict[str, Path | None] = {}
    for key in ("certificate", "private_key", "ca_file"):
        item = value.get(key)
        if item is None:
            if key != "ca_file":
                raise ConfigError(f"{where}: key {key!r} is required (a file path)")
            paths[key] = None
            continue
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{where}: key {key!r} must be a file path")
        paths[key] = Path(item)
    version = str(value.get("min_version", "1.2"))
    if version not in TLS_VERSIONS:
        raise ConfigError(f"{where}: key 'min_version' must be one of {', '.join(TLS_VERSIONS)}")
    certificate, private_key = paths["certificate"], paths["private_key"]
    assert certificate is not None and private_key is not None
    return TlsConfig(port, certificate, private_key, paths["ca_file"], version)


def _absolutise(config: Config, base_dir: Path) -> Config:
    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else (base_dir / p)

    tls = config.tls
    if tls is not None:
        tls = replace(
            tls,
            certificate=absolute(tls.certificate),
            private_key=absolute(tls.private_key),
            ca_file=absolute(tls.ca_file) if tls.ca_file else None,
        )
    return replace(
        config,
        storage_dir=absolute(config.storage_dir),
        log_dir=absolute(config.log_dir),
        run_dir=absolute(config.run_dir),
        tls=tls,
    )


def validate(config: Config) -> None:
    """Raise ConfigError naming the first bad key.

    Pure: whether the accounts exist and the TLS files can be read is the
    environment's business, checked once by preflight (as the account that
    will use them), never by every component that loads the Config.
    """
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
    if not 0 <= config.receivers <= 64:
        raise ConfigError(f"{src}: key 'receivers' must be 0-64, got {config.receivers}")
    if not 1 <= config.max_associations <= 10000:
        raise ConfigError(
            f"{src}: key 'max_associations' must be 1-10000, got {config.max_associations}"
        )
    for key in ("acse_timeout_s", "network_timeout_s", "dimse_timeout_s"):
        value = getattr(config, key)
        if not 0.1 <= value <= 86400:
            raise ConfigError(f"{src}: key {key!r} must be 0.1-86400 seconds, got {value}")
    if not 0.05 <= config.depot_scan_interval_s <= 3600:
        raise ConfigError(
            f"{src}: key 'depot_scan_interval_s' must be 0.05-3600,"
            f" got {config.depot_scan_interval_s}"
        )
    if not 0 <= config.drain_timeout_s <= 3600:
        raise ConfigError(
            f"{src}: key 'drain_timeout_s' must be 0-3600, got {config.drain_timeout_s}"
        )
    for key in ("max_instance_bytes", "min_free_bytes"):
        if getattr(config, key) < 0:
            raise ConfigError(f"{src}: key {key!r} must be 0 or more")
    _validate_commitment(config)
    if not config.accept_any and not config.remote_ae:
        raise ConfigError(
            f"{src}: accept_any is false but no [[remote_ae]] is listed: nobody could connect"
        )
    _validate_feed(src, config)
    if config.tls is not None and config.tls.port != 0 and config.tls.port == config.port:
        raise ConfigError(f"{src}: [tls] port {config.tls.port} is the same as the plain 'port'")
    _validate_metrics(config)
    _validate_scale_out(config)
    for key, value in (("user", config.user), ("admin_group", config.admin_group)):
        if value and not _ACCOUNT_RE.match(value):
            raise ConfigError(f"{src}: key {key!r} must be an account name, got {value!r}")
    # The longest name in bus/: a receiver's own socket, named by its pid.
    longest = config.bus_dir / "receiver-4194304.sock"
    if len(str(longest).encode()) > MAX_IPC_PATH_BYTES:
        raise ConfigError(
            f"{src}: key 'run_dir' is too long for a Unix socket path"
            f" ({len(str(longest).encode())} > {MAX_IPC_PATH_BYTES} bytes): {config.run_dir}"
        )


def _validate_commitment(config: Config) -> None:
    src = config._source
    limits = (
        ("commitment_wait_s", 0.0, 3600.0),
        ("commitment_retry_s", 0.05, 86400.0),
        ("commitment_retry_max_s", 0.05, 86400.0),
        ("commitment_deadline_s", 1.0, 30 * 86400.0),
    )
    for key, low, high in limits:
        value = getattr(config, key)
        if not low <= value <= high:
            raise ConfigError(f"{src}: key {key!r} must be {low:g}-{high:g} seconds, got {value}")
    if config.commitment_retry_max_s < config.commitment_retry_s:
        raise ConfigError(
            f"{src}: key 'commitment_retry_max_s' must be at least commitment_retry_s"
            f" ({config.commitment_retry_s}), got {config.commitment_retry_max_s}"
        )
    if not 1 <= config.commitment_max_references <= 65536:
        raise ConfigError(
            f"{src}: key 'commitment_max_references' must be 1-65536,"
            f" got {config.commitment_max_references}"
        )


def _validate_feed(src: str, config: Config) -> None:
    if config.layout not in LAYOUTS:
        raise ConfigError(
            f"{src}: key 'layout' must be one of {', '.join(LAYOUTS)}, got {config.layout!r}"
        )
    if config.study_quiet_s != 0 and not 0.1 <= config.study_quiet_s <= 7 * 86400:
        raise ConfigError(
            f"{src}: key 'study_quiet_s' must be 0 or 0.1-604800, got {config.study_quiet_s}"
        )
    if config.feed_max_bytes != 0 and config.feed_max_bytes < MIN_FEED_BYTES:
        raise ConfigError(
            f"{src}: key 'feed_max_bytes' must be 0 or at least {MIN_FEED_BYTES},"
            f" got {config.feed_max_bytes}"
        )
    if config.feed_max_age_s < 0:
        raise ConfigError(f"{src}: key 'feed_max_age_s' must be 0 or more")
    for key in ("feed_live_endpoint", "feed_replay_endpoint"):
        problem = _endpoint_problem(getattr(config, key))
        if problem:
            raise ConfigError(f"{src}: key {key!r} {problem}")
    live, replay = config.feed_live_endpoint, config.feed_replay_endpoint
    if live and live == replay:
        raise ConfigError(f"{src}: keys 'feed_live_endpoint' and 'feed_replay_endpoint' are equal")


MIN_FEED_BYTES = 64 * 1024
_TCP_ENDPOINT_RE = re.compile(r"^tcp://(\*|\[[0-9A-Fa-f:.]+\]|[0-9.]+):([0-9]{1,5})$")


def _endpoint_problem(endpoint: str) -> str:
    """Why `endpoint` is not a ZeroMQ address we bind ('' if it is fine)."""
    if not endpoint:
        return ""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        if not path.startswith("/"):
            return f"must be ipc:///absolute/path, got {endpoint!r}"
        if len(path.encode()) > MAX_IPC_PATH_BYTES:
            return f"is too long for a Unix socket path: {endpoint!r}"
        return ""
    match = _TCP_ENDPOINT_RE.match(endpoint)
    if match is None:
        return f"must be tcp://IP:PORT or ipc:///path, got {endpoint!r}"
    host = match.group(1).strip("[]")
    if host != "*":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return f"must name an IP address, got {endpoint!r}"
    if not 1 <= int(match.group(2)) <= 65535:
        return f"port must be 1-65535, got {endpoint!r}"
    return ""


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port); ValueError if it is neither."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError("brackets are for IPv6 addresses")
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets: [::1]:9112")
    if not sep or not host or not _is_host(host):
        raise ValueError("expected HOST:PORT")
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
        raise ValueError("the port must be 0-65535")
    return host, int(port_text)


def _validate_metrics(config: Config) -> None:
    src = config._source
    if not config.metrics:
        return
    try:
        host, port = parse_address(config.metrics)
    except ValueError as exc:
        raise ConfigError(
            f"{src}: key 'metrics' must be empty or HOST:PORT such as"
            f' "{DEFAULT_METRICS}" ({exc}), got {config.metrics!r}'
        ) from None
    dicom_ports = {config.port} | ({config.tls.port} if config.tls else set())
    if port != 0 and port in dicom_ports and _may_overlap(host, config.host):
        raise ConfigError(f"{src}: key 'metrics' uses port {port}, which DICOM listens on")


def _may_overlap(a: str, b: str) -> bool:
    """Whether two listen addresses could collide on one port."""
    wildcard = {"0.0.0.0", "::", ""}
    return a == b or a in wildcard or b in wildcard


def _validate_scale_out(config: Config) -> None:
    """`node`, `proxy_protocol`, `trusted_proxies`: values only, no disk, no DNS."""
    src = config._source
    if config.node and (not _NODE_RE.match(config.node) or config.node in (".", "..")):
        raise ConfigError(
            f"{src}: key 'node' must be 1-63 letters, digits, '.', '_' or '-' (not first),"
            f" got {config.node!r}"
        )
    for entry in config.trusted_proxies:
        try:
            ipaddress.ip_network(entry)
        except ValueError:
            raise ConfigError(
                f"{src}: key 'trusted_proxies' must list IP addresses or networks such as"
                f" 10.0.0.0/24 (no host bits set), got {entry!r}"
            ) from None
    if config.proxy_protocol and not config.trusted_proxies:
        raise ConfigError(
            f"{src}: proxy_protocol is true but trusted_proxies is empty: nobody could connect"
        )


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
