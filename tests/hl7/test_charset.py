"""Tests for broker.hl7.charset: MSH-18 (HL7 table 0211) aware decoding of frames."""

from __future__ import annotations

import pytest

from broker.hl7.charset import CharsetError, DecodedFrame, decode_frame, encode_text, python_codec


def frame(msh18: str | None, body: str, encoding: str, terminator: str = "\r") -> bytes:
    """An ADT^A08 whose PID-5 is ``body``, with MSH-18 set (or absent) and encoded as asked."""
    fields = ["MSH", "^~\\&", "RIS", "RAD", "BROKER", "HOSP", "20240611083000", "",
              "ADT^A08", "MSG1", "P", "2.5"]
    if msh18 is not None:
        fields += ["", "", "", "", "", msh18]
    segments = ["|".join(fields), f"PID|1||123^^^HOSP^MR||{body}^HANS"]
    return (terminator.join(segments) + terminator).encode(encoding)


@pytest.mark.parametrize(
    ("msh18", "encoding"),
    [
        ("8859/1", "latin-1"),
        ("UNICODE UTF-8", "utf-8"),
        ("UTF-8", "utf-8"),
        ("ISO IR100", "latin-1"),
        ("ISO_IR 100", "latin-1"),
        ("8859/15", "iso8859_15"),
        ("ISO IR192", "utf-8"),
    ],
)
def test_mueller_decodes_per_msh18(msh18: str, encoding: str) -> None:
    decoded = decode_frame(frame(msh18, "MÜLLER", encoding))
    assert isinstance(decoded, DecodedFrame)
    assert "|MÜLLER^HANS" in decoded.text
    assert decoded.charset == msh18


def test_cyrillic_and_greek_single_byte_sets() -> None:
    assert "ИВАНОВ" in decode_frame(frame("8859/5", "ИВАНОВ", "iso8859_5")).text
    assert "ΠΑΠΑΣ" in decode_frame(frame("8859/7", "ΠΑΠΑΣ", "iso8859_7")).text


def test_msh18_first_repetition_is_the_default_set() -> None:
    raw = frame("8859/1~ISO IR87", "MÜLLER", "latin-1")
    decoded = decode_frame(raw)
    assert decoded.charset == "8859/1"
    assert "MÜLLER" in decoded.text


def test_msh18_is_read_with_lf_terminators() -> None:
    assert "MÜLLER" in decode_frame(frame("8859/1", "MÜLLER", "latin-1", "\n")).text


def test_absent_msh18_ascii() -> None:
    decoded = decode_frame(frame(None, "MUELLER", "ascii"))
    assert decoded == DecodedFrame(decoded.text, "")
    assert "MUELLER" in decoded.text


def test_absent_msh18_tolerates_utf8() -> None:
    decoded = decode_frame(frame(None, "MÜLLER", "utf-8"))
    assert "MÜLLER" in decoded.text
    assert decoded.charset == ""


def test_absent_msh18_does_not_assume_latin1() -> None:
    raw = frame(None, "MÜLLER", "latin-1")
    with pytest.raises(CharsetError) as info:
        decode_frame(raw)
    message = str(info.value)
    assert "MSH-18" in message
    offset = raw.index("Ü".encode("latin-1"))
    assert f"offset {offset}" in message
    assert "LLER" not in message  # no message content
    assert info.value.hl7_location == "MSH^1^18"


def test_configured_default_applies_when_msh18_absent() -> None:
    assert "MÜLLER" in decode_frame(frame(None, "MÜLLER", "latin-1"), default="8859/1").text


def test_utf8_bom_is_dropped() -> None:
    decoded = decode_frame(b"\xef\xbb\xbf" + frame(None, "MÜLLER", "utf-8"))
    assert decoded.text.startswith("MSH|")


@pytest.mark.parametrize(
    ("msh18", "encoding"),
    [("UNICODE UTF-8", "latin-1"), ("ASCII", "latin-1"), ("ASCII", "utf-8")],
)
def test_wrong_msh18_for_the_bytes(msh18: str, encoding: str) -> None:
    raw = frame(msh18, "MÜLLER", encoding)
    with pytest.raises(CharsetError) as info:
        decode_frame(raw)
    message = str(info.value)
    assert msh18 in message
    offset = raw.index("Ü".encode(encoding))
    assert f"offset {offset}" in message
    assert "LLER" not in message


@pytest.mark.parametrize("msh18", ["KLINGON", "UNICODE UTF-16", "CNS 11643-1992"])
def test_unknown_or_unsupported_msh18(msh18: str) -> None:
    with pytest.raises(CharsetError, match="MSH-18"):
        decode_frame(frame(msh18, "X", "ascii"))


def test_python_codec_names() -> None:
    assert python_codec("8859/1") == "iso8859_1"
    assert python_codec("8859/9") == "iso8859_9"
    assert python_codec("ascii") == "ascii"
    assert python_codec("GB 18030-2000") == "gb18030"
    assert python_codec("ISO IR87") == "iso2022_jp"


def test_not_an_hl7_frame_still_decodes() -> None:
    assert decode_frame(b"hello").text == "hello"
    assert decode_frame(b"MSH").text == "MSH"


def test_encode_text_round_trips() -> None:
    assert encode_text("MÜLLER", "8859/1") == b"M\xdcLLER"
    assert encode_text("MÜLLER", "UNICODE UTF-8") == "MÜLLER".encode()
    assert encode_text("MUELLER", "") == b"MUELLER"
    assert encode_text("MÜLLER", "") == "MÜLLER".encode()  # default ASCII, widened to UTF-8
    with pytest.raises(CharsetError, match="offset 1"):
        encode_text("MÜLLER", "ASCII")
    with pytest.raises(CharsetError):
        encode_text("x", "KLINGON")
