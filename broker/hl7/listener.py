"""The asyncio MLLP listener: frames in, answers out, nothing about routes.

Each connection answers its frames in the order they arrived (one handler call at a time per
connection, as MLLP senders expect); connections are independent, so a slow or broken peer
never holds up another. The listener enforces the limits (frame size, connections, idle
time, allowed peers) and hands each complete frame to a :class:`FrameHandler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from broker.hl7.mllp import DEFAULT_MAX_FRAME, Frame, FrameDecoder, Garbage, OversizedFrame, frame
from broker.net import set_tcp_nodelay

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_IDLE_TIMEOUT_S = 300.0
#: Frames waiting on one connection before we stop reading from it (backpressure).
MAX_PENDING_FRAMES = 64
#: How long shutdown waits for in-flight messages before closing connections.
DEFAULT_SHUTDOWN_GRACE_S = 10.0


class FrameHandler(Protocol):
    """What the listener calls; the app binds it to the ingest pipeline."""

    def handle(self, payload: bytes, peer: str, listener: str) -> Awaitable[bytes | None]:
        """Process one frame's payload; return the encoded answer, or None to send nothing."""
        ...

    def reject_oversized(self, head: bytes, size: int, peer: str, listener: str) -> bytes | None:
        """Answer (AR) for a frame over the size limit; the connection is closed after it."""
        ...


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """Limits and options of one MLLP listener (each with a finite default)."""

    name: str = "mllp"
    host: str = "0.0.0.0"
    port: int = 2575
    max_frame: int = DEFAULT_MAX_FRAME
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    allowed_peers: tuple[str, ...] = ()  # CIDR or addresses; empty: everybody
    ssl_context: ssl.SSLContext | None = None


class _Connection(asyncio.Protocol):
    def __init__(self, listener: MllpListener) -> None:
        self.listener = listener
        self.decoder = FrameDecoder(listener.settings.max_frame)
        self.frames: asyncio.Queue[Frame | OversizedFrame | None] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.worker: asyncio.Task[None] | None = None
        self.paused = False
        self.closing = False
        self.idle_handle: asyncio.TimerHandle | None = None
        self.busy = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = cast(asyncio.Transport, transport)
        set_tcp_nodelay(transport.get_extra_info("socket"))
        peername = transport.get_extra_info("peername")
        host = peername[0] if isinstance(peername, tuple) else str(peername)
        self.peer = f"{host}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        listener = self.listener
        if not listener.peer_allowed(host):
            log.warning("mllp %s: refused %s (not in allowed_peers)", listener.name, self.peer)
            self.transport.abort()
            return
        if len(listener.connections) >= listener.settings.max_connections:
            log.warning(
                "mllp %s: refused %s (max_connections=%d reached)",
                listener.name,
                self.peer,
                listener.settings.max_connections,
            )
            self.transport.abort()
            return
        listener.connections.add(self)
        self.worker = asyncio.get_running_loop().create_task(self._work())
        self._arm_idle()
        log.debug("mllp %s: connection from %s", listener.name, self.peer)

    def data_received(self, data: bytes) -> None:
        self._arm_idle()
        for event in self.decoder.feed(data):
            if isinstance(event, Garbage):
                log.info(
                    "mllp %s: %d bytes outside any frame from %s discarded",
                    self.listener.name,
                    event.size,
                    self.peer,
                )
            else:
                self.frames.put_nowait(event)
        if self.frames.qsize() >= MAX_PENDING_FRAMES and not self.paused and self.transport:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        # Finish answering what already arrived, then close.
        self.frames.put_nowait(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.idle_handle:
            self.idle_handle.cancel()
        self.listener.connections.discard(self)
        if self.worker and not self.busy:
            self.worker.cancel()
        else:
            self.frames.put_nowait(None)

    # -- work ---------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        if self.idle_handle:
            self.idle_handle.cancel()
        timeout = self.listener.settings.idle_timeout_s
        if timeout > 0:
            loop = asyncio.get_running_loop()
            self.idle_handle = loop.call_later(timeout, self._idle)

    def _idle(self) -> None:
        if self.busy or not self.frames.empty():
            self._arm_idle()
            return
        log.info("mllp %s: closing idle connection from %s", self.listener.name, self.peer)
        if self.transport:
            self.transport.close()

    async def _work(self) -> None:
        listener = self.listener
        handler = listener.handler
        while True:
            item = await self.frames.get()
            if item is None:
                break
            if self.paused and self.frames.qsize() < MAX_PENDING_FRAMES // 2 and self.transport:
                self.paused = False
                self.transport.resume_reading()
            self.busy = True
            try:
                if isinstance(item, OversizedFrame):
                    log.warning(
                        "mllp %s: frame of %d+ bytes from %s exceeds max_frame=%d; "
                        "answered AR and closing",
                        listener.name,
                        item.size,
                        self.peer,
                        listener.settings.max_frame,
                    )
                    answer = handler.reject_oversized(
                        item.head, item.size, self.peer, listener.name
                    )
                    self._send(answer)
                    if self.transport:
                        self.transport.close()
                    break
                try:
                    answer = await handler.handle(item.payload, self.peer, listener.name)
                except Exception:
                    # The pipeline answers every error itself; reaching here is a bug. Keep
                    # the connection and the listener alive, say nothing patient-related.
                    log.exception(
                        "mllp %s: handler failed for a frame from %s", listener.name, self.peer
                    )
                    answer = None
                self._send(answer)
            finally:
                self.busy = False
            if self.closing:
                break
        if self.transport and not self.transport.is_closing():
            self.transport.close()

    def _send(self, answer: bytes | None) -> None:
        if answer is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(answer))


class MllpListener:
    """One MLLP server socket; an async context manager."""

    def __init__(self, settings: ListenerSettings, handler: FrameHandler) -> None:
        self.settings = settings
        self.handler = handler
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._networks = tuple(
            ipaddress.ip_network(peer, strict=False) for peer in settings.allowed_peers
        )

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def sockets(self) -> Sequence[object]:
        return tuple(self._server.sockets) if self._server else ()

    @property
    def port(self) -> int:
        """The bound port (useful when configured with port 0)."""
        for sock in self.sockets:
            return int(sock.getsockname()[1])  # type: ignore[attr-defined]
        return self.settings.port

    def peer_allowed(self, host: str) -> bool:
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self._networks)

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            self.settings.host,
            self.settings.port,
            ssl=self.settings.ssl_context,
            reuse_address=True,
            backlog=1024,
        )
        for sock in self._server.sockets:
            set_tcp_nodelay(sock)
        log.info(
            "mllp %s: listening on %s:%d%s",
            self.name,
            self.settings.host,
            self.port,
            " (TLS)" if self.settings.ssl_context else "",
        )

    async def stop(self, grace_s: float = DEFAULT_SHUTDOWN_GRACE_S) -> None:
        """Stop accepting, let in-flight messages finish (bounded), close connections."""
        if self._server is None:
            return
        self._server.close()
        workers = [c.worker for c in self.connections if c.worker is not None]
        for conn in list(self.connections):
            # No new frames: answer what is queued, then close.
            conn.frames.put_nowait(None)
        if workers:
            _, pending = await asyncio.wait(workers, timeout=grace_s)
            for task in pending:
                task.cancel()
        for conn in list(self.connections):
            if conn.transport:
                conn.transport.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout=grace_s)
        self._server = None

    async def __aenter__(self) -> MllpListener:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
