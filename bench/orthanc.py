"""Orthanc, the durable peer: its own instance, configured by the benchmark.

Orthanc (Debian package `orthanc`) is the one receiver besides storscp that
syncs to disk before it answers Success: `SyncStorageArea` (default true since
1.7.4) fsyncs each file it writes, and its SQLite index commits every instance
in a transaction. The benchmark starts it from a generated configuration:

- storage area and SQLite index in the server's directory, no plugins, no Lua;
- storage defaults spelled out: `SyncStorageArea` true, `StorageCompression`
  false, `OverwriteInstances` false; DICOM defaults kept (4 threads, maximum
  PDU 16384);
- TCP_NODELAY=1 in its environment, like every DCMTK process here (servers.py);
- DICOM on a free port; HTTP on another, for the REST API the harness uses to
  verify and to empty the server between runs. Orthanc 1.10 has no bind
  address option: both ports listen on all interfaces, like DCMTK's storescp.
  `RemoteAccessAllowed` false makes the HTTP server answer loopback clients
  only; Orthanc Explorer and WebDAV are off.

Orthanc names its files after its own attachment UUIDs
(`storage/ab/cd/abcd…`), so verification asks its index (REST
`/instances?expand`: SOP Instance UID and `FileUuid` of each instance) and
reads each file from the storage area. Every file there must belong to an
indexed instance, every instance must have its file.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
from pathlib import Path

from bench.servers import AE_TITLE, DCMTK_ENV, START_TIMEOUT_S, Server, echo_ok, free_port
from tests.support.service import poll_for

REST_TIMEOUT_S = 120.0
# Debian installs it in /usr/sbin, which an ordinary account's PATH may lack.
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


class OrthancError(Exception):
    """Orthanc's REST API answered something the harness cannot use."""


class Orthanc(Server):
    name = "orthanc"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.index_dir = root / "index"
        self.config_path = root / "orthanc.json"
        self.http_port = 0

    def config(self) -> dict[str, object]:
        """The generated configuration; every key not named keeps Orthanc's default."""
        return {
            "Name": "storscp-bench",
            "StorageDirectory": str(self.output_dir),
            "IndexDirectory": str(self.index_dir),
            "TemporaryDirectory": str(self.root / "tmp"),
            "Plugins": [],
            "LuaScripts": [],
            "SyncStorageArea": True,
            "StorageCompression": False,
            "OverwriteInstances": False,
            "DicomServerEnabled": True,
            "DicomAet": AE_TITLE,
            "DicomPort": self.port,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "ExecuteLuaEnabled": False,
        }

    def argv(self) -> list[str]:
        return [ORTHANC, str(self.config_path)]

    def start(self) -> None:
        self.port, self.http_port = free_port(), free_port()
        for directory in (self.output_dir, self.index_dir, self.root / "tmp"):
            directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=1))
        # Orthanc's DICOM server is Debian's DCMTK (libdcmnet): without
        # TCP_NODELAY=1 every C-STORE response waits ~40 ms for a delayed ACK.
        # Its own "TcpNoDelay" key only concerns the HTTP server.
        self._spawn(self.argv(), env=DCMTK_ENV)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"orthanc exited with {self.proc.returncode}: {self.output()}")
            try:
                self._rest("GET", "/system")
            except (OSError, OrthancError):
                return False
            return echo_ok(self.port)

        poll_for(ready, START_TIMEOUT_S, "orthanc to answer REST and C-ECHO", interval_s=0.1)

    def describe(self) -> str:
        settings = ", ".join(
            f"{k} {json.dumps(v)}"
            for k, v in self.config().items()
            if k in ("SyncStorageArea", "StorageCompression", "OverwriteInstances", "Plugins")
        )
        return (
            "TCP_NODELAY=1 Orthanc orthanc.json  (storage and SQLite index in its directory, "
            f"{settings}, HTTP for loopback clients only, other keys default)"
        )

    def uid_of(self, filename: str) -> str | None:
        return None  # Orthanc's file names are its own UUIDs: see stored_files

    def _rest(self, method: str, path: str, body: object = None) -> dict[str, object]:
        """One request to the REST API on loopback (http.client: no proxy from the env)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=REST_TIMEOUT_S)
        try:
            payload = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=payload)
            response = conn.getresponse()
            text = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise OrthancError(f"{method} {path}: HTTP {response.status} {text[:200]!r}")
        decoded = json.loads(text) if text.strip() else {}
        # Lists come back wrapped so callers get one type.
        return decoded if isinstance(decoded, dict) else {"list": decoded}

    def _storage_files(self) -> dict[str, Path]:
        """name -> path of every file in the storage area, at any depth."""
        found: dict[str, Path] = {}
        for directory, _, names in os.walk(self.output_dir):
            for name in names:
                found[name] = Path(directory, name)
        return found

    def stored_files(self) -> dict[str, Path]:
        """uid -> file, from Orthanc's index joined with its storage area.

        An indexed instance whose file is missing maps to a path that does not
        exist (verification reports it unreadable); a file no instance owns, or
        a second instance with one UID, shows up as an extra entry.
        """
        files = self._storage_files()
        found: dict[str, Path] = {}
        listing = self._rest("GET", "/instances?expand")["list"]
        assert isinstance(listing, list)
        for instance in listing:
            uid = str(instance.get("MainDicomTags", {}).get("SOPInstanceUID", ""))
            uuid = str(instance.get("FileUuid", ""))
            key = uid if uid and uid not in found else f"second copy of {uid}: {instance['ID']}"
            found[key] = files.pop(uuid, self.output_dir / f"missing file {uuid}")
        for name, path in files.items():
            found[f"not an instance: {name}"] = path
        return found

    def visible(self, expected: set[str]) -> bool:
        """Always: Orthanc answers Success only once a file is written, synced and indexed.

        So when the senders are done there is nothing to wait for, and what is
        missing stays missing: verify() says so. Asking the REST API here would
        also charge the listing to Orthanc's CPU.
        """
        return True

    def clear_output(self) -> None:
        """Empty Orthanc for the next run without freeing an inode (see Server.clear_output).

        Deleting through the REST API alone would make Orthanc unlink every
        file and then remove each emptied `ab/cd` directory: about one freed
        directory inode per instance. So the files are truncated and the whole
        storage area is moved to the trash first; Orthanc's unlinks then find
        nothing (it ignores that), and the REST delete only empties its index.
        """
        for path in self._storage_files().values():
            os.truncate(path, 0)
        self.trash_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir.rename(self.trash_dir / f"{next(self._trash_names)}")
        self.output_dir.mkdir()
        patients = self._rest("GET", "/patients")["list"]
        if patients:
            self._rest("POST", "/tools/bulk-delete", {"Resources": patients})
        left = self._rest("GET", "/statistics").get("CountInstances")
        if left != 0:
            raise OrthancError(f"orthanc still indexes {left} instances after the delete")
