"""The Redis queue under faults: a node that dies mid-delivery, Redis killed mid-load.

Real redis-server processes (``tests/redis_server.py``), real clocks and short leases.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

from redis.asyncio import Redis

from broker.effects import Enqueue
from broker.errors import StoreError
from broker.queue import Entry, Ordering, State
from broker.storage.redis_keys import DELIVERY_GROUP, queue_keys
from broker.storage.redis_queue import RedisQueue
from tests.queue.backends import flush_redis
from tests.redis_server import RedisServer, shared_redis_url

KEYS = ("P1", "P2", "P3")
LEASE_S = 0.5


async def _pending_by_consumer(url: str, destination: str) -> dict[str, int]:
    """What the consumer group's pending list holds, per consumer (``XPENDING`` summary)."""
    client = Redis.from_url(url)
    try:
        summary = await client.xpending(queue_keys(destination).stream, DELIVERY_GROUP)
    finally:
        await client.aclose()
    return {c["name"].decode(): int(c["pending"]) for c in summary["consumers"]}


async def _drain(
    q: RedisQueue, owner: str, delivered: dict[str, list[int]], total: int, timeout_s: float
) -> None:
    """Claim and deliver (ack) until ``total`` entries are delivered, lane order kept."""
    deadline = time.monotonic() + timeout_s
    while sum(map(len, delivered.values())) < total:
        assert time.monotonic() < deadline, f"only {delivered} delivered"
        got = await q.claim("pacs", owner, ordering=Ordering.PATIENT, lanes=3, run=4,
                            lease_s=LEASE_S)  # fmt: skip
        for entry in got:
            assert await q.ack(owner, entry.id)
            delivered[entry.ordering_key].append(entry.id)
        if not got:
            await asyncio.sleep(0.05)


async def _fill(q: RedisQueue, per_key: int) -> dict[str, list[int]]:
    enqueued: dict[str, list[int]] = defaultdict(list)
    for n in range(per_key):
        for key in KEYS:
            eid = await q.enqueue(Enqueue("pacs", f"MSG {key} {n}".encode(), key))
            enqueued[key].append(eid)
    return enqueued


async def test_a_node_that_stops_renewing_is_taken_over() -> None:
    url = shared_redis_url()
    await flush_redis(url)
    async with RedisQueue.from_url(url) as node_a, RedisQueue.from_url(url) as node_b:
        enqueued = await _fill(node_a, 6)
        held = await node_a.claim("pacs", "node-a", ordering=Ordering.PATIENT, lanes=3, run=4,
                                  lease_s=LEASE_S)  # fmt: skip
        assert len(held) == 12
        delivered: dict[str, list[int]] = defaultdict(list)
        for entry in held[:3]:  # A delivers the head of P1, then "dies" (stops renewing)
            if entry.ordering_key == "P1":
                assert await node_a.ack("node-a", entry.id)
                delivered["P1"].append(entry.id)
        assert await _pending_by_consumer(url, "pacs") == {"node-a": 11}
        assert await node_b.claim("pacs", "node-b", ordering=Ordering.PATIENT, lanes=3) == []
        await _drain(node_b, "node-b", delivered, 18, timeout_s=10)
        # A wakes up: its leases were taken over, its outcomes no longer count
        for entry in held:
            assert not await node_a.ack("node-a", entry.id)
        assert await node_a.renew("node-a", [e.id for e in held], 30) == set()
        assert delivered == enqueued  # every key in order, each entry delivered once
        assert await _pending_by_consumer(url, "pacs") == {}  # node-a forgotten by the group
        stats = (await node_b.stats(["pacs"]))["pacs"]
        assert stats.depth == 0 and stats.in_flight == 0


