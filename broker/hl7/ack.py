"""ACK building (HL7 v2.5.1 §2.9 acknowledgment rules, §2.15 MSA, §2.15.5 ERR).

Original mode: MSA-1 is AA, AE or AR. Enhanced mode (MSH-15/MSH-16 valued): the answer on
the connection is the accept acknowledgment CA/CE/CR, sent or not as MSH-15 asks (AL, NE, ER,
SU). The ACK mirrors the inbound message: sender and receiver swapped, same delimiters,
version, processing ID and character set (MSH-18), MSA-2 = inbound MSH-10.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from broker.hl7.header import DEFAULT_ENCODING_CHARACTERS, Header

AckCode = Literal["AA", "AE", "AR"]

#: HL7 table 0357 (message error condition codes) — text for each code we send.
ERROR_CODES: dict[int, str] = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}

_ENHANCED = {"AA": "CA", "AE": "CE", "AR": "CR"}

_counter = itertools.count(1)
_prefix = f"{os.getpid() % 100000:05d}"


@dataclass(frozen=True, slots=True)
class AckError:
    """One ERR segment: table 0357 code, location ``SEG^seq^field[^comp[^sub]]``, text.

    The text names what is wrong and where, never the value (it may be patient data).
    """

    code: int
    location: str = ""
    text: str = ""
    severity: Literal["E", "W", "I"] = "E"


def new_control_id() -> str:
    """A control ID unique within this process run (MSH-10 of the ACKs we send)."""
    return f"ACK{time.strftime('%Y%m%d%H%M%S')}{_prefix}{next(_counter)}"


#: MLLP's start block (VT) and end block (FS) bytes: never part of a message's content.
_FRAME_BYTES = re.compile("[\x0b\x1c]")


def should_send(header: Header | None, code: AckCode) -> bool:
    """Whether enhanced mode's MSH-15 asks for an accept acknowledgment here.

    NE: never; ER: only on error; SU: only on success; AL or empty: always.
    """
    if header is None or not header.enhanced_mode:
        return True
    mode = header.accept_ack_type.upper()
    if mode == "NE":
        return False
    if mode == "ER":
        return code != "AA"
    if mode == "SU":
        return code == "AA"
    return True


def build_ack(
    header: Header | None,
    code: AckCode,
    errors: Iterable[AckError] = (),
    *,
    text: str = "",
    timestamp: str | None = None,
    control_id: str | None = None,
) -> str:
    """Return the ACK text (segments separated by CR) for a message with ``header``.

    ``header`` None means the inbound MSH could not be read: the ACK then uses default
    delimiters, version 2.5.1 and leaves MSA-2 empty.
    """
    fs = header.field_separator if header else "|"
    enc = header.encoding_characters if header else DEFAULT_ENCODING_CHARACTERS
    cs = enc[0]
    version = header.version if header and header.version else "2.5.1"
    trigger = header.trigger if header else ""
    msa_code = _ENHANCED[code] if header is not None and header.enhanced_mode else code
    ts = timestamp or time.strftime("%Y%m%d%H%M%S")
    msh = [
        "MSH",
        enc,
        header.field(5) if header else "",
        header.field(6) if header else "",
        header.field(3) if header else "",
        header.field(4) if header else "",
        ts,
        "",
        _ack_type(cs, trigger, version),
        control_id or new_control_id(),
        (header.field(11) if header else "") or "P",
        header.field(12) if header and header.field(12) else version,
    ]
    if header is not None and header.field(18):
        # Keep the inbound character set so the sender can read our answer (MSH-18).
        msh += ["", "", "", "", "", header.field(18)]
    segments = [fs.join(msh)]
    msa = ["MSA", msa_code, header.control_id if header else ""]
    if text:
        msa.append(_clean(text, fs, enc))
    segments.append(fs.join(msa))
    for error in errors:
        segments.append(_err_segment(error, fs, enc, version))
    text_out = "\r".join(segments) + "\r"
    # Echoed values can hold MLLP's own frame bytes (an MSH-10 ending in FS); inside the
    # answer they would end its frame early and the ERR would be lost: drop them.
    if _FRAME_BYTES.search(text_out):
        text_out = _FRAME_BYTES.sub("", text_out)
    return text_out


def _ack_type(cs: str, trigger: str, version: str) -> str:
    # v2.3.1 and later carry the message structure in MSH-9.3; earlier versions do not.
    parts = ["ACK", trigger] if trigger else ["ACK"]
    if _version_at_least(version, (2, 3, 1)) and trigger:
        parts.append("ACK")
    return cs.join(parts)


def _err_segment(error: AckError, fs: str, enc: str, version: str) -> str:
    cs = enc[0]
    ss = enc[3] if len(enc) > 3 else "&"
    code_text = ERROR_CODES.get(error.code, "Application error")
    loc = [part for part in error.location.split("^")] if error.location else []
    text = _clean(error.text or code_text, fs, enc)
    if _version_at_least(version, (2, 5)):
        # ERR-2 location (ERL), ERR-3 code (CWE, table 0357), ERR-4 severity, ERR-8 user message
        erl = cs.join(loc)
        cwe = cs.join([str(error.code), code_text, "HL70357"])
        return fs.join(["ERR", "", erl, cwe, error.severity, "", "", "", text])
    # v2.3/v2.4: ERR-1 (ELD): segment^sequence^field^code&text&table
    seg, seq, fld = ([*loc, "", "", ""])[:3]
    code = ss.join([str(error.code), text, "HL70357"])
    return fs.join(["ERR", cs.join([seg, seq, fld, code])])


def _clean(text: str, fs: str, enc: str) -> str:
    """Escape delimiters in free text we put into a field (HL7 v2.5.1 §2.7)."""
    esc = enc[2] if len(enc) > 2 else "\\"
    out = text.replace(esc, f"{esc}E{esc}").replace(fs, f"{esc}F{esc}")
    out = out.replace(enc[0], f"{esc}S{esc}")
    if len(enc) > 1:
        out = out.replace(enc[1], f"{esc}R{esc}")
    if len(enc) > 3:
        out = out.replace(enc[3], f"{esc}T{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def _version_at_least(version: str, wanted: tuple[int, ...]) -> bool:
    try:
        parts = tuple(int(p) for p in version.split(".") if p.isdigit())
    except ValueError:
        return True
    return parts >= wanted if parts else True
