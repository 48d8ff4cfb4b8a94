"""HL7 v2 escape sequences: resolve them in values read, add them to values written.

HL7 v2.5.1 §2.7 ("Use of escape sequences in text fields") defines, with ``\\`` standing for
whatever escape character MSH-2 declares:

====================  =====================================================  ==================
sequence              meaning                                                what ``unescape``
                                                                             returns
====================  =====================================================  ==================
``\\F\\``             field separator (§2.7.1)                               the separator
``\\S\\``             component separator                                    the separator
``\\T\\``             subcomponent separator                                 the separator
``\\R\\``             repetition separator                                   the separator
``\\E\\``             escape character                                       the character
``\\Xhhhh..\\``       hexadecimal bytes (§2.7.3)                             the bytes decoded,
                                                                             see below
``\\H\\`` ``\\N\\``   start/normal highlighting (§2.7.2)                     kept verbatim
``\\.br\\`` ``\\.sp\\`` …  formatted-text commands (FT, §2.7.6)               kept verbatim
``\\Cxxyy\\`` ``\\Mxxyyzz\\``  character-set switches (§2.7.4)               kept verbatim
``\\Zxx..\\``         locally defined (§2.7.5)                               kept verbatim
====================  =====================================================  ==================

Formatting, character-set and local sequences are *kept verbatim* (escape characters included)
rather than rendered or dropped: what they mean depends on the receiver (a worklist, a report
viewer), so the broker never loses them. A caller that wants them rendered passes ``app_map``,
e.g. ``{"H": "", "N": "", ".br": "\\r\\n"}``; an entry there also overrides the standard ones.

``\\Xhh..\\`` bytes are decoded with the message's character set (MSH-18) when it is known and
they are valid in it, else as UTF-8, else byte by byte as ISO 8859-1 (which is what python-hl7
does for every ``\\X\\``). Malformed input is tolerated, never an error, because senders get this
wrong in the wild (a literal ``C:\\path``): an escape character without a closing one, an empty
``\\\\`` or an unknown code stays in the value as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import NamedTuple

from broker.hl7.charset import CharsetError, python_codec

__all__ = ["DEFAULT_SEPARATORS", "Separators", "escape", "unescape"]


class Separators(NamedTuple):
    """The delimiters a message declares in MSH-1 and MSH-2 (HL7 v2.5.1 §2.5.4)."""

    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it is written: component, repetition, escape, subcomponent."""
        return self.component + self.repetition + self.escape + self.subcomponent


DEFAULT_SEPARATORS = Separators("|", "^", "~", "\\", "&")

_HEX_DIGITS = frozenset("0123456789ABCDEFabcdef")


def _decode_hex(digits: str, charset: str) -> str | None:
    """Bytes of a ``\\X..\\`` sequence as text; None when ``digits`` is not whole hex bytes."""
    if not digits or len(digits) % 2 or not _HEX_DIGITS.issuperset(digits):
        return None
    data = bytes.fromhex(digits)
    if data.isascii():
        return data.decode("ascii")
    codecs = ["utf-8"]
    if charset:
        # An unknown MSH-18 is reported by decode_frame; here we only do our best.
        with contextlib.suppress(CharsetError):
            codecs.insert(0, python_codec(charset))
    for codec in codecs:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _table(separators: Separators) -> dict[str, str]:
    """The replacements of the five delimiter sequences (§2.7.1) for one set of separators."""
    global _last
    if _last[0] is not separators:  # Message reuses one Separators object per delimiter set
        _last = (separators, {
            "F": separators.field,
            "S": separators.component,
            "T": separators.subcomponent,
            "R": separators.repetition,
            "E": separators.escape,
        })
    return _last[1]


_last: tuple[Separators | None, dict[str, str]] = (None, {})


def unescape(
    value: str,
    separators: Separators = DEFAULT_SEPARATORS,
    charset: str = "",
    app_map: Mapping[str, str] | None = None,
) -> str:
    """Return ``value`` with its escape sequences resolved (see the module docstring).

    ``charset`` is the message's MSH-18 value (used only for ``\\X..\\``). Never raises.
    """
    esc = separators.escape
    if esc not in value:
        return value
    table = _table(separators)
    if app_map:
        table = {**table, **app_map}
    # Escape characters pair up in order: text, code, text, code, ..., text. An odd one out at
    # the end opens no sequence and stays in the text.
    parts = value.split(esc)
    if not len(parts) % 2:
        tail = parts.pop()
        parts[-1] = f"{parts[-1]}{esc}{tail}"
    get = table.get
    for i in range(1, len(parts), 2):
        code = parts[i]
        text = get(code)
        if text is None:
            if code[:1] == "X":
                text = _decode_hex(code[1:], charset)
            if text is None:
                # Formatting, charset switch, local or unknown code: kept verbatim ("\\H\\").
                text = f"{esc}{code}{esc}"
        parts[i] = text
    return "".join(parts)


def escape(value: str, separators: Separators = DEFAULT_SEPARATORS) -> str:
    """Return ``value`` with every delimiter (and CR, LF) written as an escape sequence.

    The inverse of :func:`unescape` for text that holds no formatting sequences: use it on every
    value put into an outbound message or ACK.
    """
    esc = separators.escape
    specials = (
        separators.field,
        separators.component,
        separators.repetition,
        separators.subcomponent,
        "\r",
        "\n",
    )
    if esc not in value and not any(ch in value for ch in specials):
        return value
    value = value.replace(esc, f"{esc}E{esc}")  # first, so the escapes below stay intact
    for ch, code in zip(specials, ("F", "S", "R", "T", "X0D", "X0A"), strict=True):
        value = value.replace(ch, f"{esc}{code}{esc}")
    return value
