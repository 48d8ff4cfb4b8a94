"""TS → DA/TM/DT with time zones, sex codes, XPN → PN."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.mapping import convert as cv


def test_ts() -> None:
    assert cv.to_da("20261103093000") == "20261103"
    assert cv.to_tm("20261103093000") == "093000"
    assert cv.to_tm("202611030930") == "0930"
    assert cv.to_tm("20261103") == ""
    assert cv.to_dt("20261103091522+0100") == "20261103091522+0100"
    assert cv.to_tm("20261103093000.12&S") == "093000.12"


def test_timezone_shift() -> None:
    # 23:30 UTC is 00:30 the next day in Berlin (CET, +0100)
    assert cv.to_da("20261103233000+0000", "Europe/Berlin") == "20261104"
    assert cv.to_tm("20261103233000+0000", "Europe/Berlin") == "003000"
    assert cv.to_dt("20261103233000+0000", "Europe/Berlin") == "20261104003000+0100"
    assert cv.to_tm("20261103233000", "Europe/Berlin") == "233000"  # no offset: local already


@pytest.mark.parametrize("bad", ["20261301", "20260230", "2026110325", "abc", "2026"])
def test_impossible(bad: str) -> None:
    with pytest.raises(cv.ConvertFault):
        cv.to_da(bad)


def test_sex() -> None:
    assert [cv.to_sex(c) for c in "MFOUAN"] == ["M", "F", "O", "", "O", "O"]
    with pytest.raises(cv.ConvertFault):
        cv.to_sex("Z")


def test_pn_components() -> None:
    assert cv.components_to_pn(["DOE", "JOHN", "", "DR", ""]) == "DOE^JOHN^^DR"
    assert cv.components_to_pn(["DOE&VAN", "", "", "", ""]) == "DOE"


@given(st.dates(), st.times())
def test_valid_timestamps_round_trip(d, t) -> None:  # type: ignore[no-untyped-def]
    ts = d.strftime("%Y%m%d") + t.strftime("%H%M%S")
    if d.year < 1000:
        return
    assert cv.to_da(ts) == ts[:8]
    assert cv.to_tm(ts) == ts[8:]
