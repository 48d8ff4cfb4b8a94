"""Real ``broker serve`` processes for the peer tests, and a small MLLP client to talk to them.

Each broker runs as ``python -m broker.cli serve --config FILE`` on free loopback ports with its
own temporary config and SQLite store; a fixture waits for ``GET /health`` to answer 200 and, at
teardown, stops it (SIGTERM, then SIGKILL after a bounded wait). The process's log goes to a
file; the part written during a test is printed at its teardown, so pytest shows it beside a
failure ("Captured stdout teardown") and hides it otherwise.

The MLLP helpers here are deliberately independent of ``broker.hl7`` (the code under test):
framing is ``<VT> message <FS><CR>`` (HL7 v2.5.1 Appendix C), written out again in a few lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest

from tests.samples_index import SAMPLES, read_sample_cr

REPO = Path(__file__).resolve().parents[2]
START_BLOCK = b"\x0b"
END = b"\x1c\r"

#: How long a broker may take to answer /health after it was started.
START_TIMEOUT_S = 20.0
#: How long SIGTERM may take before the process is killed.
STOP_TIMEOUT_S = 10.0
#: Default wait for one ACK.
ACK_TIMEOUT_S = 10.0


# -- ports, config -------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env() -> dict[str, str]:
    # The broker reads BROKER_CONFIG and BROKER__* overrides: the test's config must win.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- the broker process --------------------------------------------------------------------


class BrokerProcess:
    """One ``broker serve`` process on its own ports, config and store."""

    def __init__(
        self,
        workdir: Path,
        *,
        mllp: dict[str, Any] | None = None,
        dicom: bool = False,
        destinations: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.store = workdir / "broker.db"
        self.config_path = workdir / "broker.yaml"
        self.log_path = workdir / "broker.log"
        self.mllp_port = free_port()
        self.http_port = free_port()
        self.dicom_port = free_port() if dicom else 0
        listener = {
            "name": "ris",
            "host": "127.0.0.1",
            "port": self.mllp_port,
            **(mllp or {}),
        }
        config = {
            "store": f"sqlite:///{self.store}",
            "routes": str(REPO / "routes"),
            "mappings": str(REPO / "mappings"),
            "mllp": [listener],
            "dicom": (
                {"ae_title": "BROKER", "host": "127.0.0.1", "port": self.dicom_port}
                if dicom
                else {"enabled": False}
            ),
            "http": {"host": "127.0.0.1", "port": self.http_port},
        }
        if destinations is not None:
            config["destinations"] = destinations
        # JSON is YAML: no quoting surprises in paths.
        self.config_path.write_text(json.dumps(config, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0
        self.starts = 0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, *, extra_args: tuple[str, ...] = (), python_args: tuple[str, ...] = ()) -> None:
        """Start the process (on the same config and store as before) and wait until healthy."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            log.write(f"--- start #{self.starts + 1} ---\n".encode())
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *python_args,
                    "-m",
                    "broker.cli",
                    "serve",
                    "--config",
                    str(self.config_path),
                    *extra_args,
                ],
                cwd=REPO,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"broker exited with {self.proc.returncode} while starting:\n{self.log_text()}"
                )
            with contextlib.suppress(OSError):
                status, _ = self.health(timeout=1.0)
                if status == 200:
                    return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"broker did not answer /health within {START_TIMEOUT_S}s:\n{self.log_text()}"
                )
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait (graceful shutdown); SIGKILL when it takes too long. Exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)

    def restart(self) -> None:
        """Stop (if running) and start again on the same config, ports and store."""
        self.stop()
        self.start()

    # -- observation -------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_since_mark(self) -> str:
        text = self.log_text()
        return text[self.log_offset :]

    def mark_log(self) -> None:
        self.log_offset = len(self.log_text())

    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes, str]:
        """(status, body, content type) of GET http://127.0.0.1:PORT/path."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read(), exc.headers.get("Content-Type", "")

    def health(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        status, body, _ = self.http_get("/health", timeout)
        return status, json.loads(body)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``broker ARGS --config <this config>`` and return the finished process."""
        return subprocess.run(
            [sys.executable, "-m", "broker.cli", *args, "--config", str(self.config_path)],
            cwd=REPO,
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def journal_ls(self, limit: int = 1000) -> list[dict[str, Any]]:
        """``broker journal ls --json`` as a list of dicts, newest first."""
        done = self.cli("journal", "ls", "--json", "--limit", str(limit))
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def journal_rows(self) -> list[tuple[str, str, str, str]]:
        """(sender, control_id, status, ack_code) of every journal row, read from the file."""
        conn = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(
                "SELECT sender, control_id, status, ack_code FROM journal ORDER BY id"
            ).fetchall()
        finally:
            conn.close()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """``make(**mllp_overrides)`` starts a broker process; all are stopped at teardown."""
    made: list[BrokerProcess] = []

    def make(**mllp: Any) -> BrokerProcess:
        broker = BrokerProcess(tmp_path / f"broker{len(made)}", mllp=mllp)
        made.append(broker)
        broker.start()
        return broker

    yield make
    _stop_all(made)


@pytest.fixture
def broker(broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    """A broker process with the default limits, for one test."""
    return broker_factory()


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker process for every test of a module (tests must not depend on each other)."""
    broker = BrokerProcess(tmp_path_factory.mktemp("broker"))
    _LIVE.append(broker)
    try:
        broker.start()
        yield broker
    finally:
        _stop_all([broker])
        _LIVE.remove(broker)


_LIVE: list[BrokerProcess] = []


def _stop_all(brokers: list[BrokerProcess]) -> None:
    for broker in brokers:
        code = broker.stop()
        sys.stdout.write(f"\n===== broker log ({broker.workdir.name}, exit {code}) =====\n")
        sys.stdout.write(broker.log_since_mark())


@pytest.fixture(autouse=True)
def _shared_broker_log() -> Iterator[None]:
    """Print what module-scoped brokers logged during this test (shown only on failure)."""
    for broker in _LIVE:
        broker.mark_log()
    yield
    for broker in _LIVE:
        sys.stdout.write(f"\n===== broker log ({broker.workdir.name}, this test) =====\n")
        sys.stdout.write(broker.log_since_mark())
        broker.mark_log()


# -- messages ------------------------------------------------------------------------------


def with_control_id(text: str, control_id: str) -> str:
    """``text`` (CR-separated, MSH first) with MSH-10 replaced."""
    msh, sep, rest = text.partition("\r")
    fields = msh.split("|")
    fields[9] = control_id
    return "|".join(fields) + sep + rest


_ORM = read_sample_cr("orm_o01_v231")


def orm(control_id: str) -> bytes:
    """The ORM^O01 v2.3.1 sample (ASCII) with its MSH-10 set to ``control_id``."""
    return with_control_id(_ORM, control_id).encode("ascii")


def sample_bytes(name: str) -> bytes:
    """A sample's bytes as stored (its own charset and line endings)."""
    return SAMPLES[name].path.read_bytes()


def frame(payload: bytes) -> bytes:
    return START_BLOCK + payload + END


def split_frames(data: bytes) -> list[bytes]:
    """Payloads of the complete frames in ``data`` (a peer's whole answer stream)."""
    out = []
    pos = 0
    while True:
        start = data.find(START_BLOCK, pos)
        if start < 0:
            return out
        end = data.find(END, start + 1)
        if end < 0:
            return out
        out.append(data[start + 1 : end])
        pos = end + len(END)


def parse_ack(payload: bytes) -> hl7.Message:
    """An ACK parsed by python-hl7 (the oracle); ACKs carry only ASCII in these tests."""
    return hl7.parse(payload.decode("latin-1").replace("\n", "\r"))


def msa(payload: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    message = parse_ack(payload)
    return str(message.segment("MSA")(1)), str(message.segment("MSA")(2))


def err_locations(payload: bytes) -> list[str]:
    """The ERR segments' locations as 'SEG^seq^field' (ERR-2 from v2.5, ERR-1 before)."""
    out = []
    for segment in payload.decode("latin-1").split("\r"):
        if not segment.startswith("ERR"):
            continue
        fields = segment.split("|")
        if len(fields) > 2 and fields[2]:
            out.append(fields[2])
        elif len(fields) > 1:
            out.append("^".join(fields[1].split("^")[:3]))
    return out


# -- MLLP clients --------------------------------------------------------------------------


class MllpConnection:
    """An asyncio MLLP client connection: send a message, await its answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> MllpConnection:
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def send(self, payload: bytes, timeout: float = ACK_TIMEOUT_S) -> bytes:
        """Send one framed message and return the payload of the answer frame."""
        self.writer.write(frame(payload))
        return await self.receive(timeout)

    async def receive(self, timeout: float = ACK_TIMEOUT_S) -> bytes:
        block = await asyncio.wait_for(self.reader.readuntil(END), timeout)
        start = block.find(START_BLOCK)
        assert start >= 0, f"answer without a start block: {block[:80]!r}"
        return block[start + 1 : -len(END)]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> MllpConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def roundtrip(port: int, payload: bytes, timeout: float = ACK_TIMEOUT_S) -> bytes:
    """Blocking: connect, send one framed message, return the answer's payload, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(frame(payload))
        data = b""
        while END not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    frames = split_frames(data)
    assert frames, f"no answer frame (got {data[:80]!r})"
    return frames[0]


def assert_serving(broker: BrokerProcess, control_id: str | None = None) -> None:
    """The broker process is alive and a well-formed ORM on a new connection gets AA."""
    assert broker.alive(), f"broker died:\n{broker.log_text()[-4000:]}"
    cid = control_id or f"ALIVE{time.monotonic_ns()}"
    code, echoed = msa(roundtrip(broker.mllp_port, orm(cid)))
    assert (code, echoed) == ("AA", cid)
