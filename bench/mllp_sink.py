"""The receiver of the delivery benchmark: an MLLP server answering AA at once, checking order.

Every frame is answered right away with an ACK whose MSA-2 is the frame's MSH-10 (what the
broker's MLLP destination checks), on uvloop with TCP_NODELAY on accepted sockets, so that the
receiver costs as little as possible and the benchmark measures the sender. It persists nothing.

MSH-10 ends in an 8-digit sequence number (``bench/bench_delivery.py`` writes ``<tag><seq>``):
per tag, the sink counts every frame, the distinct sequence numbers, the duplicates (a number
seen before: a resend, allowed by at-least-once delivery) and the order violations (a number
arriving for the first time that is not the highest so far plus one, i.e. something arrived
early or was skipped). It prints one JSON line when listening and one JSON report at SIGTERM::

    python bench/mllp_sink.py --port 2576
    {"listening": 2576, "t": 1790000000.123}
    ... (kill -TERM) ...
    {"frames": 20000, "tags": {"SQ": {"distinct": 20000, "duplicates": 0, ...}}, ...}

Times are ``time.time()`` (comparable across processes on one machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass

END = b"\x1c\r"
SEQ_DIGITS = 8


@dataclass(slots=True)
class Lane:
    """What arrived for one tag."""

    distinct: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    highest: int = -1
    first_out_of_order: str = ""


@dataclass(slots=True)
class Totals:
    frames: int = 0
    not_hl7: int = 0
    connections: int = 0
    first_t: float = 0.0
    last_t: float = 0.0


class Sink:
    """Shared state of every connection."""

    def __init__(self) -> None:
        self.totals = Totals()
        self.lanes: dict[str, Lane] = {}
        self.seen: dict[str, set[int]] = {}

    def record(self, control_id: str) -> None:
        tag, digits = control_id[:-SEQ_DIGITS], control_id[-SEQ_DIGITS:]
        if not digits.isdigit():
            self.totals.not_hl7 += 1
            return
        seq = int(digits)
        lane = self.lanes.get(tag)
        if lane is None:
            lane = self.lanes[tag] = Lane()
            self.seen[tag] = set()
        seen = self.seen[tag]
        if seq in seen:
            lane.duplicates += 1
            return
        seen.add(seq)
        lane.distinct += 1
        # The first message of a tag may be any number (a resumed run); after it, every new
        # number must be the next one.
        if lane.highest >= 0 and seq != lane.highest + 1:
            lane.out_of_order += 1
            if not lane.first_out_of_order:
                lane.first_out_of_order = f"{seq} after {lane.highest}"
        lane.highest = max(lane.highest, seq)

    def report(self) -> dict[str, object]:
        return {**asdict(self.totals), "tags": {t: asdict(lane) for t, lane in self.lanes.items()}}


class Connection(asyncio.Protocol):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sink.totals.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        answers = []
        while (end := self.buf.find(END)) >= 0:
            start = self.buf.find(b"\x0b", 0, end)
            payload = bytes(self.buf[start + 1 : end]) if start >= 0 else b""
            del self.buf[: end + len(END)]
            answers.append(self._answer(payload))
        if answers:
            assert self.transport is not None
            self.transport.write(b"".join(answers))

    def _answer(self, payload: bytes) -> bytes:
        totals = self.sink.totals
        now = time.time()
        totals.frames += 1
        totals.first_t = totals.first_t or now
        totals.last_t = now
        msh = payload.split(b"\r", 1)[0]
        if not msh.startswith(b"MSH") or len(msh) < 4:
            totals.not_hl7 += 1
            return b"\x0bthis sink only takes HL7 v2\x1c\r"
        sep = msh[3:4]
        fields = msh.split(sep)
        control_id = fields[9] if len(fields) > 9 else b""
        self.sink.record(control_id.decode("latin-1"))
        return (
            b"\x0bMSH|^~\\&|SINK|BENCH|BROKER|BENCH|20260101120000||ACK^O01|A"
            + control_id
            + b"|P|2.3.1\rMSA|AA|"
            + control_id
            + b"\r\x1c\r"
        )


async def serve(host: str, port: int) -> Sink:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sink = Sink()
    server = await loop.create_server(lambda: Connection(sink), host, port, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"listening": bound, "t": time.time()}), flush=True)
    async with server:
        await stop.wait()
    return sink


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    if args.no_uvloop:
        sink = asyncio.run(serve(args.host, args.port))
    else:
        import uvloop

        sink = uvloop.run(serve(args.host, args.port))
    print(json.dumps(sink.report()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
