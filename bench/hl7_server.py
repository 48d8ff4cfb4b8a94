"""The peer of the ingest benchmark: python-hl7's own asyncio MLLP server
(``hl7.mllp.start_hl7_server``) answering each message with ``message.create_ack()``::

    python bench/hl7_server.py --port 2575

Its reader parses every message with ``hl7.parse`` (the full parse the broker avoids on the hot
path) and persists nothing. Same event loop as the broker (uvloop) and TCP_NODELAY on accepted
sockets, so the comparison is about the HL7 work, not the plumbing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket

import hl7.mllp


async def handle(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            message = await reader.readmessage()
            writer.writemessage(message.create_ack())
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await hl7.mllp.start_hl7_server(handle, host, port, reuse_address=True)
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
