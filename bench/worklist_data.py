"""Realistic worklist items for benchmarks and tests: 50 stations, 30 days, 5 modalities.

``generate(n)`` yields n DICOM JSON items spread evenly over 50 station AE titles
(``STN01``..``STN50``, each with one modality of CT/MR/US/CR/DX), 30 days around today
(10 days back, 20 ahead), 07:00-19:00, with patient names in ASCII, Latin-1 (German, French)
and beyond Latin-1 (Greek, Cyrillic, Japanese), so both answer character sets occur.
``make_item`` builds one item from keyword values. Load a store with
``SqliteWorklistStore.bulk_load(generate(n))``.
"""

from __future__ import annotations

import datetime as _dt
import random
from collections.abc import Iterator
from typing import Any

MODALITIES = ("CT", "MR", "US", "CR", "DX")
STATIONS = tuple(f"STN{n:02d}" for n in range(1, 51))
DAYS = 30
FAMILY = (
    "SMITH", "JONES", "MÜLLER", "GARCÍA", "DUBOIS", "LEFÈVRE", "NOWAK", "ØSTERGÅRD",
    "ΠΑΠΑΔΟΠΟΥΛΟΣ", "ИВАНОВ", "山田", "O'BRIEN", "SCHMIDT", "ROSSI", "BROWN", "WILSON",
)  # fmt: skip
GIVEN = ("JOHN", "ANNA", "JÖRG", "FRANÇOIS", "MARÍA", "LUKAS", "ΕΛΕΝΗ", "ДМИТРИЙ", "太郎", "EVA")


def _pn(name: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]} if name else {"vr": "PN"}


def _v(vr: str, value: str) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]} if value else {"vr": vr}


def make_item(
    *,
    accession: str = "A0001",
    patient_id: str = "P0001",
    issuer: str = "",
    name: str = "DOE^JANE",
    birth_date: str = "19700101",
    sex: str = "F",
    station: str | list[str] = "STN01",
    modality: str = "CT",
    date: str = "20240105",
    time: str = "093000",
    sps_id: str = "SPS1",
    rp_id: str = "RP1",
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    status: str = "SCHEDULED",
    description: str = "CT HEAD",
    physician: str = "HOUSE^GREGORY",
    station_name: str = "",
) -> dict[str, Any]:
    """One worklist item as DICOM JSON; empty strings make Type 2 attributes empty."""
    aes = station if isinstance(station, list) else [station]
    step: dict[str, Any] = {
        "00080060": _v("CS", modality),
        "00400001": {"vr": "AE", "Value": aes} if any(aes) else {"vr": "AE"},
        "00400002": _v("DA", date),
        "00400003": _v("TM", time),
        "00400006": _pn(physician),
        "00400007": _v("LO", description),
        "00400009": _v("SH", sps_id),
        "00400010": _v("SH", station_name),
        "00400011": {"vr": "SH"},
    }
    if status:
        step["00400020"] = _v("CS", status)
    item: dict[str, Any] = {
        "00080050": _v("SH", accession),
        "00080090": {"vr": "PN"},
        "00100010": _pn(name),
        "00100020": _v("LO", patient_id),
        "00100030": _v("DA", birth_date),
        "00100040": _v("CS", sex),
        "0020000D": _v("UI", study_uid),
        "00321032": _pn(physician),
        "00321060": _v("LO", description),
        "00400100": {"vr": "SQ", "Value": [step]},
        "00401001": _v("SH", rp_id),
        "00401003": _v("SH", "ROUTINE"),
    }
    if issuer:
        item["00100021"] = _v("LO", issuer)
    return item


def generate(n: int, *, seed: int = 0, today: _dt.date | None = None) -> Iterator[dict[str, Any]]:
    """``n`` items spread over 50 stations and 30 days (today - 10 .. today + 19)."""
    rng = random.Random(seed)
    start = (today or _dt.date.today()) - _dt.timedelta(days=10)
    for i in range(n):
        station_no = i % len(STATIONS)
        day = (i // len(STATIONS)) % DAYS
        slot = i // (len(STATIONS) * DAYS)
        minutes = 7 * 60 + (slot * 7 + rng.randrange(7)) % (12 * 60)
        modality = MODALITIES[station_no % len(MODALITIES)]
        yield make_item(
            accession=f"ACC{i:08d}",
            patient_id=f"PID{rng.randrange(n * 2 + 1):08d}",
            issuer="HOSP",
            name=f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}",
            birth_date=f"{rng.randrange(1930, 2020)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}",
            sex=rng.choice("MF"),
            station=STATIONS[station_no],
            modality=modality,
            date=(start + _dt.timedelta(days=day)).strftime("%Y%m%d"),
            time=f"{minutes // 60:02d}{minutes % 60:02d}00",
            sps_id=f"SPS{i:08d}",
            rp_id=f"RP{i:08d}",
            study_uid=f"1.2.826.0.1.3680043.8.498.{i + 1}",
            description=f"{modality} EXAM {i % 17}",
            station_name=f"ROOM{station_no + 1}",
        )
