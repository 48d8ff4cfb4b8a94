"""The compiled mapping's fast paths give exactly what the accessor and the converters give.

Compiled getters read plain segments by index (broker/mapping/scope.py); these tests hold them
to ``Message.get`` on segments with escapes, subcomponents, HL7 nulls, repetitions and odd
delimiters, and the digits-only timestamp check to the ``datetime`` check of ``parse_ts``.
"""

from __future__ import annotations

import itertools
import random

import pytest

from broker.hl7.message import Message
from broker.mapping import Scope, parse_path
from broker.mapping.compiler import path_getter
from broker.mapping.convert import ConvertFault, _valid_digits, parse_ts

BASE = (
    "MSH|^~\\&|RIS|HOSP|BROKER|HOSP|20261102083015||ORM^O01|CTL1|P|2.3.1\r"
    "PID|1||MR1^^^HOSP^MR~SS1^^^SSA^SS||DOE^JANE^Q^^MS||19580312|F\r"
    "PV1|1|O|CT^CT1^01||||123^OSWALD^HENRY^T^^DR\r"
    "ORC|NW|PL1^EHR|FL1^RIS||SC||1^once^^20261103093000^^R\r"
    "OBR|1|PL1^EHR|FL1^RIS|70450^CT HEAD^C4|||||||||||||ACC1|RP1|SPS1||||CT\r"
    "ZDS|1.2.3^RIS^Application^DICOM"
)
VALUES = [
    "",
    '""',
    "A",
    "A^B^C",
    "A~B^C~D",
    "A&B^C&D",
    "A\\T\\B",
    "A\\X41\\B^C",
    "^^X",
    "~X",
    "X~",
    "A^B&C&D~E",
]
PATHS = [
    f"{s}-{f}{r}{c}"
    for s, f in (
        ("PID", 3),
        ("PID", 5),
        ("OBR", 4),
        ("MSH", 3),
        ("MSH", 9),
        ("ZDS", 1),
        ("PV1", 3),
        ("OBR", 99),
    )
    for r in ("", "(2)")
    for c in ("", ".1", ".2", ".3", ".1.1", ".2.2", ".4.1")
]
PATHS += ["MSH-1", "MSH-2", "MSH-2.1", "NTE-1", "OBR(2)-4.1", "PID-3(*).1", "OBR-4(*)"]


def _variants() -> list[str]:
    rnd = random.Random(9)
    out = [
        BASE,
        BASE.replace("|", "#")
        .replace("^", "$")
        .replace("~", "*")
        .replace("\\&", "/%")
        .replace("&", "%"),
        BASE.replace("\r", "\rPIDX|1|bad\r", 1),
        BASE + "\rOBR|2|PL2|FL2|71250^CT CHEST^C4",
        BASE.replace("ZDS|", "ZDS\rZDS|"),
    ]
    segs = BASE.split("\r")
    for _ in range(300):
        s = list(segs)
        i = rnd.randrange(len(s))
        fields = s[i].split("|")
        f = rnd.randrange(2 if i == 0 else 1, len(fields) + 2)
        fields += [""] * (f + 1 - len(fields))
        fields[f] = rnd.choice(VALUES)
        s[i] = "|".join(fields)
        out.append("\r".join(s))
    return out


@pytest.mark.parametrize("text", _variants())
def test_getters_read_what_message_get_reads(text: str) -> None:
    m = Message.parse(text)
    scope = Scope(m)
    for p in PATHS:
        want = m.get_all(p) if "(*)" in p else [m.get(p)]
        if "(*)" in p:
            expect = "\\".join(v for v in want if v and v != '""')
        else:
            expect = "" if want[0] == '""' else want[0]
        assert path_getter(parse_path(p))(scope) == expect, p


def test_digits_check_agrees_with_parse_ts() -> None:
    parts = ["0000", "0001", "1900", "2000", "2024", "2026"]
    tails = ["", "00", "01", "02", "12", "13", "28", "29", "30", "31", "23", "24", "59", "60"]
    for year in parts:
        for n in range(6):
            for tail in (
                itertools.product(tails[1:], repeat=n)
                if n < 3
                else [("02", "29", "23", "59", "59")[:n], ("13", "01", "00", "00", "00")[:n]]
            ):
                v = year + "".join(tail)
                try:
                    ok = parse_ts(v + "+0000") is not None  # the regex and datetime path
                except ConvertFault:
                    ok = False
                assert _valid_digits(v) is ok, v
