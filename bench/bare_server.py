"""The ceiling of the ingest benchmark: an asyncio MLLP server that answers every frame with one
fixed ACK and persists nothing (no decoding, no parsing, no store)::

    python bench/bare_server.py --port 2575

Same event loop as the broker (uvloop) and TCP_NODELAY on accepted sockets, so the difference to
the broker is the broker's work, not the plumbing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

END = b"\x1c\r"
ACK = (
    b"\x0bMSH|^~\\&|BROKER|HOSP|RIS|HOSP|20261102083015||ACK^O01^ACK|ACK1|P|2.3.1\r"
    b"MSA|AA|BARE\r\x1c\r"
)


class Bare(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(END)) >= 0:
            del self.buf[: end + len(END)]
            assert self.transport is not None
            self.transport.write(ACK)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(Bare, host, port, reuse_address=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    if args.no_uvloop:
        asyncio.run(serve(args.host, args.port))
    else:
        import uvloop

        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
