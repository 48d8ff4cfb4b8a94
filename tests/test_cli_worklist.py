"""``broker worklist``: import (wlmscpfs files), ls, show (redacted), export, explain."""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from broker.cli import main
from tests.redis_server import RedisServer

EXAMPLES = Path("/usr/share/doc/dcmtk/examples")


def _dump_to_dcm(dump: Path, out: Path) -> Path:
    text = gzip.decompress(dump.read_bytes()) if dump.suffix == ".gz" else dump.read_bytes()
    plain = out.with_suffix(".dump")
    plain.write_bytes(text)
    subprocess.run(["/usr/bin/dump2dcm", str(plain), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(params=["sqlite", "redis"])
def imported(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """The OFFIS example worklist imported into each store backend in turn."""
    store = "sqlite:///b.db"
    server = None
    if request.param == "redis":
        server = RedisServer(tmp_path / "redis").start()
        store = server.url
    folder = tmp_path / "wlmscpfs" / "OFFIS"
    folder.mkdir(parents=True)
    for dump in sorted((EXAMPLES / "wlistdb" / "OFFIS").glob("*.dump*")):
        _dump_to_dcm(dump, folder / (dump.name.split(".")[0] + ".wl"))
    config = tmp_path / "broker.yaml"
    config.write_text(f"store: {store}\n")
    result = CliRunner().invoke(main, ["worklist", "import", "-c", str(config), str(folder)])
    assert result.exit_code == 0, result.output
    assert "10 of 10 files imported" in result.output
    yield config
    if server is not None:
        server.stop()


def test_ls_redacts_patient_ids_unless_asked(imported: Path) -> None:
    runner = CliRunner()
    rows = [json.loads(line) for line in runner.invoke(
        main, ["worklist", "ls", "-c", str(imported), "--json"]).output.splitlines()]  # fmt: skip
    assert len(rows) == 10
    assert {r["patient_id"] for r in rows} == {"<redacted>"}
    shown = runner.invoke(main, ["worklist", "ls", "-c", str(imported), "--json", "--show-phi"])
    assert "<redacted>" not in shown.output
    one = runner.invoke(main, ["worklist", "ls", "-c", str(imported), "--accession", "00003"])
    assert len(one.output.splitlines()) == 1


def test_show_redacts_patient_attributes(imported: Path) -> None:
    out = json.loads(CliRunner().invoke(main, ["worklist", "show", "-c", str(imported), "1"]).output)
    assert out["item"]["00100010"]["Value"] == ["<redacted>"]
    assert out["item"]["00080050"]["Value"] == ["00000"]


def test_export_round_trips_through_import(imported: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["worklist", "export", "-c", str(imported), str(tmp_path / "out")])
    assert "10 item(s) written" in result.output
    again = tmp_path / "again.yaml"
    again.write_text("store: sqlite:///again.db\n")
    result = runner.invoke(main, ["worklist", "import", "-c", str(again), str(tmp_path / "out")])
    assert "10 of 10 files imported" in result.output


def test_explain_names_the_keys_that_excluded_each_item(imported: Path, tmp_path: Path) -> None:
    dump = tmp_path / "q.dump"
    dump.write_text(
        "(0008,0050) SH [00003]\n(0040,0100) SQ\n(fffe,e000) na\n(0008,0060) CS [MR]\n"
        "(fffe,e00d) na\n(fffe,e0dd) na\n"
    )
    query = tmp_path / "q.dcm"
    subprocess.run(["/usr/bin/dump2dcm", str(dump), str(query)], check=True, capture_output=True)
    result = CliRunner().invoke(main, ["worklist", "explain", "-c", str(imported), str(query)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # item 4 (accession 00003) is a CR step: only the modality excludes it
    assert "item 4: excluded by ScheduledProcedureStepSequence.Modality (single value)" in lines
    assert all("AccessionNumber" in line for line in lines if not line.startswith("item 4:"))
