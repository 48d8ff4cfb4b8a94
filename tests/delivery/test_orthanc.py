"""The ``orthanc`` destination against a real, private Orthanc 1.10.1 (tests/orthanc_server.py).

Every test reads back each stored instance's tags (``simplified-tags``, from the files) and
checks that exactly the job's attributes changed, and that the UIDs stayed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.delivery import Dead, Delivered, Retry, build_destination
from broker.delivery.orthanc import (
    CONTENT_TYPE,
    KEEP_UIDS,
    OrthancDestination,
    _Stop,
    orthanc_options,
)
from broker.errors import ConfigError
from broker.net import tcp_nodelay_is_set
from broker.queue import Entry
from tests.dicom_study import build_study
from tests.orthanc_server import OrthancServer, orthanc_fixture, orthanc_server_fixture  # noqa: F401

Tags = dict[str, dict[str, Any]]


def job(op: str, **fields: Any) -> Entry:
    body = {"op": op, "id": f"{op}-1", **fields}
    return Entry(id=1, destination="pacs", payload=json.dumps(body).encode(),
                 content_type=CONTENT_TYPE)  # fmt: skip


def destination(server: OrthancServer, **options: Any) -> OrthancDestination:
    keys = {"url": server.url, "username": server.username, "password": server.password}
    return OrthancDestination("pacs", orthanc_options("destinations.pacs", {**keys, **options}))


def store(server: OrthancServer, **study: Any) -> list[str]:
    """Upload a 2 series x 2 instances study; returns its SOPInstanceUIDs."""
    files = build_study(series=2, instances=2, **study)
    server.upload(*(f.data for f in files))
    return [f.sop_uid for f in files]


def snapshot(server: OrthancServer) -> Tags:
    """Every stored instance's tags, by SOPInstanceUID."""
    return {t["SOPInstanceUID"]: t for t in server.all_instance_tags()}


def changes(before: Tags, after: Tags, sop_uids: list[str]) -> dict[str, Any]:
    """The tags that differ between before and after, the same for every instance given."""
    found: list[dict[str, Any]] = []
    for uid in sop_uids:
        old, new = before[uid], after[uid]
        found.append({k: new.get(k) for k in old.keys() | new.keys() if old.get(k) != new.get(k)})
    assert all(f == found[0] for f in found), found
    return found[0]


def assert_untouched(before: Tags, after: Tags, sop_uids: list[str]) -> None:
    for uid in sop_uids:
        assert after[uid] == before[uid]


def assert_uids_kept(before: Tags, after: Tags) -> None:
    assert after.keys() == before.keys()  # every SOPInstanceUID still there, none added
    for uid, tags in after.items():
        assert {k: tags[k] for k in KEEP_UIDS} == {k: before[uid][k] for k in KEEP_UIDS}


# -- update_patient --------------------------------------------------------------------------


async def test_update_patient_sets_exactly_the_demographics(orthanc: OrthancServer) -> None:
    mine = store(orthanc, patient_id="P1", issuer="HOSP", accession="A1")
    mine += store(orthanc, patient_id="P1", accession="A2")  # no issuer stored: same patient
    other = store(orthanc, patient_id="P2", issuer="HOSP", accession="A3")
    before = snapshot(orthanc)
    instance_ids = sorted(orthanc.instances())
    demographics = {"PatientName": "ROE^JANE", "PatientBirthDate": "", "PatientSex": "O",
                    "OtherPatientIDs": "X9"}  # fmt: skip
    entry = job("update_patient", patient={"PatientID": "P1", "IssuerOfPatientID": "HOSP"},
                set=demographics)  # fmt: skip
    async with destination(orthanc) as dest:
        outcome = await dest.deliver(entry)
        assert outcome == Delivered("update_patient: 2 studies updated")
        after = snapshot(orthanc)
        assert changes(before, after, mine) == demographics
        assert_untouched(before, after, other)
        assert_uids_kept(before, after)
        assert sorted(orthanc.instances()) == instance_ids  # overwritten in place
        # Orthanc's index (what C-FIND answers from) follows the files.
        names = {s["PatientMainDicomTags"]["PatientID"]: s["PatientMainDicomTags"]["PatientName"]
                 for s in orthanc.studies()}  # fmt: skip
        assert names == {"P1": "ROE^JANE", "P2": "DOE^JANE"}
        # Idempotent: applying the job again changes nothing.
        assert await dest.deliver(entry) == outcome
        assert snapshot(orthanc) == after


