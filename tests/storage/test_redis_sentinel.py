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
from broker.storage.factory import SentinelUrl, open_stores, redis_queue
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
def cluster(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, SentinelProcess]]:
    durable = ("--appendonly", "yes", "--appendfsync", "always")
    primary = RedisServer(tmp_path / "primary", *durable).start()
    replica = RedisServer(
        tmp_path / "replica", *durable, "--replicaof", "127.0.0.1", str(primary.port)
    ).start()
    sentinel = SentinelProcess(tmp_path / "sentinel", primary.port)
    yield primary, replica, sentinel
    sentinel.stop()
    replica.stop()
    primary.stop()


def test_the_url_names_sentinels_service_and_database() -> None:
    url = SentinelUrl.parse("redis+sentinel://:s3cret@10.0.0.1:26379, 10.0.0.2:26380/pacs/2")
    assert url.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (url.service, url.db, url.password) == ("pacs", 2, "s3cret")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        SentinelUrl.parse("redis+sentinel://nohost/pacs")
    with pytest.raises(ConfigError, match="SERVICE"):
        SentinelUrl.parse("redis+sentinel://127.0.0.1:26379/")


def test_the_store_follows_the_primary_through_a_failover(
    cluster: tuple[RedisServer, RedisServer, SentinelProcess],
) -> None:
    primary, replica, sentinel = cluster
    settings = Settings.model_validate(
        {"store": f"redis+sentinel://127.0.0.1:{sentinel.port}/broker/0"}
    )
    stores = open_stores(settings)
    stores.open()
    try:
        assert stores.journal.commit_sync(record("C1"), order("O1", "S1")).ack_code == "AA"
        # let the replica catch up before the primary dies (replication is asynchronous:
        # docs/DELIVERY.md says what a failover can lose without this)
        on_primary = redis.Redis(port=primary.port)
        assert on_primary.wait(1, 5000) == 1
        on_primary.close()
        primary.kill()
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
        assert sentinel.primary_port() == replica.port
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
