"""A real Orthanc (the PACS of DESIGN.md §7) for the tests, private to the test session.

``OrthancServer(tmp).start()`` writes a config JSON under ``tmp`` (storage and index there,
free loopback HTTP and DICOM ports, ``RemoteAccessAllowed`` false, HTTP basic auth with one
registered user, AE title ``ORTHANC``, no plugins) and runs ``/usr/sbin/Orthanc`` on it
until ``GET /system`` answers. ``stop()`` ends it (SIGTERM, so its SQLite index is closed
cleanly); ``start()`` again brings it back on the same ports and storage (PACS outages).
``config={...}`` overrides or adds configuration options. ``OverwriteInstances`` is true, as
the broker's ``orthanc`` destination needs it (docs/DELIVERY.md); ``{"OverwriteInstances":
False}`` gives Orthanc's own default.

Any calling AE title may C-FIND at PATIENT/STUDY/SERIES/IMAGE level over DICOM
(``DicomAlwaysAllowFind``, Orthanc >= 1.9.0; it does not cover worklists, which
``DicomAlwaysAllowFindWorklist`` would), C-ECHO (``DicomAlwaysAllowEcho``) and C-STORE
(``DicomAlwaysAllowStore``): the broker queries it as an SCU from an AE title that Orthanc
does not have in ``DicomModalities``. ``DicomCheckCalledAet`` is on, so the SCU must call
``ORTHANC``. C-GET and C-MOVE stay refused to unknown peers.

The small sync REST helper (:meth:`OrthancServer.get`, :meth:`upload`, :meth:`studies`,
:meth:`instance_tags`, :meth:`clear`) uses urllib: tests check what Orthanc stores with it,
independently of the broker's aiohttp client.

Fixtures, for any test package: import the two functions into its conftest.py or test
module, and ask for the fixtures by name (the functions have other names, so that a test's
``orthanc`` parameter does not shadow an import)::

    from tests.orthanc_server import orthanc_fixture, orthanc_server_fixture  # noqa: F401

    async def test_something(orthanc: OrthancServer) -> None: ...

``orthanc_server`` is one Orthanc per test module (started once, killed at the end: its
storage is deleted); ``orthanc`` is the same server for one test: running again if a test
stopped it, and empty.
A missing Orthanc binary is a failure, not a skip (DESIGN.md §7).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

#: How long a starting Orthanc may take until /system answers (it opens its index first).
START_TIMEOUT_S = 20.0
#: How long a stopping Orthanc may take to exit after SIGTERM.
STOP_TIMEOUT_S = 10.0
#: The registered user of the test servers (HTTP basic auth).
USERNAME = "broker"
PASSWORD = "s3cret-Orthanc-pw"
AET = "ORTHANC"


def orthanc_binary() -> str:
    """The Orthanc to run: $ORTHANC, /usr/sbin/Orthanc, or on PATH."""
    for candidate in (
        os.environ.get("ORTHANC"),
        "/usr/sbin/Orthanc",
        shutil.which("Orthanc"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "Orthanc not found (looked at $ORTHANC, /usr/sbin/Orthanc, PATH); "
        "install it (Debian: apt-get install orthanc)",
        pytrace=False,
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback TCP ports nobody listens on right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)  # held open until all are picked: no duplicates
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


#: Servers running now: killed at interpreter exit if a fixture could not stop them.
_running: set[OrthancServer] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_running):
        server.kill()


class OrthancError(Exception):
    """Orthanc answered a helper request with an HTTP error (status and body)."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class OrthancServer:
    """One Orthanc process (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        config: Mapping[str, Any] | None = None,
        *,
        http_port: int | None = None,
        dicom_port: int | None = None,
    ) -> None:
        self.directory = directory
        ports = free_ports(2)
        self.http_port = http_port or ports[0]
        self.dicom_port = dicom_port or ports[1]
        self.aet = AET
        self.username = USERNAME
        self.password = PASSWORD
        self.extra_config = dict(config or {})
        self.process: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / "Orthanc.log"

    def config(self) -> dict[str, Any]:
        """The configuration the server runs with."""
        return {
            "Name": "broker-tests",
            "StorageDirectory": str(self.directory / "storage"),
            "IndexDirectory": str(self.directory / "index"),
            "Plugins": [],  # no worklist plugin etc.: only the core REST API and DICOM SCP
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": True,
            # No bind-address option in 1.10.1 (DESIGN.md §9): loopback clients only, with auth.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,  # PATIENT/STUDY/SERIES/IMAGE C-FIND from any AE
            "DicomAlwaysAllowFindWorklist": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpCompressionEnabled": False,
            "SaveJobs": False,
            "StableAge": 3600,  # no "stable" events mid-test
            # What the broker's orthanc destination needs to keep UIDs on a modify (see
            # docs/DELIVERY.md); pass {"OverwriteInstances": False} for Orthanc's default.
            "OverwriteInstances": True,
            "TcpNoDelay": True,
            **self.extra_config,
        }

    def start(self) -> OrthancServer:
        """Start (or restart) Orthanc; returns when ``/system`` answers. Fails the test
        with Orthanc's log when it exits or does not answer in time."""
        if self.running:
            return self
        for sub in ("storage", "index"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        config_path = self.directory / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        args = [orthanc_binary(), f"--logfile={self.log_path}", "--no-jobs", str(config_path)]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _running.add(self)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                pytest.fail(f"Orthanc exited with {code}:\n{self.log_tail()}", pytrace=False)
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"Orthanc on port {self.http_port} not answering after "
                    f"{START_TIMEOUT_S:g} s:\n{self.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after ``STOP_TIMEOUT_S``); its ports are closed after.
        Orthanc 1.10.1 takes about 3 s to stop cleanly (its HTTP and DICOM servers poll)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """``kill -9`` (instant; a crashed PACS): its SQLite index recovers on the next start."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        _running.discard(self)
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, size: int = 3000) -> str:
        """The end of Orthanc's log (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def _answers(self) -> bool:
        try:
            self.get("/system", timeout=0.5)
        except (OSError, OrthancError):
            return False
        return True

    # -- REST helper (sync, stdlib) --------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> bytes:
        """One request with the server's credentials; raises :class:`OrthancError` on an
        HTTP error status (and ``OSError`` when Orthanc is not reachable)."""
        request = urllib.request.Request(self.url + path, data=body, method=method)
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            exc.close()
            raise OrthancError(method, path, exc.code, text) from None

    def get(self, path: str, *, timeout: float = 30.0) -> Any:
        """``GET path`` decoded from JSON."""
        return json.loads(self.request("GET", path, timeout=timeout))

    def post(self, path: str, payload: Any) -> Any:
        """``POST path`` with a JSON body; the answer decoded from JSON (None when empty)."""
        answer = self.request("POST", path, json.dumps(payload).encode())
        return json.loads(answer) if answer.strip() else None

    def upload(self, *files: bytes) -> list[str]:
        """Store DICOM files (``POST /instances``); returns their Orthanc instance ids."""
        return [
            json.loads(self.request("POST", "/instances", data, content_type="application/dicom"))[
                "ID"
            ]
            for data in files
        ]

    def studies(self) -> list[dict[str, Any]]:
        """Every stored study (``GET /studies?expand``), each with its MainDicomTags,
        PatientMainDicomTags, Series and ParentPatient."""
        studies: list[dict[str, Any]] = self.get("/studies?expand")
        return studies

    def patients(self) -> list[dict[str, Any]]:
        """Every stored patient (``GET /patients?expand``)."""
        patients: list[dict[str, Any]] = self.get("/patients?expand")
        return patients

    def instances(self) -> list[str]:
        """Every stored instance's Orthanc id."""
        ids: list[str] = self.get("/instances")
        return ids

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """An instance's tags as keyword -> value (``/instances/{id}/simplified-tags``),
        read from the stored file."""
        tags: dict[str, Any] = self.get(f"/instances/{instance_id}/simplified-tags")
        return tags

    def all_instance_tags(self) -> list[dict[str, Any]]:
        """:meth:`instance_tags` of every stored instance, sorted by SOPInstanceUID."""
        tags = [self.instance_tags(i) for i in self.instances()]
        return sorted(tags, key=lambda t: str(t.get("SOPInstanceUID")))

    def clear(self) -> None:
        """Delete every stored patient (and so every study, series and instance)."""
        for patient in self.get("/patients"):
            self.request("DELETE", f"/patients/{patient}")


@pytest.fixture(name="orthanc_server", scope="module")
def orthanc_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One private Orthanc for the test module (see the module docstring)."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    try:
        yield server
    finally:
        server.kill()  # its storage is thrown away: no need for a 3 s clean stop
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(name="orthanc")
def orthanc_fixture(orthanc_server: OrthancServer) -> OrthancServer:
    """The module's Orthanc for one test: running (restarted if a test stopped it), empty."""
    orthanc_server.start()
    orthanc_server.clear()
    return orthanc_server


__all__ = [
    "AET",
    "PASSWORD",
    "USERNAME",
    "OrthancError",
    "OrthancServer",
    "free_ports",
    "orthanc_binary",
    "orthanc_fixture",
    "orthanc_server_fixture",
]
