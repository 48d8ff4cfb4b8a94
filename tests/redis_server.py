"""A real redis-server for the tests, started on a free loopback port in a temporary dir.

``RedisServer(tmp).start()`` runs ``redis-server --port N --bind 127.0.0.1 --save ""
--appendonly no --dir TMP`` (extra arguments, e.g. ``--appendonly yes``, are appended) and
waits until it answers PING; ``kill()`` is ``kill -9``; ``start()`` again restarts it on the
same port and directory. A missing redis-server is a failure, not a skip (DESIGN.md §7).

:func:`shared_redis_url` is the one server of a test session (or ``$REDIS_URL``, which must
point at a scratch database: the tests flush it), started on first use so that code outside
fixtures (Hypothesis scenarios under ``asyncio.run``) reaches it too;
:func:`stop_shared_redis` ends it (``tests/queue/conftest.py`` does at session end).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

#: How long a starting redis-server may take to answer PING (it loads its AOF first).
START_TIMEOUT_S = 10.0
#: How long a stopping redis-server may take to exit after SIGTERM.
STOP_TIMEOUT_S = 5.0


def redis_server_binary() -> str:
    """The redis-server to run: $REDIS_SERVER, /usr/bin/redis-server, or on PATH."""
    for candidate in (
        os.environ.get("REDIS_SERVER"),
        "/usr/bin/redis-server",
        shutil.which("redis-server"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "redis-server not found (looked at $REDIS_SERVER, /usr/bin/redis-server, PATH); "
        "install it (Debian: apt-get install redis-server) or set REDIS_URL",
        pytrace=False,
    )


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process (see the module docstring)."""

    def __init__(self, directory: Path, *extra: str, port: int | None = None) -> None:
        self.directory = directory
        self.extra = extra
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ping(self.port):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = self.directory / "redis.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                pytest.fail(f"redis-server exited with {self.process.returncode}: {err}{tail}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"redis-server on port {self.port} not answering after "
                            f"{START_TIMEOUT_S:g} s")  # fmt: skip
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """``kill -9``: no shutdown save, no goodbye to clients."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
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
        if process.stderr is not None:
            process.stderr.close()


_shared: list[RedisServer] = []


def shared_redis_url() -> str:
    """$REDIS_URL, or the URL of this session's own redis-server (started on first call)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    if not _shared:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="broker-redis-"))).start()
        _shared.append(server)
        atexit.register(stop_shared_redis)  # in case the session ends without the fixture
    return _shared[0].url


def stop_shared_redis() -> None:
    """Stop the session's redis-server, if one was started, and remove its directory."""
    while _shared:
        server = _shared.pop()
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


__all__ = [
    "RedisServer",
    "free_port",
    "redis_server_binary",
    "shared_redis_url",
    "stop_shared_redis",
]
