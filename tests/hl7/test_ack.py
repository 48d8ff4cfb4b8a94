"""ACKs, checked with python-hl7 as the reader (HL7 v2.5.1 §2.9, §2.15)."""

from __future__ import annotations

import hl7

from broker.hl7.ack import AckError, build_ack, should_send
from broker.hl7.header import parse_header

ORM_231 = "MSH|^~\\&|RIS|HOSP|BROKER|RAD|20261101120000||ORM^O01|MSG0001|P|2.3.1\rPID|1||123\r"
OMI_251 = (
    "MSH|^~\\&|RIS|HOSP|BROKER|RAD|20261101120000+0100||OMI^O23^OMI_O23|C-77|T|2.5.1|||||"
    "|UNICODE UTF-8\rPID|1\r"
)


def test_aa_mirrors_the_message() -> None:
    ack = hl7.parse(build_ack(parse_header(ORM_231), "AA"))
    msh = ack.segment("MSH")
    assert str(msh[3]) == "BROKER" and str(msh[4]) == "RAD"
    assert str(msh[5]) == "RIS" and str(msh[6]) == "HOSP"
    assert str(msh[9]) == "ACK^O01^ACK"
    assert str(msh[11]) == "P" and str(msh[12]) == "2.3.1"
    msa = ack.segment("MSA")
    assert str(msa[1]) == "AA" and str(msa[2]) == "MSG0001"


def test_err_segment_v25_uses_erl_and_cwe() -> None:
    error = AckError(101, "PID^1^3", "PID-3 patient identifier is required")
    ack = hl7.parse(build_ack(parse_header(OMI_251), "AE", [error]))
    err = ack.segment("ERR")
    assert str(err[2]) == "PID^1^3"
    assert str(err[3]) == "101^Required field missing^HL70357"
    assert str(err[4]) == "E"
    assert str(err[8]) == "PID-3 patient identifier is required"
    assert str(ack.segment("MSH")[18]) == "UNICODE UTF-8"
    assert str(ack.segment("MSH")[11]) == "T"


def test_err_segment_v23_uses_eld() -> None:
    error = AckError(207, "OBR^1^27", "bad | value ^ here")
    text = build_ack(parse_header(ORM_231), "AE", [error])
    err = hl7.parse(text).segment("ERR")
    assert str(err[1][0][0]) == "OBR"
    assert str(err[1][0][2]) == "27"
    assert "\\F\\" in text and "\\S\\" in text  # delimiters in free text are escaped


def test_enhanced_mode_codes_and_suppression() -> None:
    enhanced = parse_header(ORM_231.replace("|2.3.1", "|2.3.1|||AL|NE"))
    assert "MSA|CA|MSG0001" in build_ack(enhanced, "AA")
    assert "MSA|CE|" in build_ack(enhanced, "AE")
    never = parse_header(ORM_231.replace("|2.3.1", "|2.3.1|||NE|NE"))
    assert not should_send(never, "AA") and not should_send(never, "AR")
    on_error = parse_header(ORM_231.replace("|2.3.1", "|2.3.1|||ER|NE"))
    assert not should_send(on_error, "AA") and should_send(on_error, "AE")
    assert should_send(parse_header(ORM_231), "AA")


def test_ack_without_header_is_still_valid() -> None:
    ack = hl7.parse(build_ack(None, "AR", [AckError(100, "MSH", "no MSH")]))
    assert str(ack.segment("MSA")[1]) == "AR"
    assert str(ack.segment("MSA")[2]) == ""


def test_mllp_frame_bytes_in_echoed_values_never_reach_the_answer() -> None:
    # Found by the peer tests' hypothesis stream: an MSH-10 ending in FS (0x1c) was echoed
    # in MSA-2 and ended the answer's frame before its ERR segment.
    header = parse_header("MSH|^~\\&|R\x0bIS|HOSP|BROKER|HOSP|20261102083015||ORM^O01|RANDOM\x1c")
    ack = build_ack(header, "AR", (AckError(101, "MSH^1^12", "MSH-12 version ID is required"),))
    assert "\x1c" not in ack and "\x0b" not in ack
    assert "\rMSA|AR|RANDOM\r" in ack and "\rERR||MSH^1^12|101^" in ack
    assert ack.startswith("MSH|^~\\&|BROKER|HOSP|RIS|HOSP|")
