"""The reconnect probe: a destination that failed on its connection is retried as soon as a
probe finds it back, not at the end of a long backoff; answers (AE) still back off."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from broker.delivery import HttpDestination, MllpDestination, Retry, WorkerOptions
from broker.delivery.destinations import http_options, mllp_options
from broker.effects import Enqueue
from broker.errors import ConfigError
from broker.queue import Entry, RetryPolicy, State
from broker.storage.sqlite_queue import SqliteQueue
from tests.delivery.conftest import MakeWorker, hl7, until
from tests.delivery.receiver import AA, Answer, Receiver, control_id

#: A backoff no test waits for: only a probe can make these entries go out in time.
SLOW = RetryPolicy(initial_s=30, factor=2, max_interval_s=300, jitter=0)


def mllp(port: int, **options: Any) -> MllpDestination:
    return MllpDestination("pacs", mllp_options("destinations.pacs", {"port": port, **options}))


async def put(store: SqliteQueue, *cids: str, key: str = "P1") -> None:
    for cid in cids:
        await store.enqueue(Enqueue("pacs", hl7(cid, key), key))


async def head(store: SqliteQueue) -> Entry:
    return (await store.entries("pacs"))[0]


async def test_refused_then_back_is_delivered_within_two_seconds(
    store: SqliteQueue, make_worker: MakeWorker
) -> None:
    rx = Receiver()
    await rx.start()
    await rx.stop()  # the port is known; the receiver is down
    worker = make_worker(mllp(rx.port, connect_timeout_s=0.5), retry=SLOW)  # probe every 1 s
    await put(store, "C1", "C2", "C3")
    await until(lambda: worker.counters.retried == 1 and worker.busy_lanes == 0)
    first = await head(store)
    assert (first.state, first.attempts) == (State.RETRY, 1)
    assert "127.0.0.1" in first.last_error
    await asyncio.sleep(2.5)  # probes fail meanwhile: they are not attempts
    assert worker.counters.retried == 1
    assert (await head(store)).attempts == 1
    loop = asyncio.get_running_loop()
    await rx.start()
    back = loop.time()
    try:
        await until(lambda: len(rx.accepted) == 3, timeout=5)
        took = loop.time() - back
        assert took < 2.0, took
        assert rx.control_ids() == ["C1", "C2", "C3"]
        assert rx.received.count(hl7("C1")) == 1  # the probe sent nothing
        await until(lambda: worker.counters.failures == 0 and worker.busy_lanes == 0)
    finally:
        await rx.stop()
    delivered = await store.entries("pacs", states=(State.DELIVERED,))
    assert [(control_id(e.payload), e.attempts) for e in delivered] == [
        ("C1", 1),
        ("C2", 0),
        ("C3", 0),
    ]


async def test_connection_lost_then_down_then_back(
    store: SqliteQueue, make_worker: MakeWorker
) -> None:
    """The receiver dies under an open connection: the first failure is a lost connection
    (the peer may be up); the failed probes that follow show it down, its return is seen."""
    rx = Receiver()
    await rx.start()
    worker = make_worker(mllp(rx.port, connect_timeout_s=0.5), retry=SLOW, probe_interval_s=0.2)
    await put(store, "C0")
    await until(lambda: rx.control_ids() == ["C0"])
    await until(lambda: worker.busy_lanes == 0)
    await rx.stop()
    await put(store, "C1", "C2")
    await until(lambda: worker.counters.retried == 1 and worker.busy_lanes == 0)
    await asyncio.sleep(0.6)
    assert worker.counters.retried == 1
    loop = asyncio.get_running_loop()
    await rx.start()
    back = loop.time()
    try:
        await until(lambda: len(rx.accepted) == 3, timeout=5)
        assert loop.time() - back < 1.0
        assert rx.control_ids() == ["C0", "C1", "C2"]
    finally:
        await rx.stop()


async def test_a_peer_that_is_up_but_closes_waits_for_the_backoff(
    store: SqliteQueue, make_worker: MakeWorker
) -> None:
    """A connection closed mid-message by a peer that still accepts connections is not an
    outage: probes succeed, but nothing is retried before the policy's time."""

    def script(message: bytes, seen: int) -> Answer:
        return Answer(code="") if control_id(message) == "C1" else AA

    async with Receiver(script) as rx:
        worker = make_worker(mllp(rx.port), retry=SLOW, probe_interval_s=0.1)
        await put(store, "C1", "C2")
        await until(lambda: worker.counters.retried == 1 and worker.busy_lanes == 0)
        await asyncio.sleep(1.0)
        assert rx.received.count(hl7("C1")) == 1
        assert worker.counters.retried == 1 and rx.accepted == []


