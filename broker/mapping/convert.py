"""Value conversions between HL7 v2 data types and DICOM VRs (pure functions on strings).

- TS/DTM (HL7 v2.5.1 §2.A.74, §2.A.22) → DA, TM, DT (PS3.5 Table 6.2-1), with time zones.
- XPN/XCN (HL7 §2.A.88, §2.A.89) → PN (PS3.5 §6.2.1.1): component order differs: HL7 is
  family^given^middle^suffix^prefix, DICOM is family^given^middle^prefix^suffix.
- Administrative sex (HL7 table 0001) → PatientSex (PS3.3 C.7.1.1: M, F, O).
"""

from __future__ import annotations

import calendar
import datetime as _dt
import re
from collections.abc import Sequence
from functools import lru_cache
from zoneinfo import ZoneInfo

_TS_RE = re.compile(
    r"^(?P<y>[0-9]{4})(?P<mo>[0-9]{2})?(?P<d>[0-9]{2})?(?P<h>[0-9]{2})?(?P<mi>[0-9]{2})?"
    r"(?P<s>[0-9]{2})?(?:\.(?P<f>[0-9]{1,6}))?(?P<tz>[+-][0-9]{4})?$"
)

_DIGIT_LENGTHS = frozenset({4, 6, 8, 10, 12, 14})
#: last day of each month ("29": February, when the year is a leap year)
_MONTH_DAYS = {
    "01": "31",
    "02": "29",
    "03": "31",
    "04": "30",
    "05": "31",
    "06": "30",
    "07": "31",
    "08": "31",
    "09": "30",
    "10": "31",
    "11": "30",
    "12": "31",
}

#: HL7 table 0001 → DICOM PatientSex (PS3.3 C.7.1.1). U (unknown) → empty: type 2, unknown.
SEX_CODES: dict[str, str] = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O", "X": "O", "U": ""}

#: XPN components in DICOM PN order: family, given, middle, prefix (XPN.5), suffix (XPN.4).
XPN_TO_PN = (1, 2, 3, 5, 4)
#: XCN (ID first) in DICOM PN order: family (2), given (3), middle (4), prefix (6), suffix (5).
XCN_TO_PN = (2, 3, 4, 6, 5)


class ConvertFault(ValueError):
    """A value cannot be converted (HL7 table 0357 code 102, data type error)."""


class TimeStamp:
    """A parsed HL7 TS/DTM; missing parts are ``None``."""

    __slots__ = ("day", "fraction", "hour", "minute", "month", "second", "tz", "year")

    def __init__(self, m: re.Match[str] | None) -> None:
        if m is None:  # filled by _digits_ts
            return
        self.year = m.group("y")
        self.month = m.group("mo")
        self.day = m.group("d")
        self.hour = m.group("h")
        self.minute = m.group("mi")
        self.second = m.group("s")
        self.fraction = m.group("f")
        self.tz = m.group("tz")


def _digits_ts(v: str) -> TimeStamp:
    """What ``_TS_RE`` makes of 4 to 14 ASCII digits of even length, without the regex."""
    ts = TimeStamp(None)
    n = len(v)
    ts.year = v[:4]
    ts.month = v[4:6] if n >= 6 else None
    ts.day = v[6:8] if n >= 8 else None
    ts.hour = v[8:10] if n >= 10 else None
    ts.minute = v[10:12] if n >= 12 else None
    ts.second = v[12:14] if n >= 14 else None
    ts.fraction = ts.tz = None
    return ts


def parse_ts(value: str, timezone: str | None = None) -> TimeStamp:
    """Parse the first component of a TS (cut at ``^``/``&``); shift it to ``timezone``.

    Raises ConvertFault for an impossible date or time (month 13, 30 February, 25:00).
    """
    v = value.split("^", 1)[0].split("&", 1)[0].strip()
    if v.isdigit() and v.isascii() and len(v) in _DIGIT_LENGTHS:  # the usual YYYYMMDD[HHMM[SS]]
        ts = _digits_ts(v)
    else:
        m = _TS_RE.match(v)
        if m is None:
            raise ConvertFault("found a value that is not a timestamp, expected YYYYMMDD[HHMM[SS]]")
        ts = TimeStamp(m)
    try:
        _dt.date(int(ts.year), int(ts.month or 1), int(ts.day or 1))
        _dt.time(int(ts.hour or 0), int(ts.minute or 0), int(ts.second or 0))
    except ValueError as exc:
        raise ConvertFault("found an impossible date or time, expected a calendar date") from exc
    if timezone and ts.tz and ts.hour is not None and ts.day is not None:
        return _shift(ts, v, timezone)
    return ts


