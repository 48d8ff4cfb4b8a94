"""The ingest pipeline on the real SQLite journal: commit-then-ACK, dedupe, every error answered."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import hl7
import pytest

from broker.admin.metrics import Metrics
from broker.effects import Enqueue, WorklistUpsert
from broker.errors import ConflictError
from broker.hl7.ack import AckError
from broker.hl7.message import Message
from broker.ingest.decision import AcceptAll, RouteDecision, Router
from broker.ingest.pipeline import IngestPipeline
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_journal import JOURNAL_SCHEMA, SqliteJournal
from tests.samples_index import SAMPLES_DIR

ORM = (
    "MSH|^~\\&|RIS|HOSP|BROKER|RAD|20261101120000||ORM^O01|{cid}|P|2.3.1\r"
    "PID|1||MR1^^^HOSP^MR||DOE^JANE\rORC|NW|PL1\rOBR|1|PL1||CT^CT HEAD\r"
)


class EnqueueRouter:
    """Every message queues one outbound copy (to count applications)."""

    def route(self, message: Message) -> RouteDecision:
        return RouteDecision(route="copy", effects=(Enqueue("pacs", message.text.encode(), "k"),))


class Fixed:
    def __init__(self, decision: RouteDecision) -> None:
        self.decision = decision

    def route(self, message: Message) -> RouteDecision:
        return self.decision


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., IngestPipeline]]:
    db = SqliteDatabase(tmp_path / "broker.db", schemas=[JOURNAL_SCHEMA])
    async with db:
        made: list[IngestPipeline] = []

        def factory(
            router: Router | None = None, appliers: dict[type, Any] | None = None
        ) -> IngestPipeline:
            journal = SqliteJournal(db, appliers)
            chosen = router or AcceptAll()
            pipeline = IngestPipeline(journal, lambda: chosen, Metrics())
            made.append(pipeline)
            return pipeline

        yield factory


def ack_of(raw: bytes | None, charset: str = "ascii") -> hl7.Message:
    assert raw is not None
    return hl7.parse(raw.decode(charset))


def outbox_count(pipeline: IngestPipeline) -> int:
    journal = pipeline.journal
    assert isinstance(journal, SqliteJournal)
    return int(journal.db.reader().execute("SELECT count(*) FROM outbox").fetchone()[0])


async def test_accepted_message_is_journaled_before_aa(make: Callable[..., IngestPipeline]) -> None:
    pipeline = make(EnqueueRouter())
    ack = ack_of(await pipeline.handle(ORM.format(cid="C1").encode(), "127.0.0.1:1", "ris"))
    assert str(ack.segment("MSA")[1]) == "AA" and str(ack.segment("MSA")[2]) == "C1"
    journal = pipeline.journal
    assert isinstance(journal, SqliteJournal)
    (entry,) = journal.find_control_id("C1")
    assert entry.status == "accepted" and entry.route == "copy"
    assert entry.raw == ORM.format(cid="C1").encode()
    assert outbox_count(pipeline) == 1


async def test_resent_message_is_acknowledged_but_not_applied_twice(
    make: Callable[..., IngestPipeline],
) -> None:
    pipeline = make(EnqueueRouter())
    for _ in range(3):
        ack = ack_of(await pipeline.handle(ORM.format(cid="DUP").encode(), "p", "ris"))
        assert str(ack.segment("MSA")[1]) == "AA"
    assert outbox_count(pipeline) == 1
    journal = pipeline.journal
    assert isinstance(journal, SqliteJournal)
    assert [e.status for e in journal.find_control_id("DUP")] == [
        "accepted",
        "duplicate",
        "duplicate",
    ]
    # The same MSH-10 from another sender is another message.
    other = ORM.format(cid="DUP").replace("|RIS|HOSP|", "|RIS2|HOSP|")
    await pipeline.handle(other.encode(), "p", "ris")
    assert outbox_count(pipeline) == 2


async def test_route_error_is_answered_ae_and_a_resend_is_processed_again(
    make: Callable[..., IngestPipeline],
) -> None:
    error = AckError(101, "PID^1^3", "PID-3 is required")
    pipeline = make(Fixed(RouteDecision(route="orders", ack_code="AE", errors=(error,))))
    ack = ack_of(await pipeline.handle(ORM.format(cid="E1").encode(), "p", "ris"))
    assert str(ack.segment("MSA")[1]) == "AE"
    assert "PID" in str(ack.segment("ERR"))
    pipeline.current_router = lambda: EnqueueRouter()
    ack = ack_of(await pipeline.handle(ORM.format(cid="E1").encode(), "p", "ris"))
    assert str(ack.segment("MSA")[1]) == "AA"
    assert outbox_count(pipeline) == 1


async def test_conflict_rolls_back_every_effect(make: Callable[..., IngestPipeline]) -> None:
    def refuse(conn: sqlite3.Connection, effect: WorklistUpsert, journal_id: int) -> dict[str, Any]:
        raise ConflictError("StudyInstanceUID belongs to another order", hl7_location="ZDS^1^1")

    decision = RouteDecision(
        route="orders",
        effects=(Enqueue("pacs", b"first", "k"), WorklistUpsert("order", ({},))),
    )
    pipeline = make(Fixed(decision), {WorklistUpsert: refuse})
    ack = ack_of(await pipeline.handle(ORM.format(cid="X1").encode(), "p", "ris"))
    assert str(ack.segment("MSA")[1]) == "AE"
    assert str(ack.segment("ERR")[1][0][0]) == "ZDS"  # v2.3.1: ERR-1 location
    assert outbox_count(pipeline) == 0  # the Enqueue before the conflict was undone
    journal = pipeline.journal
    assert isinstance(journal, SqliteJournal)
    assert journal.find_control_id("X1")[0].status == "error"


@pytest.mark.parametrize(
    ("frame", "code", "where"),
    [
        (b"PID|1||x\r", "AR", "MSH"),
        (b"MSH|^~\\&|RIS|HOSP|B|R|2026||ORM^O01||P|2.3.1\r", "AR", "MSH^1^10"),
        (b"MSH|^~\\&|RIS|HOSP|B|R|2026||ORM|C9|P|2.3.1\r", "AR", "MSH^1^9"),
        (b"MSH|^~\\&|RIS|HOSP|B|R|2026||ORM^O01|C9|P|\r", "AR", "MSH^1^12"),
        (b"MSH|^~\\&|RIS|HOSP|B|R|2026||ORM^O01|C9|X|2.3.1\r", "AR", "MSH^1^11"),
        # declares UTF-8 but carries a Latin-1 byte
        (
            b"MSH|^~\\&|RIS|HOSP|B|R|2026||ORM^O01|C9|P|2.5.1|||||UNICODE UTF-8\rPID|1||M\xdcLLER\r",
            "AE",
            "MSH^1^18",
        ),
    ],
)
async def test_bad_messages_get_an_answer_naming_the_location(
    make: Callable[..., IngestPipeline], frame: bytes, code: str, where: str
) -> None:
    pipeline = make()
    raw = await pipeline.handle(frame, "p", "ris")
    ack = ack_of(raw, "latin-1")
    assert str(ack.segment("MSA")[1]) == code
    err = str(ack.segment("ERR"))
    assert where.split("^")[0] in err
    if where.count("^"):
        assert where.split("^")[-1] in err
    journal = pipeline.journal
    assert isinstance(journal, SqliteJournal)
    assert journal.recent(1)[0].status == "rejected"


async def test_latin1_message_is_acknowledged_in_its_character_set(
    make: Callable[..., IngestPipeline],
) -> None:
    pipeline = make()
    raw = (SAMPLES_DIR / "orm_o01_v24.hl7").read_bytes()
    answer = await pipeline.handle(raw, "p", "ris")
    ack = ack_of(answer, "latin-1")
    assert str(ack.segment("MSH")[18]) == "8859/1"
    assert str(ack.segment("MSA")[1]) in {"AA", "CA"}


async def test_enhanced_mode_never_means_no_answer(make: Callable[..., IngestPipeline]) -> None:
    pipeline = make()
    msg = ORM.format(cid="N1").replace("|2.3.1\r", "|2.3.1|||NE|NE\r", 1)
    assert await pipeline.handle(msg.encode(), "p", "ris") is None
    journal = pipeline.journal
    assert isinstance(journal, SqliteJournal)
    assert journal.find_control_id("N1")[0].status == "accepted"


async def test_a_crashing_router_gets_ae_not_a_dead_listener(
    make: Callable[..., IngestPipeline],
) -> None:
    class Crash:
        def route(self, message: Message) -> RouteDecision:
            raise RuntimeError("bug")

    pipeline = make(Crash())
    ack = ack_of(await pipeline.handle(ORM.format(cid="B1").encode(), "p", "ris"))
    assert str(ack.segment("MSA")[1]) == "AE"
    assert "207" in str(ack.segment("ERR"))
