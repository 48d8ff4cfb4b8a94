"""A real RabbitMQ for the tests: a private node on free loopback ports in a temporary dir.

``RabbitMqServer(tmp).start()`` runs ``rabbitmq-server`` (the Debian package's real script,
``/usr/lib/rabbitmq/bin/rabbitmq-server``: the ``/usr/sbin`` wrapper would ``su rabbitmq`` and
drop our environment) with its own node name, data, logs, config, Erlang cookie (``HOME``) and
epmd (started here on a free port, so nothing is left running and the system's RabbitMQ on
5672 is never touched), the management plugin off. Users come from a definitions file loaded
at boot, so no ``rabbitmqctl`` call (each costs an Erlang VM start, ~1 s) is needed:

- ``broker`` / ``broker-secret``: everything on vhost ``/``;
- ``noconfig`` / ``noconfig-secret``: may not declare anything (configure ``^$``);
- ``nowrite`` / ``nowrite-secret``: may declare, may not publish (write ``^$``).

``start()`` waits until ``broker`` can log in over AMQP; ``stop()`` shuts the node down
(SIGTERM: RabbitMQ's own graceful stop) and ``start()`` again brings it back on the same ports
and data (durable exchanges and queues survive); ``kill()`` is ``kill -9``; ``ctl(...)`` runs
``rabbitmqctl`` against it. ``tls=(cert, key)`` adds an ``amqps`` listener on ``tls_port``. A missing rabbitmq-server is a failure, not a skip
(DESIGN.md §7).

:func:`shared_amqp_url` is the one node of a test session (or ``$AMQP_URL``, which must point
at a scratch vhost: the tests declare and delete exchanges and queues there), started on first
use; :func:`stop_shared_rabbitmq` ends it.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.redis_server import free_port

#: How long a starting node may take to accept a login (an Erlang VM boot: ~3-6 s here).
START_TIMEOUT_S = 60.0
#: How long a stopping node may take to exit after SIGTERM.
STOP_TIMEOUT_S = 30.0
#: The users of the definitions file: name → (password, configure, write, read).
USERS: dict[str, tuple[str, str, str, str]] = {
    "broker": ("broker-secret", ".*", ".*", ".*"),
    "noconfig": ("noconfig-secret", "^$", ".*", ".*"),
    "nowrite": ("nowrite-secret", ".*", "^$", ".*"),
}


def rabbitmq_server_binary() -> str:
    """The rabbitmq-server script to run: $RABBITMQ_SERVER, Debian's real script, or PATH."""
    for candidate in (
        os.environ.get("RABBITMQ_SERVER"),
        "/usr/lib/rabbitmq/bin/rabbitmq-server",
        shutil.which("rabbitmq-server"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "rabbitmq-server not found (looked at $RABBITMQ_SERVER, "
        "/usr/lib/rabbitmq/bin/rabbitmq-server, PATH); install it (Debian: apt-get install "
        "rabbitmq-server) or set AMQP_URL",
        pytrace=False,
    )


def _epmd_binary() -> str:
    found = shutil.which("epmd") or "/usr/bin/epmd"
    if not os.access(found, os.X_OK):
        pytest.fail("epmd (Erlang) not found; it comes with rabbitmq-server", pytrace=False)
    return found


def make_cert(directory: Path, name: str = "rabbitmq") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key), made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def password_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _can_login(port: int, user: str, password: str) -> bool:
    """Whether ``user`` logs in to vhost ``/`` over AMQP (so the definitions are loaded)."""
    import amqp  # py-amqp, kombu's AMQP client

    connection = amqp.Connection(
        f"127.0.0.1:{port}", userid=user, password=password, connect_timeout=1
    )
    try:
        connection.connect()
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            connection.collect()
    return True