def _shift(ts: TimeStamp, raw: str, timezone: str) -> TimeStamp:
    sign = 1 if ts.tz and ts.tz[0] == "+" else -1
    assert ts.tz is not None
    offset = _dt.timedelta(hours=int(ts.tz[1:3]), minutes=int(ts.tz[3:5])) * sign
    moment = _dt.datetime(
        int(ts.year),
        int(ts.month or 1),
        int(ts.day or 1),
        int(ts.hour or 0),
        int(ts.minute or 0),
        int(ts.second or 0),
        tzinfo=_dt.timezone(offset),
    )
    local = moment.astimezone(_zone(timezone))
    off = local.utcoffset() or _dt.timedelta(0)
    mins = int(off.total_seconds() // 60)
    tz = f"{'+' if mins >= 0 else '-'}{abs(mins) // 60:02d}{abs(mins) % 60:02d}"
    text = local.strftime("%Y%m%d%H%M%S")
    if ts.minute is None:
        text = text[:10]
    elif ts.second is None:
        text = text[:12]
    if ts.fraction:
        text += "." + ts.fraction
    m = _TS_RE.match(text + tz)
    assert m is not None
    return TimeStamp(m)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _valid_digits(v: str) -> bool:
    """Whether ``YYYY[MM[DD[HH[MM[SS]]]]]`` (ASCII digits, even length) is a real date and
    time: the usual timestamp, checked on the digits without parse_ts (the same verdict as its
    ``datetime`` check; two-digit strings compare as their numbers)."""
    n = len(v)
    if n not in _DIGIT_LENGTHS or not (v.isdigit() and v.isascii()) or v[:4] == "0000":
        return False
    if n >= 6:
        last = _MONTH_DAYS.get(v[4:6])
        if last is None:
            return False
        if n >= 8:
            day = v[6:8]
            if (
                day == "00"
                or day > last
                or (day == "29" and last == "29" and not calendar.isleap(int(v[:4])))
            ):
                return False
    return (
        (n < 10 or v[8:10] < "24") and (n < 12 or v[10:12] < "60") and (n < 14 or v[12:14] < "60")
    )


def to_da(value: str, timezone: str | None = None) -> str:
    """TS → DA ``YYYYMMDD``; "" for an empty value; ConvertFault when the day is missing."""
    if not value:
        return ""
    if len(value) >= 8 and _valid_digits(value):  # no offset: nothing to shift
        return value[:8]
    ts = parse_ts(value, timezone)
    if ts.day is None:
        raise ConvertFault("found a timestamp without a day, expected YYYYMMDD")
    return ts.year + (ts.month or "") + ts.day


def to_tm(value: str, timezone: str | None = None) -> str:
    """TS → TM ``HHMM[SS[.F]]`` at the precision sent; "" when the value has no time."""
    if not value:
        return ""
    if _valid_digits(value):  # no offset: nothing to shift
        return value[8:]
    ts = parse_ts(value, timezone)
    if ts.hour is None:
        return ""
    out = ts.hour + (ts.minute or "")
    if ts.minute is not None and ts.second is not None:
        out += ts.second
        if ts.fraction:
            out += "." + ts.fraction
    return out


def to_dt(value: str, timezone: str | None = None) -> str:
    """TS → DT ``YYYYMMDDHHMMSS[.F][&ZZXX]``, keeping (or shifting to ``timezone``) the offset."""
    if not value:
        return ""
    ts = parse_ts(value, timezone)
    out = ts.year + (ts.month or "") + (ts.day or "") + (ts.hour or "") + (ts.minute or "")
    out += ts.second or ""
    if ts.fraction and ts.second:
        out += "." + ts.fraction
    return out + (ts.tz or "")


def to_sex(value: str, table: dict[str, str] | None = None) -> str:
    """HL7 administrative sex → DICOM PatientSex; ConvertFault for a code not in the table."""
    if not value:
        return ""
    t = SEX_CODES if table is None else table
    try:
        return t[value.strip().upper()]
    except KeyError:
        raise ConvertFault(
            "found a code not in HL7 table 0001, expected M, F, O, U, A or N"
        ) from None


def components_to_pn(parts: Sequence[str]) -> str:
    """Join name parts in PN order, dropping trailing empty components (PS3.5 §6.2.1.1)."""
    out = "^".join(p.split("&", 1)[0] for p in parts)
    return out.rstrip("^")
