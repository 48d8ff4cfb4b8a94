"""MLLP load generator for the ingest benchmark: N connections, each sending ORM^O01 and awaiting
every ACK before the next message (as a RIS does), for a fixed time; prints one JSON line.

Run as its own process (``bench_ingest.py`` starts it), so that it never shares a core's event
loop with the server it measures::

    python bench/loadgen.py --port 2575 --connections 8 --seconds 5
    python bench/loadgen.py --port 2575 --rate 1000 --seconds 5   # paced: latency at a steady load

Closed loop (default): every connection sends as fast as ACKs come back; the result is the
server's throughput. Paced (``--rate R``): the connections together send R messages a second
on a fixed schedule, and the result is the ACK latency distribution at that load. Messages are
the ``samples/orm_o01_v231.hl7`` order with a unique MSH-10 each (so no duplicate detection)
and, unless ``--same-order``, a new order each: its placer and filler numbers, accession,
requested procedure and step IDs and Study Instance UID made unique, so that the broker creates
a worklist item per message as for real new orders (with ``--same-order`` every message is
the same order sent again, which the broker recognises as unchanged).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "orm_o01_v231.hl7"
START_BLOCK = b"\x0b"
END = b"\x1c\r"


#: The sample's order identifiers, replaced per message so that each is a new order.
ORDER_TOKENS = (
    b"PL20261102001",
    b"FL20261102001",
    b"ACC26110001",
    b"RP26110001",
    b"SPS26110001",
    b"20261102083015.1002341",
)


def new_order(tail: bytes, unique: int) -> bytes:
    """``tail`` with the order's identifiers made unique (lengths within their VRs: an
    accession is SH, 16 characters; a UID component has no leading zero)."""
    for token in ORDER_TOKENS:
        if token[:1].isdigit():  # the Study Instance UID's tail: one more component
            new = token + b"." + str(unique + 1).encode()
        else:  # PL/FL/ACC/RP/SPS + digits: keep the letters, new digits
            letters = token.rstrip(b"0123456789")
            new = letters + str(unique).zfill(10).encode()
        tail = tail.replace(token, new)
    return tail


def message_template() -> tuple[bytes, bytes]:
    """(everything before MSH-10, everything after it) of the sample, segments ending in CR."""
    raw = SAMPLE.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    msh, _, rest = raw.partition(b"\r")
    fields = msh.split(b"|")
    head = START_BLOCK + b"|".join(fields[:9]) + b"|"
    tail = b"|" + b"|".join(fields[10:]) + b"\r" + rest.rstrip(b"\r") + b"\r" + END
    return head, tail


class _Client(asyncio.Protocol):
    """One MLLP connection: ``await roundtrip(frame)`` returns the answer's bytes."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(END)
        if end >= 0 and self.waiter is not None and not self.waiter.done():
            answer = bytes(self.buf[:end])
            del self.buf[: end + len(END)]
            self.waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("server closed the connection"))
        if not self.lost.done():
            self.lost.set_result(None)

    def roundtrip(self, data: bytes) -> asyncio.Future[bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


async def run(
    host: str,
    port: int,
    connections: int,
    seconds: float,
    warmup: float,
    rate: float,
    prefix: str,
    check_id: bool = True,
    same_order: bool = False,
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    head, tail = message_template()
    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(_Client, host, port)
        clients.append(client)
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    latencies: list[float] = []
    counts = {"sent": 0, "not_aa": 0, "wrong_id": 0}

    async def drive(index: int, client: _Client) -> None:
        interval = connections / rate if rate > 0 else 0.0
        next_send = start + index * interval / connections
        n = 0
        while True:
            now = time.perf_counter()
            if rate > 0:
                if next_send > now:
                    await asyncio.sleep(next_send - now)
                next_send += interval
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            cid = f"{prefix}{index:02d}{n:08d}".encode()
            n += 1
            body = tail if same_order else new_order(tail, index * 100_000_000 + n)
            answer = await client.roundtrip(head + cid + body)
            done = time.perf_counter()
            if sent >= measure_from:
                counts["sent"] += 1
                latencies.append(done - sent)
                if b"MSA|AA|" not in answer and b"MSA|CA|" not in answer:
                    counts["not_aa"] += 1
                    if counts["not_aa"] == 1:
                        print(f"first answer not AA: {answer[:300]!r}", file=sys.stderr)
                elif check_id and b"|" + cid + b"\r" not in answer:
                    counts["wrong_id"] += 1

    try:
        await asyncio.gather(*(drive(i, c) for i, c in enumerate(clients)))
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.close()
        await asyncio.gather(*(c.lost for c in clients))
    latencies.sort()
    count = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(count - 1, int(p * count))] * 1000 if count else float("nan")

    return {
        "connections": connections,
        "seconds": seconds,
        "paced_rate": rate,
        "messages": count,
        "rate": count / seconds,
        "not_aa": counts["not_aa"],
        "wrong_id": counts["wrong_id"],
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if count else float("nan"),
        "message_bytes": len(head) + len(tail) + len(prefix) + 10 - 3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=0.0, help="total msg/s (0: closed loop)")
    parser.add_argument("--prefix", default=f"L{os.getpid() % 10000:04d}")
    parser.add_argument(
        "--no-check-id", action="store_true", help="the server answers a fixed MSA-2 (bare)"
    )
    parser.add_argument(
        "--same-order", action="store_true", help="send one order again and again (resends)"
    )
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    coro = run(
        args.host,
        args.port,
        args.connections,
        args.seconds,
        args.warmup,
        args.rate,
        args.prefix,
        check_id=not args.no_check_id,
        same_order=args.same_order,
    )
    if args.no_uvloop:
        result = asyncio.run(coro)
    else:
        import uvloop

        result = uvloop.run(coro)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
