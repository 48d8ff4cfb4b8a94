"""HL7 path and source-expression parser of the mapping language (compiled once, never per message).

A path names one value in an HL7 v2 message, HL7 v2.5.1 §2.5 (message construction):

    SEG[(occurrence)]-FIELD[(repetition)][.COMPONENT[.SUBCOMPONENT]]

``PID-3.1``, ``OBR(2)-4.2`` (the second OBR of the message), ``PID-3(2).1`` (second repetition),
``PID-3(*).1`` (every repetition). A source expression lists alternatives, the first non-empty
one wins: ``OBR-18 | ORC-2.1 | 'UNKNOWN'``; an alternative is a path, a quoted constant, or a
``$variable`` the engine provides (``$order_status``, ``$order_key``, ``$step_index``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATH_RE = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})"
    r"(?:\((?P<occ>[1-9][0-9]*)\))?"
    r"(?:-(?P<field>[1-9][0-9]*)"
    r"(?:\((?P<rep>[1-9][0-9]*|\*)\))?"
    r"(?:\.(?P<comp>[1-9][0-9]*)"
    r"(?:\.(?P<sub>[1-9][0-9]*))?)?)?$"
)
_VAR_RE = re.compile(r"^\$[a-z_][a-z0-9_]*$")


class ExpressionError(ValueError):
    """A path or expression does not follow the grammar; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class HL7Path:
    """A parsed path. ``occurrence`` None: the segment in scope (the step's group, else the first).

    ``field`` 0 means the whole segment (used by ``exists`` predicates); ``repetition`` 0 means
    every repetition (``(*)``).
    """

    segment: str
    occurrence: int | None = None
    field: int = 0
    repetition: int = 1
    component: int | None = None
    subcomponent: int | None = None

    def __str__(self) -> str:
        out = self.segment
        if self.occurrence is not None:
            out += f"({self.occurrence})"
        if self.field:
            out += f"-{self.field}"
            if self.repetition != 1:
                out += "(*)" if self.repetition == 0 else f"({self.repetition})"
            if self.component is not None:
                out += f".{self.component}"
                if self.subcomponent is not None:
                    out += f".{self.subcomponent}"
        return out

    def location(self, occurrence: int = 1) -> str:
        """ERR-2 style location (HL7 v2.5 ERL): ``PID^1^7`` or ``OBR^1^27^4``."""
        parts = [self.segment, str(self.occurrence or occurrence)]
        if self.field:
            parts.append(str(self.field))
            if self.component is not None:
                if self.repetition > 1:
                    # ERL has the repetition between field and component
                    parts.append(str(self.repetition))
                parts.append(str(self.component))
                if self.subcomponent is not None:
                    parts.append(str(self.subcomponent))
        return "^".join(parts)


@dataclass(frozen=True, slots=True)
class Constant:
    """A quoted literal in an expression."""

    value: str

    def __str__(self) -> str:
        return "'" + self.value.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Variable:
    """A value the engine supplies per message or step (``$order_status``)."""

    name: str

    def __str__(self) -> str:
        return "$" + self.name


Term = HL7Path | Constant | Variable


def parse_path(text: str) -> HL7Path:
    """Parse one path; raises :class:`ExpressionError` naming the expected form."""
    m = _PATH_RE.match(text.strip())
    if m is None:
        raise ExpressionError(
            f"found {text!r}, expected an HL7 path like PID-3.1, OBR(2)-4.2 or PID-3(2).1"
        )
    rep = m.group("rep")
    return HL7Path(
        segment=m.group("seg"),
        occurrence=int(m.group("occ")) if m.group("occ") else None,
        field=int(m.group("field") or 0),
        repetition=0 if rep == "*" else int(rep or 1),
        component=int(m.group("comp")) if m.group("comp") else None,
        subcomponent=int(m.group("sub")) if m.group("sub") else None,
    )


def _split_alternatives(text: str) -> list[str]:
    """Split on ``|`` outside quotes; quotes are doubled to escape them (SQL style)."""
    parts: list[str] = []
    buf: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            buf.append(ch)
            if ch == quote:
                if i + 1 < len(text) and text[i + 1] == quote:
                    buf.append(quote)
                    i += 1
                else:
                    quote = ""
        elif ch in "'\"":
            quote = ch
            buf.append(ch)
        elif ch == "|":
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if quote:
        raise ExpressionError(f"found an unclosed {quote} in {text!r}, expected a closing quote")
    parts.append("".join(buf))
    return parts


def parse_term(text: str) -> Term:
    """Parse one alternative: a path, a quoted constant or a ``$variable``."""
    t = text.strip()
    if not t:
        raise ExpressionError("found an empty alternative, expected a path, 'constant' or $var")
    if t[0] in "'\"":
        q = t[0]
        if len(t) < 2 or t[-1] != q:
            raise ExpressionError(f"found {t!r}, expected a constant closed by {q}")
        return Constant(t[1:-1].replace(q + q, q))
    if t[0] == "$":
        if not _VAR_RE.match(t):
            raise ExpressionError(f"found {t!r}, expected a variable like $order_status")
        return Variable(t[1:])
    return parse_path(t)


def parse_expression(text: str) -> tuple[Term, ...]:
    """Parse ``A | B | 'C'`` into its alternatives, in order."""
    return tuple(parse_term(p) for p in _split_alternatives(text))


def format_expression(terms: tuple[Term, ...]) -> str:
    """The canonical text of an expression (``parse_expression`` of it gives ``terms`` back)."""
    return " | ".join(str(t) for t in terms)
