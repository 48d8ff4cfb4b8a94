"""broker check (validation + mapping tests) and broker route (dry run)."""

from __future__ import annotations

import json
from pathlib import Path

from broker.routing import RouteEngine, check, dry_run, load_definitions, read_message

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_set_passes() -> None:
    report = check(ROOT / "routes", ROOT / "mappings", {"pacs"})
    assert report.ok, "\n".join(report.errors)
    assert report.tests_run >= 13 and report.tests_failed == 0
    # ehr is used by a route but not configured: a warning, not an error (DESIGN §6a)
    assert any("'ehr' is not configured" in w for w in report.warnings)


def test_failing_mapping_test_gives_readable_diff(tree: Path) -> None:
    (tree / "mappings" / "tests" / "zz.yaml").write_text(
        "tests:\n"
        "  - name: wrong accession\n"
        "    message: ../../samples/orm_o01_v231.hl7\n"
        "    expect:\n"
        "      items:\n"
        "        - AccessionNumber: WRONG\n"
        "          ScheduledProcedureStepSequence: {Modality: MR}\n")
    report = check(tree / "routes", tree / "mappings", ())
    assert not report.ok and report.tests_failed == 1
    text = "\n".join(report.errors)
    assert "zz.yaml:2: test 'wrong accession' failed" in text
    assert "item[0].AccessionNumber: expected 'WRONG', got 'ACC26110001'" in text
    assert "item[0].ScheduledProcedureStepSequence[0].Modality: expected 'MR', got 'CT'" in text


def test_dry_run_is_json() -> None:
    engine = RouteEngine(load_definitions(ROOT / "routes", ROOT / "mappings"), {"pacs"})
    out = dry_run(engine, read_message(ROOT / "samples" / "orm_o01_v231_xo.hl7"))
    json.dumps(out)
    assert out["route"] == "orm-to-worklist,orm-changes-to-pacs"
    kinds = [e["effect"] for e in out["effects"]]
    assert kinds == ["order_change", "worklist_upsert", "skipped"]
    assert out["effects"][2]["action"] == "publish:events"  # no events destination here
    assert out["effects"][1]["items"][0]["00080050"]["Value"] == ["ACC26110001"]
    (pacs,) = out["effects"][0]["messages"]
    assert pacs["destination"] == "pacs"
    assert pacs["message"].startswith("MSH|^~\\&|BROKER|HOSP|PACS|")
