"""kill -9 of ``broker serve`` in the middle of a load, then restart (issue 8, faults).

DESIGN.md §8: an AA means durable. Eight connections send 5,000 ORM^O01 with unique MSH-10s,
each awaiting its ACK; after about 2,000 AAs the broker is killed with SIGKILL (no shutdown code
runs). After a restart on the same store, every control ID that got an AA is in the journal
exactly once, the store passes SQLite's integrity check, resending acknowledged messages is
answered AA as duplicates, and the rest of the load (what a RIS would resend) completes with
every message accepted exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.peers.conftest import BrokerProcess, MllpConnection, msa, orm

pytestmark = pytest.mark.peer

MESSAGES = 5000
CONNECTIONS = 8
KILL_AFTER_ACKS = 2000


async def send_all(
    port: int, ids: list[str], acked: list[str], on_ack: Callable[[], None] | None = None
) -> list[str]:
    """Send ``ids`` one at a time on one connection, appending each AA'd ID to ``acked``.

    Returns the IDs not acknowledged (the connection died under them).
    """
    conn = await MllpConnection.open(port)
    try:
        for index, cid in enumerate(ids):
            try:
                answer = await conn.send(orm(cid), timeout=15)
            except (OSError, asyncio.IncompleteReadError):
                return ids[index:]
            code, echoed = msa(answer)
            assert (code, echoed) == ("AA", cid)
            acked.append(cid)
            if on_ack is not None:
                on_ack()
        return []
    finally:
        await conn.close()


def accepted_counts(broker: BrokerProcess) -> tuple[Counter[str], Counter[str]]:
    """(accepted rows, all rows) per control ID, read straight from the SQLite file."""
    accepted: Counter[str] = Counter()
    every: Counter[str] = Counter()
    for _sender, cid, status, _ack in broker.journal_rows():
        every[cid] += 1
        if status == "accepted":
            accepted[cid] += 1
    return accepted, every


async def test_kill_9_mid_load_loses_no_acknowledged_message(broker: BrokerProcess) -> None:
    ids = [f"CRASH{i:05d}" for i in range(MESSAGES)]
    shares = [ids[n::CONNECTIONS] for n in range(CONNECTIONS)]
    acked: list[str] = []
    killed_at: list[int] = []

    def maybe_kill() -> None:
        if not killed_at and len(acked) >= KILL_AFTER_ACKS:
            killed_at.append(len(acked))
            os.kill(broker.pid, signal.SIGKILL)  # mid-load: the other 7 have frames in flight

    started = time.monotonic()
    leftovers = await asyncio.gather(
        *(send_all(broker.mllp_port, share, acked, maybe_kill) for share in shares)
    )
    load_s = time.monotonic() - started
    assert broker.proc is not None
    assert broker.proc.wait(10) == -signal.SIGKILL
    assert killed_at, "the load finished before the kill"
    unacked = [cid for rest in leftovers for cid in rest]
    assert len(acked) + len(unacked) == MESSAGES
    assert KILL_AFTER_ACKS <= len(acked) < MESSAGES
    print(f"{len(acked)} AA before kill -9 ({load_s:.1f} s), {len(unacked)} unanswered")

    broker.start()  # same store, same ports

    conn = sqlite3.connect(f"file:{broker.store}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    accepted, every = accepted_counts(broker)
    lost = [cid for cid in acked if accepted[cid] != 1]
    assert not lost, f"{len(lost)} acknowledged messages missing or doubled, e.g. {lost[:5]}"
    assert all(every[cid] == 1 for cid in acked), "an acknowledged ID was journaled twice"
    assert all(n == 1 for n in every.values())

    # Resending acknowledged messages: AA again, journaled as duplicates, not applied twice.
    resent = acked[:: len(acked) // 50][:50]
    again: list[str] = []
    assert await send_all(broker.mllp_port, resent, again) == []
    assert again == resent
    accepted, every = accepted_counts(broker)
    assert all(accepted[cid] == 1 and every[cid] == 2 for cid in resent)

    # The RIS resends what was never acknowledged; afterwards each message is accepted once.
    finished: list[str] = []
    shares = [unacked[n::CONNECTIONS] for n in range(CONNECTIONS)]
    rests = await asyncio.gather(*(send_all(broker.mllp_port, s, finished) for s in shares))
    assert rests == [[]] * CONNECTIONS
    assert sorted(finished) == sorted(unacked)
    accepted, _ = accepted_counts(broker)
    assert set(accepted) == set(ids)
    assert set(accepted.values()) == {1}
    assert broker.health()[0] == 200
