"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, HL7 v2.5.1 Appendix C): ``<VT> msg <FS><CR>``.

A sans-I/O decoder: feed it whatever a read returned, take out complete frames. Correct when
one frame arrives in many reads and when several frames arrive in one read. An oversized frame
is reported once and skipped up to its end block, so the stream can go on (python-hl7's
``readblock`` habit).
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
END = END_BLOCK + CARRIAGE_RETURN

#: Largest frame accepted by default; larger frames are answered AR and the connection closed.
DEFAULT_MAX_FRAME = 1024 * 1024


def frame(payload: bytes) -> bytes:
    """Wrap one encoded HL7 message in MLLP start and end blocks."""
    return START_BLOCK + payload + END


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame's payload (between VT and FS CR)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame exceeded the limit; ``size`` is how many bytes had arrived when it was cut."""

    size: int
    head: bytes  # the first bytes, so an AR can still echo MSH-10 when it is there


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes outside any frame (before a start block); ``size`` bytes were discarded."""

    size: int


Event = Frame | OversizedFrame | Garbage

#: How many leading bytes of an oversized frame are kept to build its answer.
_HEAD_KEEP = 4096


class FrameDecoder:
    """Incremental MLLP frame decoder."""

    __slots__ = ("_buf", "_dropped", "_dropping", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._dropping = False  # inside an oversized frame, discarding to its end
        self._dropped = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Add received bytes and return the events they complete, in order."""
        self._buf += data
        events: list[Event] = []
        buf = self._buf
        while buf:
            if self._dropping:
                end = buf.find(END)
                if end < 0:
                    # Keep a possible FS at the very end: its CR may come in the next read.
                    keep = 1 if buf[-1:] == END_BLOCK else 0
                    self._dropped += len(buf) - keep
                    del buf[: len(buf) - keep]
                    break
                self._dropped += end
                del buf[: end + len(END)]
                self._dropping = False
                continue
            start = buf.find(START_BLOCK)
            if start < 0:
                if bytes(buf).strip(b"\r\n \t"):
                    events.append(Garbage(len(buf)))
                buf.clear()
                break
            if start > 0:
                # Stray bytes between frames (a lone CR after FS is common): drop silently
                # when they are only whitespace, report otherwise.
                junk = bytes(buf[:start])
                if junk.strip(b"\r\n \t"):
                    events.append(Garbage(start))
                del buf[:start]
            end = buf.find(END, 1)
            if end < 0:
                if len(buf) - 1 > self.max_frame:
                    events.append(OversizedFrame(len(buf) - 1, bytes(buf[1 : 1 + _HEAD_KEEP])))
                    self._dropping = True
                    self._dropped = len(buf)
                    # keep a trailing FS in case its CR is next
                    keep = 1 if buf[-1:] == END_BLOCK else 0
                    del buf[: len(buf) - keep]
                break
            if end - 1 > self.max_frame:
                events.append(OversizedFrame(end - 1, bytes(buf[1 : 1 + _HEAD_KEEP])))
            else:
                events.append(Frame(bytes(buf[1:end])))
            del buf[: end + len(END)]
        return events
