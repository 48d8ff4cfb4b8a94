"""An asyncio MLLP client: send a message, wait for its answer (``broker send``, delivery)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from types import TracebackType

from broker.errors import ProtocolError
from broker.hl7.mllp import DEFAULT_MAX_FRAME, Frame, FrameDecoder, OversizedFrame, frame
from broker.net import set_tcp_nodelay

DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_ACK_TIMEOUT_S = 30.0


class MllpClient:
    """One persistent MLLP connection.

    ``async with MllpClient(host, port) as client: ack = await client.send(message)``
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
        max_frame: int = DEFAULT_MAX_FRAME,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self.ssl_context = ssl_context
        self._decoder = FrameDecoder(max_frame)
        self._pending: list[bytes] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.ssl_context),
            self.connect_timeout_s,
        )
        set_tcp_nodelay(writer.get_extra_info("socket"))  # ACK waits stall ~40 ms otherwise
        self._reader, self._writer = reader, writer

    async def send(self, payload: bytes) -> bytes:
        """Send one message and return the payload of the answer frame.

        Raises :class:`ProtocolError` when the peer closes or answers with no frame in
        time, ``TimeoutError`` on the ACK timeout.
        """
        if self._writer is None:
            await self.connect()
        assert self._writer is not None
        try:
            self._writer.write(frame(payload))
            await self._writer.drain()
            return await asyncio.wait_for(self._read_frame(), self.ack_timeout_s)
        except ConnectionError as exc:
            await self.close()
            raise ProtocolError(f"{self.host}:{self.port}: connection lost: {exc}") from exc

    async def _read_frame(self) -> bytes:
        assert self._reader is not None
        while not self._pending:
            data = await self._reader.read(65536)
            if not data:
                await self.close()
                raise ProtocolError(
                    f"{self.host}:{self.port} closed the connection before answering"
                )
            for event in self._decoder.feed(data):
                if isinstance(event, Frame):
                    self._pending.append(event.payload)
                elif isinstance(event, OversizedFrame):
                    raise ProtocolError(f"{self.host}:{self.port} answered an oversized frame")
        return self._pending.pop(0)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await self._writer.wait_closed()
            self._writer = None
            self._reader = None

    async def __aenter__(self) -> MllpClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
