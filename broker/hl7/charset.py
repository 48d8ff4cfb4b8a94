"""MSH-18 aware decoding of raw HL7 frames to text, and encoding of outbound text.

HL7 v2.5.1 §2.15.9.18 (MSH-18 Character Set) names the character set of the whole message with a
value from HL7 table 0211; its first repetition is the default character set, later ones are
alternates for ISO 2022 switching (§2.7.4). MSH-18 is read from the raw bytes of the first
segment *before* anything is decoded: the delimiters and MSH-1..MSH-17 are ASCII in every character
set HL7 allows over byte-oriented framing. The whole frame is then decoded at once, before it is
split into fields, because in multi-byte sets (Shift JIS, Big5, GB 18030) a trail byte may equal
``|`` or ``\\``.

When MSH-18 is absent the default is ASCII (§2.15.9.18); since many senders write UTF-8 without
saying so, non-ASCII bytes that are valid UTF-8 are accepted as UTF-8. ISO 8859-1 is never assumed
silently: any byte sequence would "decode", so a wrong guess would put mojibake on a worklist.
"""

from __future__ import annotations

import codecs
from typing import NamedTuple

from broker.errors import ProtocolError

__all__ = ["CharsetError", "DecodedFrame", "decode_frame", "encode_text", "python_codec"]


class CharsetError(ProtocolError, ValueError):
    """The frame's bytes do not decode in its declared (or default) character set, or MSH-18
    names a set the broker does not know. The message names MSH-18 and a byte offset, never
    message content."""

    hl7_location = "MSH^1^18"


class DecodedFrame(NamedTuple):
    """A frame decoded to text, with the MSH-18 value that chose the codec ('' when absent)."""

    text: str
    charset: str


def _key(name: str) -> str:
    """Normalise a character-set name: 'ISO_IR 100', 'iso ir100' and 'ISO IR100' are one key."""
    return "".join(name.split()).replace("_", "").replace("-", "").upper()


# HL7 table 0211 (v2.5.1 and later), plus the DICOM spellings (PS3.3 C.12.1.1.2 "ISO_IR 100")
# and the common ISO/IANA spellings senders put in MSH-18 instead. Keys go through _key().
_TABLE_0211: dict[str, str] = {
    "ASCII": "ascii",
    "ISOIR6": "ascii",
    "USASCII": "ascii",
    "UNICODEUTF8": "utf-8",
    "UTF8": "utf-8",
    "ISOIR192": "utf-8",
    # "UNICODE" (ISO/IEC 10646, deprecated in v2.5 in favour of the UTF forms) does not say which
    # encoding; over byte-oriented MLLP it can only be an ASCII-compatible one, i.e. UTF-8.
    "UNICODE": "utf-8",
    "GB180302000": "gb18030",
    "GB18030": "gb18030",
    "ISOIR58": "gb2312",
    "GB2312": "gb2312",
    "KSX1001": "euc_kr",  # KS X 1001 as transmitted: EUC-KR
    "ISOIR149": "euc_kr",
    "BIG5": "big5",
    # Japanese (JIS X 0201 / 0208 / 0212) travel as ISO 2022 with escape sequences (§2.7.4).
    "ISOIR14": "iso2022_jp",
    "ISOIR87": "iso2022_jp",
    "ISOIR159": "iso2022_jp_2",
    "ISOIR13": "shift_jis",
    "ISOIR166": "tis_620",
}
for _n, _ir in (
    (1, 100), (2, 101), (3, 109), (4, 110), (5, 144), (6, 127), (7, 126), (8, 138), (9, 148),
    (15, 203),
):  # fmt: skip
    for _spelling in (f"8859/{_n}", f"ISO 8859-{_n}", f"ISO IR{_ir}"):
        _TABLE_0211[_key(_spelling)] = f"iso8859_{_n}"

# Known to table 0211 but not usable here: UTF-16/32 are not ASCII-compatible, so MSH-1 could not
# be read from the bytes and MLLP's 0x0B/0x1C framing bytes may occur inside characters; Python
# has no codec for CNS 11643.
_UNSUPPORTED = {
    "UNICODEUTF16": "UTF-16 is not ASCII-compatible and cannot be framed by MLLP as bytes",
    "UNICODEUTF32": "UTF-32 is not ASCII-compatible and cannot be framed by MLLP as bytes",
    "CNS116431992": "no codec for CNS 11643-1992 is available",
}

