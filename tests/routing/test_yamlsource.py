"""Errors name file:line, field, found and expected; all errors of all files at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.routing import DefinitionsError, load_definitions


def test_all_errors_with_lines(tree: Path) -> None:
    (tree / "routes" / "zz-bad.yaml").write_text(
        "routes:\n"
        "  - name: bad\n"
        "    match: {message_type: ORM}\n"
        "    actions:\n"
        "      - forward: {to: pacs}\n"          # line 5: mapping missing
        "      - worklist: {op: sideways}\n"     # line 6: bad literal
        "      - drop: {reason: x}\n"
        "        reconcile: {}\n"                # two kinds in one action
        "    colour: red\n"                      # unknown field
    )
    (tree / "mappings" / "zz-bad.yaml").write_text(
        "name: zz\n"
        "attributes:\n"
        "  PatientID: PID-3..1\n"                # line 3: bad path
        "  NotAKeyword: PID-3\n"                 # line 4: unknown keyword (compile)
    )
    with pytest.raises(DefinitionsError) as exc:
        load_definitions(tree / "routes", tree / "mappings")
    errors = exc.value.errors
    text = "\n".join(errors)
    assert any(e.startswith(f"{tree}/routes/zz-bad.yaml:5: routes[0].actions[0].forward.mapping:"
                            " found nothing, expected") for e in errors), text
    assert any(":6: routes[0].actions[1].worklist.op: found 'sideways', expected one of" in e
               for e in errors), text
    assert any(":7: routes[0].actions[2]: found 2 action kinds" in e for e in errors), text
    assert any(":9: routes[0].colour: found an unknown field" in e for e in errors), text
    assert any("mappings/zz-bad.yaml:3: attributes.PatientID.from: found 'PID-3..1', expected"
               in e for e in errors), text
    assert "pydantic" not in text and "input_value" not in text


def test_compile_errors_have_lines(tree: Path) -> None:
    (tree / "mappings" / "zz.yaml").write_text(
        "name: zz\nattributes:\n  PatientID: PID-3\n  NotAKeyword: PID-3\n")
    with pytest.raises(DefinitionsError) as exc:
        load_definitions(tree / "routes", tree / "mappings")
    assert any(e.endswith("zz.yaml:4: attributes.NotAKeyword: found 'NotAKeyword', expected a "
                          "DICOM keyword (PS3.6) or an 8-digit tag") for e in exc.value.errors)


def test_yaml_syntax_error(tree: Path) -> None:
    (tree / "routes" / "broken.yaml").write_text("routes:\n  - name: [unclosed\n")
    with pytest.raises(DefinitionsError) as exc:
        load_definitions(tree / "routes", tree / "mappings")
    assert any("broken.yaml:" in e and "(yaml)" in e for e in exc.value.errors)
