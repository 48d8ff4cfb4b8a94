"""The ceiling of the ingest benchmark: an asyncio MLLP server that answers every frame with one
fixed ACK and persists nothing (no decoding, no parsing, no store)::

    python bench/bare_server.py --port 2575
    python bench/bare_server.py --port 2575 --durable /tmp/floor.db

``--durable DB``: the durable floor instead. Each frame's bytes are inserted into one SQLite
table through the broker's own ``SqliteDatabase`` (WAL, synchronous=FULL, the writer thread's
group commit) and the fixed ACK leaves after the commit: the fsync-bound floor of any server
that acknowledges only what is on disk, without parsing, routing or a worklist.

Same event loop as the broker (uvloop) and TCP_NODELAY on accepted sockets, so the difference to
the broker is the broker's work, not the plumbing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from pathlib import Path
from typing import Any

END = b"\x1c\r"
ACK = (
    b"\x0bMSH|^~\\&|BROKER|HOSP|RIS|HOSP|20261102083015||ACK^O01^ACK|ACK1|P|2.3.1\r"
    b"MSA|AA|BARE\r\x1c\r"
)


class Bare(asyncio.Protocol):
    def __init__(self, db: Any = None) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.db = db
        self.pending: set[asyncio.Future[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(END)) >= 0:
            frame = bytes(self.buf[:end])
            del self.buf[: end + len(END)]
            assert self.transport is not None
            if self.db is None:
                self.transport.write(ACK)
            else:
                task = asyncio.ensure_future(self._durable(frame))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)

    async def _durable(self, frame: bytes) -> None:
        # acks leave in commit order, which is arrival order per connection
        await self.db.write(lambda c: c.execute("INSERT INTO f (raw) VALUES (?)", (frame,)))
        assert self.transport is not None
        self.transport.write(ACK)


async def serve(host: str, port: int, durable: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    db = None
    if durable:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from broker.storage.sqlite import Schema, SqliteDatabase

        schema = Schema(
            "floor", ("CREATE TABLE IF NOT EXISTS f (id INTEGER PRIMARY KEY, raw BLOB)",)
        )
        db = SqliteDatabase(durable, schemas=[schema])
        db.open()
    server = await loop.create_server(lambda: Bare(db), host, port, reuse_address=True)
    try:
        async with server:
            await stop.wait()
    finally:
        if db is not None:
            db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--durable", metavar="DB", help="commit each frame to SQLite first")
    args = parser.parse_args()
    if args.no_uvloop:
        asyncio.run(serve(args.host, args.port, args.durable))
    else:
        import uvloop

        uvloop.run(serve(args.host, args.port, args.durable))


if __name__ == "__main__":
    main()
