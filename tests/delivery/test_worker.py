"""Workers draining a real SQLite queue to a real MLLP receiver that misbehaves.

Everything arrives, in order per key; the dead-letter list holds exactly what the policy says.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from broker.delivery import Delivered, Destination, Outcome, Retry
from broker.delivery.destinations import MllpDestination, mllp_options
from broker.effects import Enqueue
from broker.queue import Entry, Ordering, RetryPolicy, State
from broker.storage.sqlite_queue import SqliteQueue
from tests.delivery.conftest import MakeWorker, hl7, until
from tests.delivery.receiver import AA, CLOSE, Answer, Receiver, control_id


def mllp(port: int, **options: Any) -> MllpDestination:
    return MllpDestination("pacs", mllp_options("destinations.pacs", {"port": port, **options}))


async def put(store: SqliteQueue, *cids: str, key: str = "P1", dest: str = "pacs") -> None:
    for cid in cids:
        await store.enqueue(Enqueue(dest, hl7(cid, key), key))


def first_arrivals(rx: Receiver) -> list[str]:
    """Control IDs in the order they were first accepted (resends ignored)."""
    seen: list[str] = []
    for cid in rx.control_ids():
        if cid not in seen:
            seen.append(cid)
    return seen


async def test_everything_arrives_in_order(store: SqliteQueue, make_worker: MakeWorker) -> None:
    cids = [f"C{n:03}" for n in range(100)]
    async with Receiver() as rx:
        worker = make_worker(mllp(rx.port))
        await put(store, *cids[:50])
        worker.wake()
        await put(store, *cids[50:])
        await until(lambda: len(rx.accepted) == 100)
        assert rx.control_ids() == cids
        await until(lambda: worker.counters.delivered == 100 and worker.busy_lanes == 0)
    assert (await store.stats(["pacs"]))["pacs"].depth == 0
    assert worker.counters.retried == 0 and worker.busy_lanes == 0


async def test_outage_then_recovery(store: SqliteQueue, make_worker: MakeWorker) -> None:
    rx = Receiver()
    await rx.start()
    await rx.stop()  # the port is known; the receiver is down
    worker = make_worker(mllp(rx.port, connect_timeout_s=0.5))
    await put(store, *[f"C{n}" for n in range(20)])
    await until(lambda: worker.counters.retried >= 3)
    stats = (await store.stats())["pacs"]
    assert stats.depth == 20 and stats.retry == 1 and stats.max_attempts >= 3
    assert worker.counters.failing_since > 0
    await rx.start()
    try:
        await until(lambda: len(rx.accepted) == 20)
        assert rx.control_ids() == [f"C{n}" for n in range(20)]
        await until(lambda: worker.counters.failures == 0)
    finally:
        await rx.stop()


async def test_ae_slow_close_and_foreign_ids_are_retried_in_order(
    store: SqliteQueue, make_worker: MakeWorker
) -> None:
    """Each kind of trouble once, on different messages: all arrive, in order."""
    trouble = {
        "C2": Answer("AE", text="try later"),
        "C4": Answer(delay_s=0.3),  # slower than the ACK timeout
        "C6": CLOSE,
        "C8": Answer(control_id="NOT-C8"),
    }

    def script(message: bytes, seen: int) -> Answer:
        return trouble.get(control_id(message), AA) if seen == 0 else AA

    async with Receiver(script) as rx:
        worker = make_worker(mllp(rx.port, ack_timeout_s=0.1))
        cids = [f"C{n}" for n in range(10)]
        await put(store, *cids)
        await until(lambda: len(set(rx.control_ids())) == 10)
        assert first_arrivals(rx) == cids
        await until(lambda: worker.counters.delivered >= 10)
        assert worker.counters.retried == 4
    assert await store.dead() == []


async def test_dead_letters_hold_exactly_what_the_policy_says(
    store: SqliteQueue, make_worker: MakeWorker
) -> None:
    """AR → dead at once; AE forever → dead after max_attempts; the lane goes on after both."""

    def script(message: bytes, seen: int) -> Answer:
        cid = control_id(message)
        if cid == "R1":
            return Answer("AR", text="unknown patient")
        if cid == "E1":
            return Answer("AE", text="busy")
        return AA

    async with Receiver(script) as rx:
        policy = RetryPolicy(initial_s=0.01, max_interval_s=0.05, max_attempts=3, jitter=0)
        worker = make_worker(mllp(rx.port), retry=policy)
        await put(store, "C1", "R1", "C2", "E1", "C3")
        await until(lambda: rx.control_ids() == ["C1", "C2", "C3"])
        await until(lambda: worker.counters.dead == 2)
    dead = await store.dead("pacs")
    assert [control_id(d.payload) for d in dead] == ["R1", "E1"]
    assert [d.attempts for d in dead] == [1, 3]
    assert "answered AR: unknown patient" in dead[0].last_error
    assert "answered AE: busy" in dead[1].last_error
    assert "gave up after 3 attempts" in dead[1].last_error
    assert rx.received.count(hl7("E1")) == 3


async def test_backoff_schedule(store: SqliteQueue, make_worker: MakeWorker) -> None:
    """Attempts of a failing entry are spaced as the policy says (no jitter: exact floors)."""
    times: list[float] = []
    loop = asyncio.get_running_loop()

    class Failing:
        name = "pacs"

        async def deliver(self, entry: Entry) -> Outcome:
            times.append(loop.time())
            return Retry("down") if len(times) < 5 else Delivered()

        async def aclose(self) -> None:
            pass

    policy = RetryPolicy(initial_s=0.05, factor=2, max_interval_s=0.2, jitter=0)
    make_worker(Failing(), retry=policy, poll_s=0.005)
    await put(store, "C1")
    await until(lambda: len(times) == 5)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, wanted in zip(gaps, [0.05, 0.1, 0.2, 0.2], strict=True):
        assert wanted <= gap < wanted + 0.1, gaps


async def test_a_failing_patient_blocks_only_its_own_successors(
    store: SqliteQueue, make_worker: MakeWorker
) -> None:
    def script(message: bytes, seen: int) -> Answer:
        return Answer("AE") if control_id(message) == "A1" and seen < 6 else AA

    async with Receiver(script) as rx:
        make_worker(mllp(rx.port, connections=2), ordering=Ordering.PATIENT)
        for n in range(1, 4):
            await put(store, f"A{n}", key="A")
            await put(store, f"B{n}", key="B")
        await until(lambda: rx.control_ids()[:3] == ["B1", "B2", "B3"], timeout=5)
        assert not any(c.startswith("A") for c in rx.control_ids())  # A waits for A1
        await until(lambda: len(rx.accepted) == 6)
        assert [c for c in rx.control_ids() if c.startswith("A")] == ["A1", "A2", "A3"]


async def test_pause_and_resume(store: SqliteQueue, make_worker: MakeWorker) -> None:
    async with Receiver() as rx:
        worker = make_worker(mllp(rx.port))
        await store.pause("pacs")
        await put(store, "C1", "C2")
        await asyncio.sleep(0.15)
        assert rx.received == []
        await store.resume("pacs")
        worker.wake()
        await until(lambda: rx.control_ids() == ["C1", "C2"])


async def test_graceful_stop_leaves_nothing_half_done(
    store: SqliteQueue, make_worker: MakeWorker
) -> None:
    """Stopping mid-delivery: the slow entry is released unacked and goes out again later."""
    slow = {"C2"}

    def script(message: bytes, seen: int) -> Answer:
        return Answer(delay_s=1.0) if control_id(message) in slow else AA

    async with Receiver(script) as rx:
        worker = make_worker(mllp(rx.port))
        await put(store, "C1", "C2", "C3")
        await until(lambda: len(rx.received) == 2)
        await worker.stop(shutdown_s=0.1)  # C2's ACK is still a second away
        states = {control_id(e.payload): e.state for e in await store.entries("pacs")}
        assert states == {"C2": State.READY, "C3": State.READY}  # released, not in flight
        slow.clear()
        make_worker(mllp(rx.port))
        await until(lambda: rx.control_ids() == ["C1", "C2", "C3"])


async def test_a_dead_process_lease_expires_and_another_worker_delivers(
    store: SqliteQueue, make_worker: MakeWorker
) -> None:
    async with Receiver() as rx:
        await put(store, "C1", "C2")
        # "process 1" claimed both and died without settling anything
        assert len(await store.claim("pacs", "dead-process", lease_s=0.3)) == 2
        make_worker(mllp(rx.port), lease_s=5.0)
        await asyncio.sleep(0.1)
        assert rx.received == []  # the lease still holds
        await until(lambda: rx.control_ids() == ["C1", "C2"], timeout=3)


class Recording:
    """A destination that records the order it is called in and always delivers."""

    name = "pacs"

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.concurrent = 0
        self.most = 0

    async def deliver(self, entry: Entry) -> Outcome:
        self.concurrent += 1
        self.most = max(self.most, self.concurrent)
        await asyncio.sleep(0.001)
        self.calls.append(entry.payload)
        self.concurrent -= 1
        return Delivered()

    async def aclose(self) -> None:
        pass


async def test_several_lanes_run_concurrently(store: SqliteQueue, make_worker: MakeWorker) -> None:
    dest: Destination = Recording()
    make_worker(dest, ordering=Ordering.PATIENT, concurrency=4)
    for n in range(5):
        for key in "ABCDEF":
            await put(store, f"{key}{n}", key=key)
    assert isinstance(dest, Recording)
    await until(lambda: len(dest.calls) == 30)
    assert 1 < dest.most <= 4
    for key in "ABCDEF":
        mine = [control_id(p) for p in dest.calls if control_id(p).startswith(key)]
        assert mine == [f"{key}{n}" for n in range(5)]
