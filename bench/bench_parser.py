"""Benchmark: the lazy HL7 accessor against python-hl7, hl7apy and hl7kit, in one run.

    python bench/bench_parser.py [--seconds N]

Each library parses the same ~530-byte ORM^O01 (IHE RAD-4) and reads the seven fields the ingest
path reads (MSH-10, PID-3.1, PID-5.1, ORC-1, OBR-4.2, OBR-18, ZDS-1.1); every library's answers
are checked, and a wrong one is reported on its own row. Two inputs are timed:

* str   -- the decoded text: what each parser costs on the same input;
* bytes -- the frame as MLLP delivers it (ISO 8859-1, MSH-18 = 8859/1): ours includes
  decode_frame (MSH-18 lookup + decode); python-hl7 and hl7apy are told the encoding, since they
  cannot read MSH-18 themselves; hl7kit decodes by itself.

Runs on one core (the process is pinned to one CPU where the OS allows it); best of five rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hl7  # python-hl7

from broker.hl7.charset import decode_frame
from broker.hl7.message import Message, compile_path

SEGMENTS = [
    "MSH|^~\\&|RIS|RADIOLOGY|BROKER|HOSPITAL|20240611083000||ORM^O01^ORM_O01|MSG00001|P|2.4"
    "|||AL|NE||8859/1",
    "PID|1||123456^^^HOSP^MR~987654321^^^NHS^NH||MÜLLER^HANS^PETER||19650412|M|||"
    "HAUPTSTRASSE 1^^BERLIN^^10115^DE",
    "PV1|1|O|RAD^CT1^01||||1234^SMITH^JOHN",
    "ORC|NW|ORD448811|ACC448811||SC||^^^20240612090000^^R||20240611082900",
    "OBR|1|ORD448811|ACC448811|CTCHABD^CT THORAX\\T\\ABDOMEN^L||20240611082900"
    "||||||||||1234^SMITH^JOHN||ACC448811|RP448811|SPS448811||||CT",
    "ZDS|1.2.826.0.1.3680043.8.498.12345678901234567890^BROKER^Application^DICOM",
]
TEXT = "\r".join(SEGMENTS) + "\r"
RAW = TEXT.encode("latin-1")

PICKS = ["MSH-10", "PID-3.1", "PID-5.1", "ORC-1", "OBR-4.2", "OBR-18", "ZDS-1.1"]
EXPECTED = [
    "MSG00001",
    "123456",
    "MÜLLER",
    "NW",
    "CT THORAX&ABDOMEN",  # \T\ is the escaped subcomponent separator
    "ACC448811",
    "1.2.826.0.1.3680043.8.498.12345678901234567890",
]
_PATHS = [compile_path(p) for p in PICKS]
# python-hl7 accessor tuples: (segment, segment_num, field, repetition, component, subcomponent)
_HL7_KEYS = [("MSH", 1, 10, 1, 1, 1), ("PID", 1, 3, 1, 1, 1), ("PID", 1, 5, 1, 1, 1),
             ("ORC", 1, 1, 1, 1, 1), ("OBR", 1, 4, 1, 2, 1), ("OBR", 1, 18, 1, 1, 1),
             ("ZDS", 1, 1, 1, 1, 1)]


# -- one function per library: parse one message, return the seven picks --------------------

def ours_str() -> list[str]:
    get = Message.parse(TEXT).get
    return [get(p) for p in _PATHS]


def ours_bytes() -> list[str]:
    get = Message.parse(decode_frame(RAW).text).get
    return [get(p) for p in _PATHS]


def python_hl7(src: str | bytes) -> list[str]:
    msg = hl7.parse(src, encoding="latin-1")
    return [msg.extract_field(*key) for key in _HL7_KEYS]


def hl7apy_picks(src: str | bytes) -> list[str]:
    from hl7apy.parser import parse_message

    text = src.decode("latin-1") if isinstance(src, bytes) else src
    m = parse_message(text, find_groups=False)
    # hl7apy returns values as written: it resolves no escape sequences.
    return [
        m.msh.msh_10.value,
        m.pid.pid_3[0].children[0].value,
        m.pid.pid_5[0].children[0].value,
        m.orc.orc_1.value,
        m.obr.obr_4.children[1].value,
        m.obr.obr_18.value,
        m.zds.children[0].children[0].value,
    ]


def hl7kit_picks(kit: Any, src: str | bytes) -> list[str]:
    msg = kit.parse(src)
    return [msg.get(p) or "" for p in PICKS]


# -- timing -------------------------------------------------------------------------------------

def measure(fn: Callable[[], object], seconds: float) -> float:
    """Messages per second: best of five rounds of ``seconds / 5`` each."""
    fn()
    batch = 1
    while True:  # size a batch to ~10 ms so timer overhead does not count
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        if time.perf_counter() - t0 > 0.01:
            break
        batch *= 2
    best = 0.0
    for _ in range(5):
        done = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds / 5
        while True:
            for _ in range(batch):
                fn()
            done += batch
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, done / (now - t0))
    return best


def pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity here)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="time per library and input (default 2; hl7apy gets a quarter)")
    args = parser.parse_args(argv)

    print(f"message: ORM^O01, {len(RAW)} bytes, {len(SEGMENTS)} segments, MSH-18 8859/1")
    print(f"python {platform.python_version()} on {platform.machine()}, {pin_to_one_core()}")
    print(f"picks: {', '.join(PICKS)}\n")

    hl7kit: Any = None
    try:
        import hl7kit
    except ImportError:
        print("hl7kit is not installed; to compare with it: pip install hl7kit\n")

    # name, input, function, time share
    runs: list[tuple[str, str, Callable[[], list[str]], float]] = [
        ("broker Message", "str", ours_str, 1.0),
        ("python-hl7 hl7.parse", "str", lambda: python_hl7(TEXT), 0.5),
        ("hl7apy parse_message", "str", lambda: hl7apy_picks(TEXT), 0.25),
        ("broker Message", "bytes", ours_bytes, 1.0),
        ("python-hl7 hl7.parse", "bytes", lambda: python_hl7(RAW), 0.5),
        ("hl7apy parse_message", "bytes", lambda: hl7apy_picks(RAW), 0.25),
    ]
    if hl7kit is not None:
        kit = hl7kit
        runs.insert(1, ("hl7kit (Rust)", "str", lambda: hl7kit_picks(kit, TEXT), 1.0))
        runs.insert(5, ("hl7kit (Rust)", "bytes", lambda: hl7kit_picks(kit, RAW), 1.0))

    rates: dict[tuple[str, str], float] = {}
    print(f"{'library':<24}{'input':<7}{'msg/s':>11}{'µs/msg':>9}  values")
    for name, kind, fn, share in runs:
        got = fn()
        wrong = [f"{p}={v!r} (expected {e!r})"
                 for p, v, e in zip(PICKS, got, EXPECTED, strict=True) if v != e]
        rate = measure(fn, args.seconds * share)
        rates[(name, kind)] = rate
        status = "ok" if not wrong else "WRONG"
        print(f"{name:<24}{kind:<7}{rate:>11,.0f}{1e6 / rate:>9.1f}  {status}")
        for w in wrong:
            print(f"{'':<24}{'':<7}{'':>20}  WARNING: {w}")

    print()
    for kind in ("str", "bytes"):
        ours = rates[("broker Message", kind)]
        line = f"{kind:<6} ours / python-hl7 = {ours / rates[('python-hl7 hl7.parse', kind)]:6.1f}x"
        line += f"   ours / hl7apy = {ours / rates[('hl7apy parse_message', kind)]:6.1f}x"
        if hl7kit is not None:
            line += f"   ours / hl7kit = {ours / rates[('hl7kit (Rust)', kind)]:5.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
