"""MLLP framing: frames split across reads, several per read, oversized and stray bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.hl7.mllp import END, START_BLOCK, Frame, FrameDecoder, Garbage, OversizedFrame, frame

payloads = st.lists(
    st.binary(min_size=1, max_size=300)
    .map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
    .filter(bool),
    min_size=1,
    max_size=6,
)


@given(payloads, st.data())
def test_frames_survive_any_split(messages: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(m) for m in messages)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=20)))
    decoder = FrameDecoder()
    got: list[bytes] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        for event in decoder.feed(stream[last:cut]):
            assert isinstance(event, Frame)
            got.append(event.payload)
        last = cut
    assert got == messages
    assert decoder.buffered == 0


def test_several_frames_in_one_read() -> None:
    decoder = FrameDecoder()
    events = decoder.feed(frame(b"MSH|a") + frame(b"MSH|b") + START_BLOCK + b"MSH|c")
    assert events == [Frame(b"MSH|a"), Frame(b"MSH|b")]
    assert decoder.feed(END) == [Frame(b"MSH|c")]


def test_oversized_frame_is_reported_once_and_skipped() -> None:
    decoder = FrameDecoder(max_frame=100)
    big = frame(b"MSH|^~\\&|" + b"x" * 1000)
    events = []
    for i in range(0, len(big), 64):  # arrives in many reads
        events += decoder.feed(big[i : i + 64])
    events += decoder.feed(frame(b"MSH|next"))
    assert isinstance(events[0], OversizedFrame)
    assert events[0].head.startswith(b"MSH|^~\\&|")
    assert events[1:] == [Frame(b"MSH|next")]


def test_oversized_frame_in_one_read() -> None:
    decoder = FrameDecoder(max_frame=10)
    events = decoder.feed(frame(b"y" * 50) + frame(b"ok"))
    assert isinstance(events[0], OversizedFrame)
    assert events[1] == Frame(b"ok")


def test_end_block_split_between_fs_and_cr_while_dropping() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert isinstance(decoder.feed(START_BLOCK + b"z" * 20)[0], OversizedFrame)
    assert decoder.feed(b"zz\x1c") == []
    assert decoder.feed(b"\r" + frame(b"ok")) == [Frame(b"ok")]


def test_stray_bytes_are_reported_but_lone_cr_is_not() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\r\n") == []
    assert decoder.feed(b"junk" + frame(b"m")) == [Garbage(4), Frame(b"m")]
    assert decoder.feed(b"more junk") == [Garbage(9)]


@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    decoder = FrameDecoder(max_frame=256)
    decoder.feed(data)
    decoder.feed(frame(b"after"))