_UTF8_BOM = codecs.BOM_UTF8


def python_codec(charset: str) -> str:
    """Return the Python codec name for an MSH-18 value (HL7 table 0211 name).

    Raises CharsetError for an unknown or unsupported value.
    """
    key = _key(charset)
    codec = _TABLE_0211.get(key)
    if codec is not None:
        return codec
    why = _UNSUPPORTED.get(key, "expected a value of HL7 table 0211 such as ASCII, 8859/1, "
                                "UNICODE UTF-8")
    raise CharsetError(f"MSH-18 character set {charset!r} is not supported: {why}")


def _msh18(raw: bytes) -> bytes:
    """First repetition, first component of MSH-18, read from the raw bytes (b'' when absent)."""
    if raw[:3] != b"MSH":
        return b""
    end = raw.find(b"\r")
    head = raw[:end] if end >= 0 else raw
    end = head.find(b"\n")
    if end >= 0:
        head = head[:end]
    fs = head[3:4]
    fields = head.split(fs, 18) if fs else []
    if len(fields) < 18:
        return b""
    value = fields[17]  # fields[0] is "MSH", fields[1] is MSH-2, so fields[n - 1] is MSH-n
    for sep in (head[5:6], head[4:5]):  # repetition, then component separator (MSH-2)
        end = value.find(sep) if sep else -1
        if end >= 0:
            value = value[:end]
    return value.strip()


# MSH-18 as written -> (MSH-18 value, Python codec); a handful of spellings in practice.
_DECLARED: dict[bytes, tuple[str, str]] = {}


def _declared(value: bytes) -> tuple[str, str]:
    hit = _DECLARED.get(value)
    if hit is None:
        try:
            charset = value.decode("ascii")
        except UnicodeDecodeError:
            raise CharsetError("MSH-18 character set name is not ASCII") from None
        hit = (charset, python_codec(charset))
        if len(_DECLARED) < 64:
            _DECLARED[value] = hit
    return hit


def decode_frame(raw: bytes, default: str = "ASCII") -> DecodedFrame:
    """Decode one frame's bytes as its MSH-18 says; return the text and the MSH-18 value used.

    Without MSH-18, ``default`` (a table 0211 name) applies, and bytes that do not decode in it
    but are valid UTF-8 are taken as UTF-8; a leading UTF-8 byte order mark is dropped.
    Raises CharsetError when MSH-18 is unknown or the bytes are invalid in the chosen set.
    """
    declared = _msh18(raw)
    if declared:
        charset, codec = _declared(declared)
        try:
            return DecodedFrame(raw.decode(codec), charset)
        except UnicodeDecodeError as exc:
            raise CharsetError(
                f"bytes are not valid {charset!r} (MSH-18): first undecodable byte at offset "
                f"{exc.start}"
            ) from None
    if raw[:3] == _UTF8_BOM:
        raw = raw[3:]
        if _msh18(raw):
            return decode_frame(raw, default)
        default = "UNICODE UTF-8"
    if raw.isascii():  # the common case, and ASCII is a subset of every default we accept
        return DecodedFrame(raw.decode("ascii"), "")
    codec = python_codec(default)
    try:
        return DecodedFrame(raw.decode(codec), "")
    except UnicodeDecodeError:
        pass
    try:
        return DecodedFrame(raw.decode("utf-8"), "")
    except UnicodeDecodeError as exc:
        raise CharsetError(
            f"MSH-18 is absent and the bytes are neither {default} (the default) nor UTF-8: "
            f"first undecodable byte at offset {exc.start}"
        ) from None


def encode_text(text: str, charset: str) -> bytes:
    """Encode outbound text in the character set an MSH-18 value names.

    An empty ``charset`` means the HL7 default, ASCII; text that needs more is written as UTF-8,
    the mirror image of what :func:`decode_frame` accepts. Raises CharsetError when ``charset``
    is unknown or cannot represent the text (the message names the character offset).
    """
    if not charset:
        return text.encode("ascii") if text.isascii() else text.encode("utf-8")
    codec = python_codec(charset)
    try:
        return text.encode(codec)
    except UnicodeEncodeError as exc:
        raise CharsetError(
            f"text cannot be encoded in {charset!r} (MSH-18): first unencodable character at "
            f"offset {exc.start}"
        ) from None
