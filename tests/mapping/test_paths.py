"""Path and expression parser: examples and a Hypothesis round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.mapping.paths import (
    Constant,
    ExpressionError,
    HL7Path,
    Variable,
    format_expression,
    parse_expression,
    parse_path,
)
from broker.mapping.template import parse_template


def test_examples() -> None:
    assert parse_path("PID-3.1") == HL7Path("PID", None, 3, 1, 1)
    assert parse_path("OBR(2)-4.2") == HL7Path("OBR", 2, 4, 1, 2)
    assert parse_path("PID-3(2).1") == HL7Path("PID", None, 3, 2, 1)
    assert parse_path("PID-3(*).1").repetition == 0
    assert parse_expression("OBR-18 | ORC-2.1 | 'X|Y' | $order_status") == (
        HL7Path("OBR", None, 18),
        HL7Path("ORC", None, 2, 1, 1),
        Constant("X|Y"),
        Variable("order_status"),
    )


def test_locations() -> None:
    assert parse_path("PID-7").location() == "PID^1^7"
    assert parse_path("OBR-27.4").location() == "OBR^1^27^4"
    assert parse_path("OBR(2)-4.2").location() == "OBR^2^4^2"


@pytest.mark.parametrize(
    "bad", ["pid-3", "PID-0", "PID-3.", "PID-3..1", "PID-3(0)", "OBR-18 |", "'open", "$Bad"]
)
def test_rejects(bad: str) -> None:
    with pytest.raises(ExpressionError, match="expected"):
        parse_expression(bad)


def test_template() -> None:
    parts = parse_template("{PID-5.1}, {{x}} {$a | 'b'}")
    assert parts[1] == ", {x} "


paths = st.builds(
    HL7Path,
    segment=st.from_regex(r"[A-Z][A-Z0-9]{2}", fullmatch=True),
    occurrence=st.none() | st.integers(1, 9),
    field=st.integers(1, 99),
    repetition=st.integers(0, 5),
    component=st.none(),
    subcomponent=st.none(),
)
full_paths = st.builds(
    lambda p, c, s: HL7Path(
        p.segment, p.occurrence, p.field, p.repetition, c, s if c is not None else None
    ),
    paths,
    st.none() | st.integers(1, 20),
    st.none() | st.integers(1, 9),
)
terms = (
    full_paths
    | st.builds(Constant, st.text(max_size=12))
    | st.builds(Variable, st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True))
)


@given(st.lists(terms, min_size=1, max_size=4))
def test_round_trip(ts: list[HL7Path | Constant | Variable]) -> None:
    assert parse_expression(format_expression(tuple(ts))) == tuple(ts)
