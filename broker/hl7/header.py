"""The MSH segment read on its own: enough to validate, journal and acknowledge a message.

Reading only the first segment keeps the accept path cheap and lets the broker answer even a
message whose body it cannot parse (HL7 v2.5.1 §2.14.9: MSH fields).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_ENCODING_CHARACTERS = "^~\\&"


class HeaderError(ValueError):
    """The MSH segment is missing or unusable; ``location`` is the HL7 location (``MSH^1^9``)."""

    def __init__(self, message: str, location: str = "MSH", code: int = 100) -> None:
        super().__init__(message)
        self.location = location
        self.code = code


@dataclass(frozen=True, slots=True)
class Header:
    """Raw MSH fields, numbered as HL7 numbers them (``fields[3]`` is MSH-3)."""

    fields: tuple[str, ...]

    @property
    def field_separator(self) -> str:
        return self.fields[1]

    @property
    def encoding_characters(self) -> str:
        return self.fields[2]

    @property
    def component_separator(self) -> str:
        return self.encoding_characters[:1] or "^"

    def field(self, n: int) -> str:
        """Raw MSH-n, '' when absent."""
        return self.fields[n] if n < len(self.fields) else ""

    def component(self, n: int, c: int) -> str:
        """Raw component ``c`` of the first repetition of MSH-n."""
        value = self.field(n)
        rep = self.encoding_characters[1:2]
        if rep:
            value = value.split(rep, 1)[0]
        parts = value.split(self.component_separator)
        return parts[c - 1] if c <= len(parts) else ""

    @property
    def sending_application(self) -> str:
        return self.component(3, 1)

    @property
    def sending_facility(self) -> str:
        return self.component(4, 1)

    @property
    def sender(self) -> str:
        """Who sent it, as the dedupe key uses it: MSH-3 and MSH-4, raw."""
        return f"{self.field(3)}|{self.field(4)}"

    @property
    def control_id(self) -> str:
        return self.field(10)

    @property
    def message_type(self) -> str:
        return self.component(9, 1)

    @property
    def trigger(self) -> str:
        return self.component(9, 2)

    @property
    def structure(self) -> str:
        return self.component(9, 3)

    @property
    def processing_id(self) -> str:
        return self.component(11, 1)

    @property
    def version(self) -> str:
        return self.component(12, 1)

    @property
    def accept_ack_type(self) -> str:
        return self.field(15)

    @property
    def app_ack_type(self) -> str:
        return self.field(16)

    @property
    def charset(self) -> str:
        return self.component(18, 1)

    @property
    def enhanced_mode(self) -> bool:
        """HL7 v2.5.1 §2.9.3: MSH-15 or MSH-16 valued asks for enhanced acknowledgment."""
        return bool(self.accept_ack_type or self.app_ack_type)


def parse_header(text: str) -> Header:
    """Read the MSH segment at the start of ``text``.

    Raises :class:`HeaderError` when there is no MSH segment or its delimiters are unusable.
    """
    if not text.startswith("MSH") or len(text) < 8:
        raise HeaderError("message does not start with an MSH segment", "MSH")
    sep = text[3]
    if not _usable_delimiter(sep):
        raise HeaderError("MSH-1 field separator is not a usable delimiter", "MSH^1^1", 102)
    end = len(text)
    for terminator in ("\r", "\n"):
        pos = text.find(terminator)
        if 0 <= pos < end:
            end = pos
    parts = text[4:end].split(sep)
    encoding = parts[0]
    # HL7 v2.5.1 §2.5.4: four encoding characters (v2.7 adds a fifth, truncation); each
    # distinct and none the field separator, or an ACK built with them could not be read
    # (a control character such as FS would even end the MLLP frame early).
    if (
        len(encoding) not in (4, 5)
        or len(set(encoding)) != len(encoding)
        or sep in encoding
        or not all(_usable_delimiter(c) for c in encoding)
    ):
        raise HeaderError(
            "MSH-2 must hold 4 distinct encoding characters (punctuation, e.g. ^~\\&)",
            "MSH^1^2",
            102,
        )
    # fields[0] is a placeholder so that fields[n] is MSH-n.
    return Header(("MSH", sep, *parts))


def _usable_delimiter(char: str) -> bool:
    """Printable punctuation only: no letters, digits, spaces or control characters."""
    return char.isprintable() and not char.isalnum() and not char.isspace()