async def test_ae_answers_keep_the_policy_backoff(
    store: SqliteQueue, make_worker: MakeWorker
) -> None:
    def script(message: bytes, seen: int) -> Answer:
        return Answer("AE", text="busy") if control_id(message) == "C1" else AA

    async with Receiver(script) as rx:
        worker = make_worker(mllp(rx.port), retry=SLOW, probe_interval_s=0.1)
        await put(store, "C1", "C2")
        await until(lambda: worker.counters.retried == 1 and worker.busy_lanes == 0)
        waiting = await head(store)
        assert waiting.state == State.RETRY and waiting.attempts == 1
        assert waiting.not_before >= waiting.last_attempt_at + 29  # the policy's 30 s, in store
        await asyncio.sleep(1.0)
        assert rx.received == [hl7("C1")]  # not retried, and C2 waits behind it
        assert worker.counters.retried == 1


async def test_probe_interval_zero_turns_probing_off(
    store: SqliteQueue, make_worker: MakeWorker
) -> None:
    rx = Receiver()
    await rx.start()
    await rx.stop()
    worker = make_worker(mllp(rx.port, connect_timeout_s=0.5), retry=SLOW, probe_interval_s=0)
    await put(store, "C1")
    await until(lambda: worker.counters.retried == 1 and worker.busy_lanes == 0)
    waiting = await head(store)
    assert waiting.not_before >= waiting.last_attempt_at + 29
    await rx.start()
    try:
        await asyncio.sleep(1.5)
        assert rx.received == []
    finally:
        await rx.stop()


async def test_mllp_probe_connects_and_keeps_the_connection() -> None:
    rx = Receiver()
    await rx.start()
    await rx.stop()
    async with mllp(rx.port, connect_timeout_s=0.5) as dest:
        outcome = await dest.deliver(Entry(id=1, destination="pacs", payload=hl7("C1")))
        assert isinstance(outcome, Retry) and outcome.network == "connect"
        assert await dest.probe() is False
        await rx.start()
        try:
            assert await dest.probe() is True
            assert await dest.probe() is True
            assert rx.connections == 1  # one connection, kept for the delivery
            await dest.deliver(Entry(id=1, destination="pacs", payload=hl7("C1")))
            assert rx.connections == 1 and rx.control_ids() == ["C1"]
        finally:
            await rx.stop()


async def test_http_probe_and_connect_failures() -> None:
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        up = HttpDestination("ehr", http_options("d.ehr", {"url": f"http://127.0.0.1:{port}/x"}))
        async with up:
            assert await up.probe() is True
    finally:
        await runner.cleanup()
    down = HttpDestination("ehr", http_options("d.ehr", {"url": f"http://127.0.0.1:{port}/x"}))
    async with down:
        assert await down.probe() is False
        outcome = await down.deliver(Entry(id=1, destination="ehr", payload=b"x"))
        assert isinstance(outcome, Retry) and outcome.network == "connect"


@pytest.mark.parametrize("value", [-1, "1", True])
def test_probe_interval_option(value: object) -> None:
    assert WorkerOptions.from_mapping("d.x", {"probe_interval_s": 0.5}).probe_interval_s == 0.5
    with pytest.raises(ConfigError) as info:
        WorkerOptions.from_mapping("d.x", {"probe_interval_s": value})
    assert "d.x.probe_interval_s: found" in str(info.value)