# A second "node": claims with a 1 s lease, says which entries it holds, then waits for
# its kill -9 (no release, no goodbye to Redis).
_NODE_A = """
import asyncio, json, sys
from broker.queue import Ordering
from broker.storage.redis_queue import RedisQueue

async def main() -> None:
    q = RedisQueue.from_url(sys.argv[1])
    got = await q.claim("pacs", "node-a", ordering=Ordering.PATIENT, lanes=2, run=3,
                        lease_s=1.0)
    print(json.dumps([e.id for e in got]), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_killed_node_leaves_pending_entries_another_delivers() -> None:
    url = shared_redis_url()
    await flush_redis(url)
    async with RedisQueue.from_url(url) as node_b:
        enqueued = await _fill(node_b, 4)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _NODE_A, url, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            held = json.loads(line)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        assert held == sorted(enqueued["P1"][:3] + enqueued["P2"][:3])
        assert await _pending_by_consumer(url, "pacs") == {"node-a": 6}
        # P3 was free all along; P1 and P2 wait for node A's lease (1 s) to run out
        first = await node_b.claim("pacs", "node-b", ordering=Ordering.PATIENT, lanes=3)
        assert {e.ordering_key for e in first} == {"P3"}
        delivered: dict[str, list[int]] = defaultdict(list)
        for entry in first:
            assert await node_b.ack("node-b", entry.id)
            delivered["P3"].append(entry.id)
        started = time.monotonic()
        await _drain(node_b, "node-b", delivered, 12, timeout_s=10)
        assert time.monotonic() - started > 0.2  # it did wait for the lease
        assert delivered == enqueued
        assert await _pending_by_consumer(url, "pacs") == {}


async def test_redis_killed_mid_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """kill -9 of Redis run with appendfsync always: every enqueue and every ack that
    returned is there after the restart (docs/DELIVERY.md says what everysec risks)."""
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        async with RedisQueue.from_url(server.url, retries=0) as q:
            queued: dict[int, bytes] = {}
            acked: set[int] = set()
            failures = 0
            stop = asyncio.Event()

            async def produce(worker: int) -> None:
                nonlocal failures
                n = 0
                while not stop.is_set():
                    payload = f"MSG {worker} {n}".encode()
                    try:
                        eid = await q.enqueue(Enqueue("pacs", payload, f"K{worker}"))
                    except StoreError:
                        failures += 1
                        await asyncio.sleep(0.02)
                        continue
                    assert eid not in queued, f"id {eid} handed out twice"  # counter lost?
                    queued[eid] = payload
                    n += 1

            async def consume() -> None:
                nonlocal failures
                while not stop.is_set():
                    try:
                        got = await q.claim("pacs", "c", ordering=Ordering.NONE, lanes=8)
                        for entry in got:
                            if await q.ack("c", entry.id):
                                acked.add(entry.id)
                    except StoreError:
                        failures += 1
                    await asyncio.sleep(0.005)

            tasks = [asyncio.create_task(produce(w)) for w in range(4)]
            tasks.append(asyncio.create_task(consume()))
            await asyncio.sleep(0.4)
            before = len(queued)
            server.kill()
            await asyncio.sleep(0.2)
            server.start()  # same port and directory: Redis loads its AOF
            await asyncio.sleep(0.4)
            stop.set()
            await asyncio.gather(*tasks)

            assert before > 20 and len(queued) > before + 20  # it recovered by itself
            assert failures > 0  # the outage was seen
            missing = []
            for eid, payload in queued.items():
                entry = await q.get(eid)
                if entry is None or entry.payload != payload:
                    missing.append(eid)
                elif eid in acked:
                    assert entry.state is State.DELIVERED, entry
            assert missing == [], f"{len(missing)} acknowledged enqueues lost"
            # what was queued and not delivered is still to deliver
            left: list[Entry] = await q.entries("pacs", limit=100_000)
            done = await q.entries("pacs", states=[State.DELIVERED], limit=100_000)
            assert set(queued) - {e.id for e in done} <= {e.id for e in left}
    finally:
        server.stop()
