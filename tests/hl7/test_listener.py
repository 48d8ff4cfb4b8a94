"""The MLLP listener in-process: order per connection, limits, TLS, allow-list, TCP_NODELAY."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from broker.errors import ProtocolError
from broker.hl7.client import MllpClient
from broker.hl7.listener import ListenerSettings, MllpListener
from broker.hl7.mllp import END, START_BLOCK, FrameDecoder, frame
from broker.net import tcp_nodelay_is_set


class Echo:
    """Answers each frame with ``ACK:<payload>`` after an optional delay."""

    def __init__(self, delay: Callable[[bytes], float] = lambda p: 0.0) -> None:
        self.delay = delay
        self.seen: list[bytes] = []

    async def handle(self, payload: bytes, peer: str, listener: str) -> bytes | None:
        self.seen.append(payload)
        await asyncio.sleep(self.delay(payload))
        return b"ACK:" + payload

    def reject_oversized(self, head: bytes, size: int, peer: str, listener: str) -> bytes | None:
        return b"AR:" + head[:8]


Start = Callable[..., Awaitable[MllpListener]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[MllpListener] = []

    async def factory(handler: Echo | None = None, **options: object) -> MllpListener:
        settings = ListenerSettings(name="t", host="127.0.0.1", port=0, **options)  # type: ignore[arg-type]
        listener = MllpListener(settings, handler or Echo())
        await listener.start()
        started.append(listener)
        return listener

    yield factory
    for listener in started:
        await listener.stop(grace_s=1)


async def read_frames(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    decoder = FrameDecoder()
    out: list[bytes] = []
    while len(out) < count:
        data = await asyncio.wait_for(reader.read(65536), 5)
        if not data:
            break
        out += [e.payload for e in decoder.feed(data)]  # type: ignore[union-attr]
    return out


async def test_pipelined_frames_are_answered_in_order(start: Start) -> None:
    # The first message is slow: answers must still come back in sending order.
    listener = await start(Echo(delay=lambda p: 0.05 if p == b"m0" else 0.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"".join(frame(f"m{i}".encode()) for i in range(20)))
    answers = await read_frames(reader, 20)
    assert answers == [f"ACK:m{i}".encode() for i in range(20)]
    writer.close()
    await writer.wait_closed()


async def test_frame_split_byte_by_byte(start: Start) -> None:
    listener = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    for byte in frame(b"MSH|slow"):
        writer.write(bytes([byte]))
        await writer.drain()
    assert await read_frames(reader, 1) == [b"ACK:MSH|slow"]
    writer.close()
    await writer.wait_closed()


async def test_oversized_frame_gets_ar_and_close_others_unaffected(start: Start) -> None:
    listener = await start(max_frame=1024)
    async with MllpClient("127.0.0.1", listener.port) as other:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(START_BLOCK + b"MSH|big|" + b"x" * 5000 + END)
        assert await read_frames(reader, 1) == [b"AR:MSH|big|"]
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the listener
        writer.close()
        await writer.wait_closed()
        assert await other.send(b"still") == b"ACK:still"


async def test_every_accepted_socket_has_tcp_nodelay(start: Start) -> None:
    listener = await start()
    async with MllpClient("127.0.0.1", listener.port) as client:
        await client.send(b"x")
        (conn,) = listener.connections
        assert conn.transport is not None
        assert tcp_nodelay_is_set(conn.transport.get_extra_info("socket"))


async def test_max_connections_refuses_the_excess(start: Start) -> None:
    listener = await start(max_connections=2)
    a = MllpClient("127.0.0.1", listener.port)
    b = MllpClient("127.0.0.1", listener.port)
    c = MllpClient("127.0.0.1", listener.port, ack_timeout_s=2)
    try:
        assert await a.send(b"1") == b"ACK:1"
        assert await b.send(b"2") == b"ACK:2"
        with pytest.raises(ProtocolError):
            await c.send(b"3")
        assert await a.send(b"4") == b"ACK:4"
    finally:
        for client in (a, b, c):
            await client.close()


async def test_allowed_peers_refuses_others(start: Start) -> None:
    listener = await start(allowed_peers=("10.99.0.0/16",))
    async with MllpClient("127.0.0.1", listener.port, ack_timeout_s=2) as client:
        with pytest.raises(ProtocolError):
            await client.send(b"x")
    allowed = await start(allowed_peers=("127.0.0.0/8",))
    async with MllpClient("127.0.0.1", allowed.port) as client:
        assert await client.send(b"x") == b"ACK:x"


async def test_idle_connection_is_closed(start: Start) -> None:
    listener = await start(idle_timeout_s=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()


async def test_shutdown_finishes_in_flight_messages(start: Start) -> None:
    handler = Echo(delay=lambda p: 0.3)
    listener = await start(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(frame(b"slow"))
    await writer.drain()
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(listener.stop(grace_s=5))
    assert await read_frames(reader, 1) == [b"ACK:slow"]
    await stopping
    writer.close()
    await writer.wait_closed()


def _make_cert(directory: Path, name: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    if ca is None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", key, "-out", cert,
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )
    else:
        csr = directory / f"{name}.csr"
        subprocess.run(
            ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", key, "-out", csr], check=True, capture_output=True,
        )
        subprocess.run(
            ["openssl", "x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0],
             "-CAcreateserial", "-days", "2", "-out", cert], check=True, capture_output=True,
        )
    return key, cert


async def test_tls_with_client_certificates(start: Start, tmp_path: Path) -> None:
    ca_key, ca_cert = _make_cert(tmp_path, "ca")
    server_key, server_cert = _make_cert(tmp_path, "server")
    client_key, client_cert = _make_cert(tmp_path, "client", ca=(ca_key, ca_cert))

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(server_cert, server_key)
    server_ctx.load_verify_locations(ca_cert)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    listener = await start(ssl_context=server_ctx)

    client_ctx = ssl.create_default_context(cafile=str(server_cert))
    client_ctx.load_cert_chain(client_cert, client_key)
    async with MllpClient("127.0.0.1", listener.port, ssl_context=client_ctx) as client:
        assert await client.send(b"secure") == b"ACK:secure"

    anonymous = ssl.create_default_context(cafile=str(server_cert))
    client = MllpClient("127.0.0.1", listener.port, ssl_context=anonymous, ack_timeout_s=3)
    with pytest.raises((ProtocolError, ssl.SSLError, ConnectionError)):
        await client.send(b"no cert")
    await client.close()