async def test_update_patient_skips_studies_of_another_issuer(orthanc: OrthancServer) -> None:
    hosp = store(orthanc, patient_id="P1", issuer="HOSP")
    other = store(orthanc, patient_id="P1", issuer="CLINIC")
    before = snapshot(orthanc)
    entry = job("update_patient", patient={"PatientID": "P1", "IssuerOfPatientID": "HOSP"},
                set={"PatientName": "ROE^JANE"})  # fmt: skip
    async with destination(orthanc) as dest:
        assert await dest.deliver(entry) == Delivered("update_patient: 1 study updated")
    after = snapshot(orthanc)
    assert changes(before, after, hosp) == {"PatientName": "ROE^JANE"}
    assert_untouched(before, after, other)


# -- merge_patient ---------------------------------------------------------------------------


async def test_merge_moves_the_retired_patients_studies_to_the_survivor(
    orthanc: OrthancServer,
) -> None:
    retired = store(orthanc, patient_id="OLD1", issuer="HOSP", accession="A1")
    retired += store(orthanc, patient_id="OLD1", issuer="HOSP", accession="A2")
    survivor = store(orthanc, patient_id="NEW1", issuer="HOSP", patient_name="DOE^JANE^M")
    before = snapshot(orthanc)
    demographics = {"PatientName": "DOE^JANE^M", "PatientBirthDate": "19700102"}
    entry = job("merge_patient", patient={"PatientID": "OLD1", "IssuerOfPatientID": "HOSP"},
                target={"PatientID": "NEW1", "IssuerOfPatientID": "HOSP"}, set=demographics)  # fmt: skip
    async with destination(orthanc) as dest:
        outcome = await dest.deliver(entry)
        assert outcome == Delivered(
            "merge_patient: 2 studies moved to the surviving patient (8 instances)"
        )
        after = snapshot(orthanc)
        assert changes(before, after, retired) == {"PatientID": "NEW1", **demographics}
        assert_untouched(before, after, survivor)
        assert_uids_kept(before, after)
        patients = {p["MainDicomTags"]["PatientID"]: p for p in orthanc.patients()}
        assert list(patients) == ["NEW1"]  # the retired patient has nothing left
        assert len(patients["NEW1"]["Studies"]) == 3
        # Again (a retry after it was done): nothing left to move.
        assert await dest.deliver(entry) == Delivered("no study in Orthanc for the patient")
        assert snapshot(orthanc) == after


async def test_merge_interrupted_halfway_completes_on_retry(orthanc: OrthancServer) -> None:
    """The connection drops after the first instance moved and the second was stored under
    the survivor but not yet deleted: the retry finishes without duplicates or losses."""
    retired = store(orthanc, patient_id="OLD1", accession="A1")
    before = snapshot(orthanc)
    entry = job("merge_patient", patient={"PatientID": "OLD1"}, target={"PatientID": "NEW1"},
                set={"PatientName": "NEW^NAME"})  # fmt: skip

    class Dropping(OrthancDestination):
        deletes = 0

        async def _delete(self, instance_id: str) -> None:
            self.deletes += 1
            if self.deletes == 2:
                raise self._retry("connection lost (test)", "lost")
            await super()._delete(instance_id)

    options = orthanc_options("d", {"url": orthanc.url, "username": orthanc.username,
                                    "password": orthanc.password})  # fmt: skip
    async with Dropping("pacs", options) as dest:
        assert await dest.deliver(entry) == Retry("orthanc pacs: connection lost (test)", "lost")
    assert len(orthanc.instances()) == 5  # 1 moved, 1 stored twice, 2 not yet touched
    async with destination(orthanc) as dest:
        assert isinstance(await dest.deliver(entry), Delivered)
    after = snapshot(orthanc)
    assert changes(before, after, retired) == {"PatientID": "NEW1", "PatientName": "NEW^NAME"}
    assert_uids_kept(before, after)
    assert len(orthanc.instances()) == 4


async def test_merge_of_an_issuer_change_keeps_the_patient_id(orthanc: OrthancServer) -> None:
    """ADT^A47 that only corrects the issuer: same PatientID, so the studies stay in place."""
    uids = store(orthanc, patient_id="P1", issuer="OLDHOSP")
    before = snapshot(orthanc)
    entry = job("merge_patient", patient={"PatientID": "P1", "IssuerOfPatientID": "OLDHOSP"},
                target={"PatientID": "P1", "IssuerOfPatientID": "HOSP"}, set={})  # fmt: skip
    async with destination(orthanc) as dest:
        outcome = await dest.deliver(entry)
    assert outcome == Delivered("merge_patient: 1 study updated (same PatientID)")
    assert changes(before, snapshot(orthanc), uids) == {"IssuerOfPatientID": "HOSP"}


