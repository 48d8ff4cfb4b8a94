"""The command line: check, route (dry run), send, journal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from broker.cli import main

ROOT = Path(__file__).resolve().parent.parent


def config_in(tmp_path: Path, extra: str = "") -> Path:
    shutil.copytree(ROOT / "routes", tmp_path / "routes")
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings")
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    path = tmp_path / "broker.yaml"
    path.write_text(f"store: sqlite:///var/b.db\nroutes: routes/\nmappings: mappings/\n{extra}")
    return path


def test_check_passes_on_the_shipped_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["check", "--config", str(config_in(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "0 error(s)" in result.output
    assert "destination 'pacs' is not configured" in result.output  # DESIGN §6a: a warning


def test_check_names_file_line_and_field_of_an_error(tmp_path: Path) -> None:
    config = config_in(
        tmp_path, "destinations: {pacs: {type: mllp, host: 127.0.0.1, port: 2576}}\n"
    )
    route_file = next((tmp_path / "routes").glob("*.yaml"))
    text = route_file.read_text()
    route_file.write_text(text.replace("trigger: O01", "trigger: {O01: 1}", 1))
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 1
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "trigger: O01" in s)
    assert f"{route_file}:{line}" in result.output
    assert "trigger" in result.output


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        ("{type: bus, url: 'amqp://u:secret@host:notaport//'}", "destinations.events.url"),
        ("{type: mllp, host: 127.0.0.1}", "destinations.events.port"),
        ("{type: orthanc, url: 'ftp://x'}", "destinations.events.url"),
    ],
)
def test_check_refuses_a_destination_serve_would_refuse(
    tmp_path: Path, destination: str, expected: str
) -> None:
    config = config_in(tmp_path, f"destinations: {{events: {destination}}}\n")
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 1
    assert f"error: {expected}" in result.output
    assert "secret" not in result.output


def test_route_is_a_dry_run_that_prints_json(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    result = CliRunner().invoke(
        main, ["route", "--config", str(config), str(tmp_path / "samples" / "orm_o01_v231.hl7")]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["route"] == "orm-to-worklist" and out["ack"] == "AA"
    assert out["effects"][0]["effect"] == "worklist_upsert"
    assert not (tmp_path / "var" / "b.db").exists()  # nothing was changed or even created


def test_send_rejects_a_bad_address() -> None:
    result = CliRunner().invoke(main, ["send", "nowhere", str(ROOT / "samples" / "adt_a01.hl7")])
    assert result.exit_code == 2
    assert "expected HOST:PORT" in result.output


def test_check_refuses_a_missing_routes_folder(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text("routes: no-such-routes/\n")
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 1
    assert f"{tmp_path / 'no-such-routes'}: routes: found no such folder" in result.output


def test_attempt_timeout_is_a_destination_key(tmp_path: Path) -> None:
    from broker.delivery.worker import WorkerOptions

    assert WorkerOptions.from_mapping("d", {"attempt_timeout_s": 600}).attempt_timeout_s == 600
    config = config_in(
        tmp_path, "destinations: {pacs: {type: mllp, port: 2576, attempt_timeout_s: 0}}\n"
    )
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 1 and "destinations.pacs.attempt_timeout_s" in result.output


def test_check_warns_when_a_destination_type_cannot_take_an_action(tmp_path: Path) -> None:
    config = config_in(
        tmp_path,
        "destinations:\n"
        "  ehr: {type: bus, url: 'amqp://u:p@127.0.0.1:5672//'}\n"
        "  events: {type: mllp, port: 2999}\n",
    )
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 0, result.output  # warnings, not errors
    assert "destination 'ehr' is of type bus, which a forward action cannot send to" in (
        result.output
    )
    assert "destination 'events' is of type mllp, which a publish action" in result.output


def test_check_refuses_a_reconcile_to_an_hl7_pacs_without_a_mapping(tmp_path: Path) -> None:
    config = config_in(tmp_path, "destinations: {pacs: {type: mllp, port: 2576}}\n")
    route_file = next((tmp_path / "routes").glob("*.yaml"))
    text = route_file.read_text()
    route_file.write_text(text.replace("          mapping: pacs-adt\n", ""))
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 1
    assert "route 'patient-updates-to-pacs': reconcile.mapping: found nothing, expected an hl7" in (
        result.output
    )
