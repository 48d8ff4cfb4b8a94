"""Templates: text with ``{expression}`` placeholders, e.g. ``{PID-5.1}, {PID-5.2}``.

``{{`` and ``}}`` are literal braces. A template whose placeholders are all empty yields ""
(so ``"{A}^{B}"`` with nothing sent is absent, not ``"^"``).
"""

from __future__ import annotations

from broker.mapping.paths import ExpressionError, Term, parse_expression

Part = str | tuple[Term, ...]


def parse_template(text: str) -> list[Part]:
    """Split into literal strings and parsed expressions; raises ExpressionError."""
    parts: list[Part] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "{" and text[i + 1 : i + 2] == "{":
            buf.append("{")
            i += 2
            continue
        if ch == "}" and text[i + 1 : i + 2] == "}":
            buf.append("}")
            i += 2
            continue
        if ch == "{":
            end = text.find("}", i)
            if end < 0:
                raise ExpressionError(f"found an unclosed {{ in {text!r}, expected {{expression}}")
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(parse_expression(text[i + 1 : end]))
            i = end + 1
            continue
        if ch == "}":
            raise ExpressionError(f"found a lone }} in {text!r}, expected }}}} for a brace")
        buf.append(ch)
        i += 1
    if buf:
        parts.append("".join(buf))
    return parts