# -- update_order ----------------------------------------------------------------------------


async def test_update_order_by_accession_and_study_uids(orthanc: OrthancServer) -> None:
    by_accession = store(orthanc, patient_id="P1", accession="ACC1")
    by_uid = store(orthanc, patient_id="P1", accession="OTHER", study_uid="1.2.826.0.1.99.1")
    unrelated = store(orthanc, patient_id="P1", accession="ACC9")
    before = snapshot(orthanc)
    order = {"AccessionNumber": "ACC2", "StudyDescription": "MR KNEE",
             "RequestedProcedureDescription": "MR KNEE LEFT", "ReferringPhysicianName": ""}  # fmt: skip
    entry = job("update_order", accession="ACC1", study_uids=["1.2.826.0.1.99.1", "1.2.3.404"],
                set=order)  # fmt: skip
    async with destination(orthanc) as dest:
        assert await dest.deliver(entry) == Delivered("update_order: 2 studies updated")
        after = snapshot(orthanc)
        assert changes(before, after, by_accession + by_uid) == order
        assert_untouched(before, after, unrelated)
        assert_uids_kept(before, after)
        accessions = sorted(s["MainDicomTags"]["AccessionNumber"] for s in orthanc.studies())
        assert accessions == ["ACC2", "ACC2", "ACC9"]
        assert isinstance(await dest.deliver(entry), Delivered)  # again: the same result
        assert snapshot(orthanc) == after


async def test_no_matching_study_is_delivered(orthanc: OrthancServer) -> None:
    store(orthanc, patient_id="P1", accession="ACC1")
    before = snapshot(orthanc)
    async with destination(orthanc) as dest:
        outcome = await dest.deliver(job("update_order", accession="ACC404", set={}))
        assert outcome == Delivered("no study in Orthanc for accession ACC404")
        outcome = await dest.deliver(
            job("update_patient", patient={"PatientID": "SECRET42"}, set={"PatientSex": "M"})
        )
        assert outcome == Delivered("no study in Orthanc for the patient")  # no ID echoed
    assert snapshot(orthanc) == before


# -- Orthanc down, credentials, bad jobs -----------------------------------------------------


async def test_orthanc_down_is_a_connect_retry_and_probe_sees_it_back(
    orthanc: OrthancServer,
) -> None:
    uids = store(orthanc, patient_id="P1")
    before = snapshot(orthanc)
    entry = job("update_patient", patient={"PatientID": "P1"}, set={"PatientName": "NEW^NAME"})
    async with destination(orthanc, connect_timeout_s=1) as dest:
        orthanc.stop()
        outcome = await dest.deliver(entry)
        assert isinstance(outcome, Retry) and outcome.network == "connect", outcome
        assert outcome.error.startswith("orthanc pacs: ")
        assert await dest.probe() is False
        orthanc.start()
        assert await dest.probe() is True
        assert await dest.deliver(entry) == Delivered("update_patient: 1 study updated")
        pool = dest._client().connector._conns  # idle connections (private)
        sockets = [proto.transport.get_extra_info("socket")
                   for idle in pool.values() for proto, _ in idle]  # fmt: skip
        assert sockets and all(tcp_nodelay_is_set(s) for s in sockets)
    assert changes(before, snapshot(orthanc), uids) == {"PatientName": "NEW^NAME"}


