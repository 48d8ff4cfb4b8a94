"""A scriptable MLLP receiver for delivery tests (a real asyncio server on loopback).

It can go down and come back on the same port, answer AA/AE/AR, answer slowly, close the
connection without answering (mid-message), answer with a foreign control ID or garbage.
``script(message, seen_before)`` picks the behaviour for each received message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from broker.hl7.header import parse_header
from broker.hl7.mllp import Frame, FrameDecoder, frame


@dataclass(frozen=True)
class Answer:
    """How to answer one message."""

    code: str = "AA"  # MSA-1; "" to close the connection without answering
    delay_s: float = 0.0
    control_id: str | None = None  # MSA-2 (default: the message's MSH-10)
    text: str = ""  # MSA-3
    garbage: bool = False  # answer a frame that is not HL7


AA = Answer()
CLOSE = Answer(code="")

Script = Callable[[bytes, int], Answer]  # (message, how many times seen before) -> answer


def control_id(message: bytes) -> str:
    return parse_header(message.decode("latin-1")).control_id


def ack(message: bytes, answer: Answer) -> bytes:
    cid = answer.control_id if answer.control_id is not None else control_id(message)
    text = f"|{answer.text}" if answer.text else ""
    return (
        f"MSH|^~\\&|PACS|RAD|BROKER|RAD|20260101120000||ACK^O01|A{cid}|P|2.5\r"
        f"MSA|{answer.code}|{cid}{text}\r"
    ).encode()


class Receiver:
    """``async with Receiver() as rx: ... rx.port``; ``await rx.stop()``/``start()`` for an
    outage. ``received`` lists every message that arrived (resends included), ``accepted``
    the ones answered AA, both in arrival order."""

    def __init__(
        self, script: Script | None = None, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.script: Script = script or (lambda message, seen: AA)
        self.ssl_context = ssl_context
        self.port = 0
        self.received: list[bytes] = []
        self.accepted: list[bytes] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=self.ssl_context, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Go down: stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._handlers):
                task.cancel()
            for task in list(self._handlers):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def control_ids(self, accepted_only: bool = True) -> list[str]:
        return [control_id(m) for m in (self.accepted if accepted_only else self.received)]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        decoder = FrameDecoder()
        try:
            while data := await reader.read(65536):
                for event in decoder.feed(data):
                    if not isinstance(event, Frame):
                        continue
                    message = event.payload
                    seen = self.received.count(message)
                    self.received.append(message)
                    answer = self.script(message, seen)
                    if answer.delay_s:
                        await asyncio.sleep(answer.delay_s)
                    if not answer.code:
                        return  # close without answering
                    if answer.garbage:
                        writer.write(frame(b"this is not HL7"))
                    else:
                        writer.write(frame(ack(message, answer)))
                        if answer.code == "AA":
                            self.accepted.append(message)
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
