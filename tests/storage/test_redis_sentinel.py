"""``store: redis+sentinel://…``: the store finds the primary through a real Redis Sentinel and
follows it through a failover (a primary, a replica and a Sentinel, all started here)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broker.config import Settings
from broker.errors import ConfigError, StoreError
from broker.storage.factory import SentinelUrl, open_stores, redis_queue, replica_wait
from broker.storage.redis_tx import ReplicasBehind, ReplicaWait
from tests.redis_server import RedisServer, free_port, redis_server_binary
from tests.storage.test_redis_journal import order, record


class SentinelProcess:
    """One Redis Sentinel watching ``primary`` as service ``broker``, quick to fail over."""

    def __init__(self, directory: Path, primary_port: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = directory / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor broker 127.0.0.1 {primary_port} 1\n"
            "sentinel down-after-milliseconds broker 500\n"
            "sentinel failover-timeout broker 3000\n"
        )
        self.proc = subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "sentinel did not start"
                time.sleep(0.05)
        client.close()

    def primary_port(self) -> int:
        client = redis.Redis(port=self.port)
        try:
            _, port = client.execute_command("SENTINEL", "get-master-addr-by-name", "broker")
            return int(port)
        finally:
            client.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def cluster(
    tmp_path: Path,
) -> Iterator[tuple[RedisServer, list[RedisServer], SentinelProcess]]:
    """A primary with two replicas (after a failover one still follows the new primary, so
    ``wait=1`` can be met) and a Sentinel; returns once both replicas are in sync."""
    durable = ("--appendonly", "yes", "--appendfsync", "always")
    primary = RedisServer(tmp_path / "primary", *durable).start()
    replicas = [
        RedisServer(
            tmp_path / f"replica{n}", *durable, "--replicaof", "127.0.0.1", str(primary.port)
        ).start()
        for n in range(2)
    ]
    client = redis.Redis(port=primary.port)
    deadline = time.monotonic() + 10
    while (
        sum(
            1
            for key, value in client.info("replication").items()
            if key.startswith("slave")
            and isinstance(value, dict)
            and value.get("state") == "online"
        )
        < 2
    ):
        assert time.monotonic() < deadline, "replicas did not come in sync"
        time.sleep(0.05)
    client.close()
    sentinel = SentinelProcess(tmp_path / "sentinel", primary.port)
    yield primary, replicas, sentinel
    sentinel.stop()
    for replica in replicas:
        replica.stop()
    primary.stop()


def test_without_the_replicas_asked_for_a_commit_is_not_acknowledged(tmp_path: Path) -> None:
    """wait=1 and no replica: the commit is on the primary but not acknowledged (AE). Once a
    replica is back, the sender's resend is the duplicate of what committed: AA, not applied
    twice."""
    server = RedisServer(tmp_path / "primary").start()
    settings = Settings.model_validate({"store": f"{server.url}?wait=1&wait_timeout_ms=50"})
    stores = open_stores(settings)
    stores.open()
    replica = None
    try:
        with pytest.raises(ReplicasBehind, match="0 of 1 replica"):
            stores.journal.commit_sync(record("C1"), order("O1", "S1"))
        assert stores.worklist.count() == 1  # on the primary all the same
        replica = RedisServer(
            tmp_path / "replica", "--replicaof", "127.0.0.1", str(server.port)
        ).start()
        deadline = time.monotonic() + 10
        while True:
            try:
                again = stores.journal.commit_sync(record("C1"), order("O1", "S1"))
                break
            except ReplicasBehind:  # the replica is still syncing
                assert time.monotonic() < deadline, "the replica never confirmed"
        assert again.duplicate and again.ack_code == "AA"
        assert stores.worklist.count() == 1
    finally:
        stores.close()
        if replica is not None:
            replica.stop()
        server.stop()


def test_broker_check_warns_when_the_replicas_asked_for_are_missing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from broker.cli import main

    server = RedisServer(tmp_path / "alone", "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        config = tmp_path / "broker.yaml"
        config.write_text(f"store: {server.url}?wait=1\n")
        out = CliRunner().invoke(main, ["check", "--config", str(config)]).output
        assert "asks for wait=1 but the primary has 0 replica(s) in sync" in out
    finally:
        server.stop()


def test_the_wait_option_is_read_from_the_store_url() -> None:
    assert replica_wait("redis://h:6379/0") == ("redis://h:6379/0", None)
    assert replica_wait("redis://h:6379/0?wait=2&wait_timeout_ms=250") == (
        "redis://h:6379/0", ReplicaWait(2, 250))  # fmt: skip
    assert replica_wait("redis://h/0?wait=1&socket_timeout=3") == (
        "redis://h/0?socket_timeout=3", ReplicaWait(1, 1000))  # fmt: skip
    with pytest.raises(ConfigError, match="integers"):
        replica_wait("redis://h/0?wait=some")


def test_the_url_names_sentinels_service_and_database() -> None:
    url = SentinelUrl.parse("redis+sentinel://:s3cret@10.0.0.1:26379, 10.0.0.2:26380/pacs/2")
    assert url.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (url.service, url.db, url.password) == ("pacs", 2, "s3cret")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        SentinelUrl.parse("redis+sentinel://nohost/pacs")
    with pytest.raises(ConfigError, match="SERVICE"):
        SentinelUrl.parse("redis+sentinel://127.0.0.1:26379/")


def test_the_store_follows_the_primary_through_a_failover(
    cluster: tuple[RedisServer, list[RedisServer], SentinelProcess],
) -> None:
    primary, replicas, sentinel = cluster
    # wait=1: no ACK before the replica has the commit, so the failover cannot lose it
    settings = Settings.model_validate(
        {"store": f"redis+sentinel://127.0.0.1:{sentinel.port}/broker/0?wait=1"}
    )
    stores = open_stores(settings)
    stores.open()
    try:
        assert stores.journal.commit_sync(record("C1"), order("O1", "S1")).ack_code == "AA"
        primary.kill()  # at once: what was acknowledged is on the replica already
        deadline = time.monotonic() + 30
        n = 0
        while True:  # messages get AE (StoreError) until the replica is promoted
            n += 1
            try:
                result = stores.journal.commit_sync(record(f"C2-{n}"), order("O2", "S1"))
                break
            except StoreError:
                assert time.monotonic() < deadline, "no new primary within 30 s"
                time.sleep(0.2)
        assert result.ack_code == "AA"
        assert sentinel.primary_port() in {r.port for r in replicas}
        assert stores.worklist.count(active_only=True) == 2  # O1 survived the failover
        # the delivery queues find the new primary the same way
        queued = asyncio.run(_queued(settings))
        assert queued == [b"MSH|O1", b"MSH|O2"]
    finally:
        stores.close()


async def _queued(settings: Settings) -> list[bytes]:
    queue = redis_queue(settings)
    try:
        return [e.payload for e in await queue.entries("pacs")]
    finally:
        await queue.aclose()