async def test_refused_credentials_are_retried_with_a_clear_text(orthanc: OrthancServer) -> None:
    store(orthanc, patient_id="P1")
    entry = job("update_patient", patient={"PatientID": "P1"}, set={"PatientName": "X^Y"})
    async with destination(orthanc, password="not-the-password-xyz") as dest:
        outcome = await dest.deliver(entry)
    assert isinstance(outcome, Retry) and outcome.network == "", outcome
    assert "credentials refused (HTTP 401)" in outcome.error
    assert "not-the-password-xyz" not in outcome.error


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff not json", "not UTF-8 JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"op": "delete_everything", "id": "1"}', "op is 'delete_everything'"),
        (b'{"op": "update_patient", "id": "1", "set": {}}', "patient: expected an object"),
        (b'{"op": "merge_patient", "id": "1", "patient": {"PatientID": "P"}}', "target: expected"),
        (b'{"op": "update_order", "id": "1", "set": {}}', "needs an accession or study_uids"),
        (b'{"op": "update_patient", "patient": {"PatientID": "P"}}', "id: expected"),
        (b'{"op": "update_order", "id": "1", "accession": "A", "set": {"Nonsense": "1"}}',
         "set.Nonsense: not a DICOM keyword"),
        (b'{"op": "update_order", "id": "1", "accession": "A", "set": {"PatientID": "P"}}',
         "set.PatientID: cannot be changed"),
        (b'{"op": "update_order", "id": "1", "accession": "A", "set": {"StudyInstanceUID": "1"}}',
         "set.StudyInstanceUID: cannot be changed"),
        (b'{"op": "update_order", "id": "1", "accession": "A", "set": {"PatientName": 5}}',
         "set.PatientName: expected a string"),
    ],
)  # fmt: skip
async def test_malformed_jobs_are_dead(payload: bytes, reason: str) -> None:
    options = orthanc_options("d", {"url": "http://127.0.0.1:9"})  # never contacted
    async with OrthancDestination("pacs", options) as dest:
        outcome = await dest.deliver(
            Entry(id=1, destination="pacs", payload=payload, content_type=CONTENT_TYPE)
        )
    assert isinstance(outcome, Dead), outcome
    assert reason in outcome.error
    assert outcome.error.startswith("orthanc pacs: reconciliation job is invalid: ")


async def test_an_hl7_message_is_dead() -> None:
    options = orthanc_options("d", {"url": "http://127.0.0.1:9"})
    async with OrthancDestination("pacs", options) as dest:
        outcome = await dest.deliver(Entry(id=1, destination="pacs", payload=b"MSH|^~\\&|"))
    assert isinstance(outcome, Dead)
    assert "expected a reconciliation job (application/vnd.broker.reconcile+json)" in outcome.error


# -- Orthanc with OverwriteInstances false ---------------------------------------------------


