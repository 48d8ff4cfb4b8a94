"""``broker queue``: ls, dead (redacted), retry (replay), purge, pause/resume on a real store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from broker import cli
from broker.effects import Enqueue
from broker.queue import Ordering, State
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_journal import JOURNAL_SCHEMA
from broker.storage.sqlite_queue import SqliteQueue


def msg(cid: str) -> bytes:
    return f"MSH|^~\\&|BROKER|RAD|PACS|RAD|20260101||ORM^O01|{cid}|P|2.3\rPID|1||MR7\r".encode()


@pytest.fixture
def main() -> click.Group:
    """The broker's main command (the queue group attached by cli.py), which turns the
    broker's own errors into one-line messages."""
    return cli.main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A store with pacs: 2 queued (one retrying), 3 dead; ehr: nothing."""
    path = tmp_path / "broker.yaml"
    path.write_text(
        "store: sqlite:///b.db\n"
        "destinations:\n"
        "  pacs: {type: mllp, host: 127.0.0.1, port: 2576}\n"
        "  ehr: {type: http, url: 'http://127.0.0.1:9/x'}\n"
    )

    async def seed() -> None:
        async with SqliteDatabase(tmp_path / "b.db", schemas=[JOURNAL_SCHEMA]) as db:
            q = SqliteQueue(db)
            for cid, key in [
                ("D1", "MR1"),
                ("D2", "MR2"),
                ("D3", "MR1"),
                ("Q1", "MR3"),
                ("Q2", "MR3"),
            ]:
                await q.enqueue(Enqueue("pacs", msg(cid), key))
            errors = ["answered AR: bad order", "answered AE: busy (gave up)", "answered AR: no"]
            for error in errors:
                (e,) = await q.claim("pacs", "x", ordering=Ordering.NONE)
                assert await q.bury("x", e.id, error)
            e, rest = await q.claim("pacs", "x", run=2)
            assert await q.retry_later("x", e.id, "refused", e.created_at + 3600)
            assert await q.release("x", [rest.id]) == 1

    asyncio.run(seed())
    return path


def run(main: click.Group, *args: str) -> Result:
    return CliRunner().invoke(main, ["queue", *args])


def test_ls(main: click.Group, config: Path) -> None:
    result = run(main, "ls", "-c", str(config), "--json")
    assert result.exit_code == 0, result.output
    rows = {r["destination"]: r for r in map(json.loads, result.output.splitlines())}
    assert set(rows) == {"pacs", "ehr"}
    pacs = rows["pacs"]
    assert (pacs["type"], pacs["state"], pacs["depth"], pacs["retry"], pacs["dead"]) == (
        "mllp",
        "retrying",
        2,
        1,
        3,
    )
    assert pacs["attempts"] == 1 and pacs["since"]
    assert rows["ehr"]["state"] == "up" and rows["ehr"]["depth"] == 0
    text = run(main, "ls", "-c", str(config)).output
    assert "retrying" in text and "1 attempts" in text


def test_dead_is_redacted_unless_asked(main: click.Group, config: Path) -> None:
    result = run(main, "dead", "-c", str(config), "--json")
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["message"] for r in rows] == ["ORM^O01 D1", "ORM^O01 D2", "ORM^O01 D3"]
    assert {r["ordering_key"] for r in rows} == {"<redacted>"}
    assert "MR1" not in result.output and "payload" not in rows[0]
    assert rows[1]["last_error"] == "answered AE: busy (gave up)" and rows[1]["attempts"] == 1
    shown = run(main, "dead", "pacs", "-c", str(config), "--show-phi", "--json")
    assert json.loads(shown.output.splitlines()[0])["ordering_key"] == "MR1"
    assert run(main, "dead", "ehr", "-c", str(config)).output.strip() == "no dead letters"


def test_retry_one_filter_all(main: click.Group, config: Path) -> None:
    refused = run(main, "retry", "pacs", "-c", str(config))
    assert refused.exit_code == 2 and "say which dead letters" in refused.output
    both = run(main, "retry", "pacs", "-c", str(config), "--all", "--id", "1")
    assert both.exit_code == 2
    one = run(main, "retry", "pacs", "-c", str(config), "--id", "2")
    assert one.exit_code == 0 and "1 dead letter(s) of pacs queued again" in one.output
    by_error = run(main, "retry", "pacs", "-c", str(config), "--error", "answered ar")
    assert "2 dead letter(s)" in by_error.output
    assert "0 dead letter(s)" in run(main, "retry", "pacs", "-c", str(config), "--all").output
    rows = run(main, "ls", "-c", str(config), "--json").output.splitlines()
    pacs = next(r for r in map(json.loads, rows) if r["destination"] == "pacs")
    assert pacs["dead"] == 0 and pacs["depth"] == 5


def test_purge_dead(main: click.Group, config: Path) -> None:
    missing = run(main, "purge", "pacs", "-c", str(config))
    assert missing.exit_code == 2 and "--dead" in missing.output
    one = run(main, "purge", "pacs", "--dead", "--key", "MR2", "-c", str(config))
    assert "1 dead letter(s) of pacs deleted" in one.output
    rest = run(main, "purge", "pacs", "--dead", "-c", str(config))
    assert "2 dead letter(s) of pacs deleted" in rest.output


def test_pause_resume_and_unknown_destinations(main: click.Group, config: Path) -> None:
    assert run(main, "pause", "pacs", "-c", str(config)).output.strip() == "pacs paused"
    rows = run(main, "ls", "-c", str(config), "--json").output.splitlines()
    pacs = next(r for r in map(json.loads, rows) if r["destination"] == "pacs")
    assert pacs["state"] == "paused"

    async def paused() -> bool:
        async with SqliteDatabase(config.parent / "b.db") as db:
            return (await SqliteQueue(db).stats())["pacs"].paused

    assert asyncio.run(paused())
    assert run(main, "resume", "pacs", "-c", str(config)).output.strip() == "pacs resumed"
    assert not asyncio.run(paused())
    typo = run(main, "pause", "pcas", "-c", str(config))
    assert typo.exit_code == 1
    assert "no destination 'pcas' in the config or the store (known: ehr, pacs)" in typo.output


def test_no_store_yet(main: click.Group, tmp_path: Path) -> None:
    config = tmp_path / "broker.yaml"
    config.write_text("store: sqlite:///none.db\n")
    result = run(main, "ls", "-c", str(config))
    assert result.exit_code == 1 and "no store at" in result.output


def test_states_are_strings_in_json() -> None:
    assert json.dumps(State.DEAD) == '"dead"'


def test_dead_json_entries_show_their_op_or_type_and_id(tmp_path: Path) -> None:
    from broker.delivery.worker import entry_label
    from broker.queue import Entry

    job = Entry(1, "pacs", b'{"op":"update_patient","id":"rc-7","set":{"PatientName":"X"}}',
                content_type="application/vnd.broker.reconcile+json")  # fmt: skip
    event = Entry(2, "events", b'{"type":"order.scheduled","id":"evt-1-1"}',
                  content_type="application/json")  # fmt: skip
    assert entry_label(job) == "update_patient rc-7"  # and not the patient's name
    assert entry_label(event) == "order.scheduled evt-1-1"
    broken = Entry(3, "events", b"{not json", content_type="application/json")
    assert entry_label(broken) == "<9 bytes application/json>"