class RabbitMqServer:
    """One private RabbitMQ node (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else 0
        self.nodename = f"broker-test-{os.getpid()}-{secrets.token_hex(3)}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None

    def url(self, user: str = "broker") -> str:
        """``amqp://user:password@127.0.0.1:PORT//`` for one of :data:`USERS`."""
        return f"amqp://{user}:{USERS[user][0]}@127.0.0.1:{self.port}//"

    @property
    def tls_url(self) -> str:
        return f"amqps://broker:{USERS['broker'][0]}@127.0.0.1:{self.tls_port}//"

    @property
    def log_file(self) -> Path:
        return self.directory / "log" / f"{self.nodename}.log"

    def _write_config(self) -> None:
        d = self.directory
        for sub in ("mnesia", "log", "plugins-expand"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        definitions = {
            "users": [
                {
                    "name": name,
                    "password_hash": password_hash(password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": ["administrator"] if name == "broker" else [],
                }
                for name, (password, *_) in USERS.items()
            ],
            "vhosts": [{"name": "/"}],
            "permissions": [
                {"user": name, "vhost": "/", "configure": c, "write": w, "read": r}
                for name, (_, c, w, r) in USERS.items()
            ],
        }
        (d / "definitions.json").write_text(json.dumps(definitions))
        lines = [
            f"listeners.tcp.1 = 127.0.0.1:{self.port}",
            "loopback_users = none",
            f"load_definitions = {d / 'definitions.json'}",
            # a scratch node on a busy disk must not block publishers (default: 50 MB)
            "disk_free_limit.absolute = 1MB",
            "log.console = false",
            "log.file.level = warning",
        ]
        if self.tls is not None:
            cert, key = self.tls
            lines += [
                f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}",
                f"ssl_options.certfile = {cert}",
                f"ssl_options.keyfile = {key}",
                "ssl_options.verify = verify_none",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        (d / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (d / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf
        (d / "enabled_plugins").write_text("[].\n")  # management off

    def _environment(self) -> dict[str, str]:
        d = self.directory
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(d),  # the Erlang cookie goes here, not into the user's home
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(d / "plugins-expand"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
        )
        return env

    def start(self) -> RabbitMqServer:
        self._write_config()  # ports and users as this object has them (a reused dir too)
        env = self._environment()
        if self.epmd is None:
            # Our own epmd in the foreground: the node registers there, and stop() ends it.
            self.epmd = subprocess.Popen(
                [_epmd_binary(), "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        with (self.directory / "stdout.log").open("ab") as out:  # the child keeps its copy
            self.process = subprocess.Popen(
                [rabbitmq_server_binary()],
                env=env,
                cwd=self.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() reaches the VM too
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _can_login(self.port, "broker", USERS["broker"][0]):
            if self.process.poll() is not None:
                code = self.process.returncode
                self.close()
                pytest.fail(f"rabbitmq-server exited with {code}: {self._tail()}")
            if time.monotonic() > deadline:
                self.kill()
                self.close()
                pytest.fail(
                    f"rabbitmq-server on port {self.port} not accepting logins after "
                    f"{START_TIMEOUT_S:g} s: {self._tail()}"
                )
            time.sleep(0.1)
        return self

    def _tail(self) -> str:
        parts = []
        for path in (self.directory / "stdout.log", self.log_file):
            if path.exists():
                parts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node (each call starts an Erlang VM,
        ~1 s); returns its output, fails the test when it fails."""
        script = Path(rabbitmq_server_binary()).with_name("rabbitmqctl")
        done = subprocess.run(
            [str(script), "-n", self.nodename, *args],
            env=self._environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            pytest.fail(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def kill(self) -> None:
        """``kill -9`` of the whole node (script and Erlang VM): no goodbye to clients."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """A graceful shutdown: clients get connection.close (320 CONNECTION_FORCED)."""
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if sig is signal.SIGKILL:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)  # the script asks the VM to stop, then waits for it
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with contextlib.suppress(ProcessLookupError):  # the VM's helpers (erl_child_setup)
            os.killpg(process.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the node and its epmd (the data directory stays; the caller owns it)."""
        self.stop()
        epmd, self.epmd = self.epmd, None
        if epmd is not None:
            epmd.terminate()
            epmd.wait(STOP_TIMEOUT_S)


_shared: list[RabbitMqServer] = []


def shared_amqp_url(user: str = "broker") -> str:
    """$AMQP_URL (for ``broker`` only), or this session's own node's URL (started on first
    call)."""
    url = os.environ.get("AMQP_URL")
    if url and user == "broker":
        return url
    return shared_rabbitmq().url(user)


def shared_rabbitmq() -> RabbitMqServer:
    """This session's private node, with an amqps listener too (never $AMQP_URL: for tests
    that stop it, need its users or TLS)."""
    if not _shared:
        directory = Path(tempfile.mkdtemp(prefix="broker-rabbitmq-"))
        server = RabbitMqServer(directory, tls=make_cert(directory / "tls")).start()
        _shared.append(server)
        atexit.register(stop_shared_rabbitmq)  # in case the session ends without the fixture
    return _shared[0]


def stop_shared_rabbitmq() -> None:
    """Stop the session's node, if one was started, and remove its directory."""
    while _shared:
        server = _shared.pop()
        server.close()
        shutil.rmtree(server.directory, ignore_errors=True)


__all__ = [
    "USERS",
    "RabbitMqServer",
    "make_cert",
    "password_hash",
    "rabbitmq_server_binary",
    "shared_amqp_url",
    "shared_rabbitmq",
    "stop_shared_rabbitmq",
]