@pytest.fixture(scope="module")
def strict_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc on its default OverwriteInstances: false."""
    server = OrthancServer(tmp_path_factory.mktemp("strict"), {"OverwriteInstances": False})
    server.start()
    yield server
    server.kill()


@pytest.fixture
def strict(strict_orthanc: OrthancServer) -> OrthancServer:
    if strict_orthanc.extra_config["OverwriteInstances"]:  # a test turned it on
        strict_orthanc.extra_config["OverwriteInstances"] = False
        strict_orthanc.kill()
    strict_orthanc.start()
    strict_orthanc.clear()
    return strict_orthanc


async def test_refused_overwrite_without_spool_says_what_to_configure(
    strict: OrthancServer,
) -> None:
    uids = store(strict, patient_id="P1")
    before = snapshot(strict)
    entry = job("update_patient", patient={"PatientID": "P1"}, set={"PatientName": "X^Y"})
    async with destination(strict) as dest:
        outcome = await dest.deliver(entry)
        assert isinstance(outcome, Retry), outcome
        assert outcome.error.startswith(
            "orthanc pacs: Orthanc refused to overwrite instances "
            "(HTTP 500 Cannot store an instance)"
        )
        assert "'OverwriteInstances': true" in outcome.error and "spool_dir" in outcome.error
        assert snapshot(strict) == before  # nothing changed, nothing lost
        # The analyst turns OverwriteInstances on and restarts Orthanc: the next attempt
        # of the same destination asks again, and works.
        strict.extra_config["OverwriteInstances"] = True
        strict.kill()
        strict.start()
        assert await dest.deliver(entry) == Delivered("update_patient: 1 study updated")
    assert changes(before, snapshot(strict), uids) == {"PatientName": "X^Y"}


async def test_refused_overwrite_with_spool_replaces_each_instance(
    strict: OrthancServer, tmp_path: Path
) -> None:
    uids = store(strict, patient_id="P1", accession="ACC1")
    before = snapshot(strict)
    entry = job("update_order", accession="ACC1", set={"StudyDescription": "CT CHEST"})
    async with destination(strict, spool_dir=str(tmp_path / "spool")) as dest:
        assert await dest.deliver(entry) == Delivered("update_order: 1 study updated")
        after = snapshot(strict)
        assert changes(before, after, uids) == {"StudyDescription": "CT CHEST"}
        assert_uids_kept(before, after)
        assert await dest.deliver(entry) == Delivered("update_order: 1 study updated")
        assert snapshot(strict) == after
    assert list((tmp_path / "spool").iterdir()) == []
    assert strict.studies()[0]["MainDicomTags"]["StudyDescription"] == "CT CHEST"


async def test_crash_between_delete_and_upload_is_recovered_from_the_spool(
    strict: OrthancServer, tmp_path: Path
) -> None:
    """The attempt dies right after Orthanc deleted an instance: its corrected copy is on
    disk, and the next attempt stores it before anything else."""
    uids = store(strict, patient_id="P1")
    before = snapshot(strict)
    spool = tmp_path / "spool"
    entry = job("update_patient", patient={"PatientID": "P1"}, set={"PatientName": "X^Y"})

    class Dying(OrthancDestination):
        async def _delete(self, instance_id: str) -> None:
            await super()._delete(instance_id)
            raise _Stop(Retry("died (test)"))

    options = orthanc_options("d", {"url": strict.url, "username": strict.username,
                                    "password": strict.password, "spool_dir": str(spool)})  # fmt: skip
    async with Dying("pacs", options) as dest:
        assert await dest.deliver(entry) == Retry("died (test)")
    assert len(strict.instances()) == 3  # one instance is only in the spool now
    assert len(list(spool.glob("*.dcm"))) == 1
    async with destination(strict, spool_dir=str(spool)) as dest:
        assert await dest.deliver(entry) == Delivered("update_patient: 1 study updated")
    after = snapshot(strict)
    assert changes(before, after, uids) == {"PatientName": "X^Y"}
    assert_uids_kept(before, after)
    assert list(spool.iterdir()) == []


async def test_merge_needs_no_overwrite(strict: OrthancServer) -> None:
    uids = store(strict, patient_id="OLD1")
    before = snapshot(strict)
    entry = job("merge_patient", patient={"PatientID": "OLD1"}, target={"PatientID": "NEW1"},
                set={})  # fmt: skip
    async with destination(strict) as dest:
        assert isinstance(await dest.deliver(entry), Delivered)
    assert changes(before, snapshot(strict), uids) == {"PatientID": "NEW1"}
    assert [p["MainDicomTags"]["PatientID"] for p in strict.patients()] == ["NEW1"]


# -- configuration ---------------------------------------------------------------------------


def test_build_destination_knows_orthanc() -> None:
    dest = build_destination("pacs", "orthanc", {"url": "http://127.0.0.1:8042/",
                                                 "username": "u", "password": "hunter2"})  # fmt: skip
    assert isinstance(dest, OrthancDestination)
    assert dest.options.url == "http://127.0.0.1:8042"
    assert "hunter2" not in repr(dest.options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "destinations.pacs.url: found None; expected a non-empty string"),
        ({"url": "ftp://h"}, "destinations.pacs.url: found 'ftp://h'; expected an http"),
        ({"url": "http://u:pw@h"}, "destinations.pacs.url: has credentials in it"),
        ({"url": "http://h", "username": "u"}, "username and password go together"),
        ({"url": "http://h", "username": "u", "password": ["hunter2"]},
         "destinations.pacs.password: expected a string (value not shown)"),
        ({"url": "http://h", "timeout_s": 0}, "destinations.pacs.timeout_s: found 0"),
    ],
)  # fmt: skip
def test_option_errors_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        orthanc_options("destinations.pacs", options)
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value) and "pw@" not in str(caught.value)


# -- what C-FIND sees ------------------------------------------------------------------------


def study_cfind(server: OrthancServer, accession: str) -> list[str]:
    """StudyInstanceUIDs Orthanc answers to a STUDY-level C-FIND by AccessionNumber, asked
    from an AE title Orthanc does not know (the broker's reconciliation sweep)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    ae = AE(ae_title="SOME_SCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.AccessionNumber = accession
    query.StudyInstanceUID = ""
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet)
    assert assoc.is_established
    try:
        found = [
            str(identifier.StudyInstanceUID)
            for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            )
            if status and status.Status in (0xFF00, 0xFF01) and identifier is not None
        ]
    finally:
        assoc.release()
    return found


async def test_cfind_answers_the_corrected_accession(orthanc: OrthancServer) -> None:
    store(orthanc, patient_id="P1", accession="ACC1", study_uid="1.2.826.0.1.99.7")
    assert study_cfind(orthanc, "ACC1") == ["1.2.826.0.1.99.7"]
    async with destination(orthanc) as dest:
        entry = job("update_order", accession="ACC1", set={"AccessionNumber": "ACC2"})
        assert isinstance(await dest.deliver(entry), Delivered)
    assert study_cfind(orthanc, "ACC1") == []
    assert study_cfind(orthanc, "ACC2") == ["1.2.826.0.1.99.7"]
