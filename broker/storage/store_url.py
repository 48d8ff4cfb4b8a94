"""The ``store:`` URL: which backend, and the broker's own options for a Redis store.

Pure parsing (no connection), so that the configuration is checked when it is loaded and a
wrong URL is reported with the key, the URL (its password replaced) and what was expected.

- ``sqlite:///PATH``: the embedded store.
- ``redis://[:PASSWORD@]HOST:PORT/DB`` (``rediss://`` with TLS): a Redis shared by nodes.
- ``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]``: the same, the primary
  found through Redis Sentinel.
- On either Redis form, ``?wait=N[&wait_timeout_ms=M]``: every commit waits for N replicas
  before the ACK (``WAIT``, M ms at most, default 1000).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from broker.errors import ConfigError
from broker.net import redact_url

SENTINEL_SCHEME = "redis+sentinel://"
REDIS_SCHEMES = ("redis://", "rediss://", SENTINEL_SCHEME)
EXPECTED = (
    "expected sqlite:///PATH, redis://HOST:PORT/DB or "
    "redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE/DB"
)


class StoreUrlError(ConfigError):
    """A ``store:`` URL that cannot work: the text names the key, the URL (password
    replaced) and the problem; ``problem`` is the last part alone."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"store: {redact_url(url)!r}: {problem}")
        self.problem = problem


def check(url: str) -> None:
    """Raise StoreUrlError (saying what was expected) for a ``store:`` URL that cannot work."""
    if not url.startswith(("sqlite:///", *REDIS_SCHEMES)):
        raise StoreUrlError(url, EXPECTED)
    if url.startswith(REDIS_SCHEMES):
        base, _ = replica_wait(url)
        if base.startswith(SENTINEL_SCHEME):
            SentinelUrl.parse(base)


@dataclass(frozen=True)
class ReplicaWait:
    """Wait after each commit until ``replicas`` replicas have it (``WAIT``), at most
    ``timeout_ms``: so that a Sentinel failover cannot lose an acknowledged message."""

    replicas: int
    timeout_ms: int = 1000


SENTINEL_SCHEME = "redis+sentinel://"


@dataclass(frozen=True)
class SentinelUrl:
    """``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]``: the Sentinels to
    ask, the monitored primary's service name, the database and the primary's password."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        expected = "expected redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]"
        rest = url.removeprefix(SENTINEL_SCHEME)
        hosts, _, path = rest.partition("/")
        password = None
        if "@" in hosts:
            auth, _, hosts = hosts.rpartition("@")
            password = auth.partition(":")[2] or None
        sentinels = []
        for part in hosts.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit():
                raise StoreUrlError(url, f"sentinel {part!r} is not HOST:PORT; {expected}")
            sentinels.append((host.strip("[]"), int(port)))
        service, _, db = path.partition("/")
        if not service or (db and not db.isdigit()):
            raise StoreUrlError(url, expected)
        return cls(tuple(sentinels), service, int(db or 0), password)


def replica_wait(url: str) -> tuple[str, ReplicaWait | None]:
    """The store URL without the broker's own options, and its replica wait:
    ``?wait=N`` (replicas that must confirm each commit before the ACK) and
    ``wait_timeout_ms=M`` (default 1000)."""
    base, _, query = url.partition("?")
    options = urllib.parse.parse_qs(query, keep_blank_values=True)
    wait = options.pop("wait", None)
    timeout = options.pop("wait_timeout_ms", None)
    rest = urllib.parse.urlencode(options, doseq=True)
    clean = f"{base}?{rest}" if rest else base
    if wait is None:
        if timeout is not None:
            raise StoreUrlError(url, "wait_timeout_ms needs wait=N")
        return clean, None
    try:
        replicas = int(wait[-1])
        timeout_ms = int(timeout[-1]) if timeout else 1000
    except ValueError:
        raise StoreUrlError(url, "wait and wait_timeout_ms must be integers") from None
    if replicas < 0 or timeout_ms <= 0:
        raise StoreUrlError(url, "expected wait >= 0 and wait_timeout_ms > 0")
    return clean, (ReplicaWait(replicas, timeout_ms) if replicas else None)
