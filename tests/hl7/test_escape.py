"""Tests for broker.hl7.escape: HL7 v2.5.1 §2.7 escape sequences."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from broker.hl7.escape import DEFAULT_SEPARATORS, Separators, escape, unescape

ODD = Separators("#", "$", "*", "@", "!")  # field, component, repetition, escape, subcomponent


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("A\\F\\B", "A|B"),
        ("A\\S\\B", "A^B"),
        ("A\\T\\B", "A&B"),
        ("A\\R\\B", "A~B"),
        ("A\\E\\B", "A\\B"),
        ("\\X41\\", "A"),
        ("\\X414243\\", "ABC"),
        ("\\x41\\", "\\x41\\"),  # only upper-case X is a hex escape
        ("CT THORAX\\T\\ABDOMEN", "CT THORAX&ABDOMEN"),
        ("\\F\\\\S\\\\T\\\\R\\\\E\\", "|^&~\\"),
    ],
)
def test_delimiter_and_hex_sequences(value: str, expected: str) -> None:
    assert unescape(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "\\H\\BOLD\\N\\",  # highlighting (§2.7.2)
        "line\\.br\\next",  # formatted text (§2.7.6)
        "\\.sp2\\",
        "\\.in+4\\",
        "\\C2842\\",  # character-set switch (§2.7.4)
        "\\M2442\\",
        "\\Zlocal\\",  # locally defined (§2.7.5)
        "\\Q\\",  # unknown
    ],
)
def test_formatting_and_unknown_sequences_are_kept_verbatim(value: str) -> None:
    assert unescape(value) == value


def test_app_map_renders_formatting_sequences() -> None:
    app_map = {"H": "", "N": "", ".br": "\r\n"}
    assert unescape("\\H\\A\\N\\\\.br\\B", app_map=app_map) == "A\r\nB"


@pytest.mark.parametrize(
    "value",
    [
        "C:\\path",  # a literal escape character with no partner
        "a\\F\\b\\",  # trailing odd one out
        "\\\\",  # empty sequence
        "\\X4\\",  # odd number of hex digits
        "\\XZZ\\",  # not hex
        "\\X\\",  # no digits
    ],
)
def test_malformed_input_is_tolerated(value: str) -> None:
    out = unescape(value)
    assert isinstance(out, str)
    if value == "a\\F\\b\\":
        assert out == "a|b\\"
    else:
        assert out == value


def test_hex_bytes_follow_the_message_charset() -> None:
    assert unescape("\\XDC\\", charset="8859/1") == "Ü"
    assert unescape("\\XC39C\\", charset="UNICODE UTF-8") == "Ü"
    assert unescape("\\XC39C\\") == "Ü"  # no MSH-18: UTF-8 when valid
    assert unescape("\\XDC\\") == "Ü"  # ... else ISO 8859-1, byte by byte (as python-hl7)
    assert unescape("\\XDC\\", charset="NO SUCH SET") == "Ü"  # unknown MSH-18: best effort


def test_non_standard_separators() -> None:
    assert unescape("a@F@b@S@c@T@d@R@e@E@f", ODD) == "a#b$c!d*e@f"
    assert unescape("a\\F\\b", ODD) == "a\\F\\b"  # '\\' is not this message's escape char


def test_escape_writes_every_delimiter_and_line_break() -> None:
    assert escape("a|b^c~d&e\\f\rg\nh") == "a\\F\\b\\S\\c\\R\\d\\T\\e\\E\\f\\X0D\\g\\X0A\\h"
    assert escape("plain") == "plain"


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@given(_TEXT, st.sampled_from([DEFAULT_SEPARATORS, ODD]))
def test_escape_round_trips(value: str, seps: Separators) -> None:
    escaped = escape(value, seps)
    for ch in (seps.field, seps.component, seps.repetition, seps.subcomponent, "\r", "\n"):
        assert ch not in escaped
    assert unescape(escaped, seps) == value
