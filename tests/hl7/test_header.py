"""Reading MSH on its own."""

from __future__ import annotations

import pytest

from broker.hl7.header import HeaderError, parse_header


def test_fields_are_numbered_as_hl7_numbers_them() -> None:
    h = parse_header(
        "MSH|^~\\&|RIS|HOSP|BROKER|RAD|20261101||ORM^O01^ORM_O01|C1|P|2.3.1||||||8859/1\rPID|"
    )
    assert h.field(1) == "|"
    assert h.field(2) == "^~\\&"
    assert h.sending_application == "RIS"
    assert h.sender == "RIS|HOSP"
    assert (h.message_type, h.trigger, h.structure) == ("ORM", "O01", "ORM_O01")
    assert h.control_id == "C1"
    assert h.version == "2.3.1"
    assert h.charset == "8859/1"
    assert not h.enhanced_mode


def test_other_delimiters_and_lf() -> None:
    h = parse_header("MSH#$~\\&#A#B#C#D#T##ADT$A08#X9#P#2.5#1##AL#NE\nEVN#")
    assert h.message_type == "ADT" and h.trigger == "A08"
    assert h.enhanced_mode and h.accept_ack_type == "AL"


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ("PID|1", "MSH"),
        ("MSHA^~\\&|", "MSH^1^1"),
        ("MSH|^^\\&|X", "MSH^1^2"),
        ("MSH|^|x|y", "MSH^1^2"),
        ("MSH\x1c^~\\&\x1cRIS", "MSH^1^1"),  # FS would end the MLLP frame of our answer
        ("MSH|^~\\|RIS", "MSH^1^2"),  # three encoding characters
        ("MSH|^~|&|RIS", "MSH^1^2"),  # the field separator among them
        ("MSH|^~\\M|RIS", "MSH^1^2"),  # a letter
    ],
)
def test_unusable_headers(text: str, location: str) -> None:
    with pytest.raises(HeaderError) as info:
        parse_header(text)
    assert info.value.location == location
