"""VR rules on output: truncate or reject, and report."""

from __future__ import annotations

import pytest

from broker.mapping.vr import VRFault, make_fixer, resolve_attribute, to_json_value


def test_resolve() -> None:
    assert resolve_attribute("PatientName") == ("00100010", "PatientName", "PN")
    assert resolve_attribute("00080050") == ("00080050", "AccessionNumber", "SH")


def test_sh_truncate_and_reject() -> None:
    fix = make_fixer("SH", "truncate", "AccessionNumber")
    assert fix("A" * 16) == ("A" * 16, "")
    v, w = fix("A" * 20)
    assert v == "A" * 16 and "AccessionNumber" in w and "AAAA" not in w
    with pytest.raises(VRFault, match="AccessionNumber"):
        make_fixer("SH", "reject", "AccessionNumber")("A" * 17)


def test_cs_upper_and_pn_groups() -> None:
    assert make_fixer("CS", "reject", "Modality")("ct") == ("CT", "")
    v, w = make_fixer("PN", "truncate", "PatientName")("X" * 70 + "^Y")
    assert len(v.split("=")[0]) == 64 and w


def test_ui_and_dates_never_truncated() -> None:
    with pytest.raises(VRFault):
        make_fixer("UI", "truncate", "StudyInstanceUID")("1.2." + "3" * 70)
    with pytest.raises(VRFault):
        make_fixer("DA", "truncate", "PatientBirthDate")("2026-01-01")


def test_json_value() -> None:
    assert to_json_value("PN", "A^B") == [{"Alphabetic": "A^B"}]
    assert to_json_value("IS", "1\\2") == [1, 2]
