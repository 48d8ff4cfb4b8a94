"""The ``orthanc`` destination: reconciliation jobs applied to an Orthanc PACS over its REST API.

IHE Patient Information Reconciliation (RAD-12 patient update, RAD-13 procedure update): when
a patient or an order changes, the routing side queues one JSON job (:data:`CONTENT_TYPE`)
and this destination makes the images already stored in Orthanc carry the corrected
attributes, keeping every StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID (the RIS
and EHR link to studies by UID).

What Orthanc 1.10.1 does (measured; docs/DELIVERY.md ``type: orthanc`` has the table):

- ``POST /studies/{id}/modify`` with ``Keep`` of the three UIDs needs ``Force``, and then
  stores each modified instance under its old Orthanc id: with ``OverwriteInstances`` false
  that is refused (HTTP 500 "Cannot store an instance", nothing stored); with it true the
  files are replaced in place. ``KeepSource: false`` must never be sent with kept UIDs: it
  deletes the source, which is now the result (the study is gone).
- The overwrite replaces the files but not Orthanc's index (study and patient "main DICOM
  tags", which C-FIND and ``/tools/find`` answer from): ``POST /studies/{id}/reconstruct``
  refreshes it, so every modified study is reconstructed.
- A study-level modify refuses a new PatientID ("the parent PatientID cannot be manually
  modified"). A merge moves each instance instead: ``POST /instances/{id}/modify`` returns the
  corrected file (new PatientID, so a new Orthanc id), it is uploaded, and only then is the
  old instance deleted. This works whatever ``OverwriteInstances`` says and never deletes an
  instance before its corrected copy is stored.
- With ``OverwriteInstances`` false an update can only delete and re-upload each instance.
  That is done only when the destination has a ``spool_dir``: the corrected file is written
  and fsynced there before the instance is deleted, and a copy left by a crash is uploaded
  at the start of the next attempt. Without one, the refusal is a ``Retry`` telling the
  analyst what to configure.

Every step can be repeated: a modify of an already corrected instance gives the same bytes,
uploads are compared by MD5 with what Orthanc stores, and a retry after a crash halfway
finds the remaining work by the same queries. Outcome texts carry counts, accession numbers
and Orthanc ids, never patient IDs, names or birth dates.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yarl
from pydicom.datadict import dictionary_VR, tag_for_keyword

from broker.delivery.destinations import (
    MAX_ERROR_TEXT,
    Closing,
    Dead,
    Delivered,
    Network,
    OptionReader,
    Outcome,
    Retry,
    TlsOptions,
    tcp_reachable,
    tls_options,
)
from broker.delivery.orthanc_spool import Kept, Spool
from broker.errors import ConfigError
from broker.logs import phi
from broker.queue.base import Entry

log = logging.getLogger(__name__)

#: The content type of a reconciliation job (entry.content_type); anything else is dead.
CONTENT_TYPE = "application/vnd.broker.reconcile+json"
OPS = ("update_patient", "merge_patient", "update_order")
#: Kept on every modify: a PACS study keeps its UIDs (links from the RIS/EHR depend on them).
KEEP_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
#: Attributes ``set`` may not change: identity goes through ``merge_patient``'s target, UIDs stay.
IDENTITY_KEYWORDS = frozenset({"PatientID", "IssuerOfPatientID", *KEEP_UIDS, "SOPClassUID"})
#: Value representations a ``set`` value (a JSON string) can be written to.
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR",
     "UT", "UI"}
)  # fmt: skip
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: Orthanc's error code for "Cannot store an instance" (``Orthanc --errors``).
ORTHANC_CANNOT_STORE = 2018

REFUSED_OVERWRITE = (
    "Orthanc refused to overwrite instances (HTTP 500 Cannot store an instance): keeping the "
    "study, series and SOP instance UIDs needs 'OverwriteInstances': true in Orthanc's "
    "configuration, or a spool_dir on this destination so that the broker deletes and "
    "re-uploads each instance itself (see docs/DELIVERY.md, type: orthanc)"
)


# -- options -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrthancOptions:
    """``type: orthanc`` keys."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, log or error
    timeout_s: float = DEFAULT_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    connections: int = 4
    tls: TlsOptions | None = None
    #: Where corrected files wait, fsynced, while their instance is deleted and re-uploaded
    #: (only needed when Orthanc runs with OverwriteInstances false).
    spool_dir: Path | None = None


def orthanc_options(
    where: str, data: Mapping[str, Any], resolve: Callable[[Path], Path] = Path.resolve
) -> OrthancOptions:
    """Read ``type: orthanc`` keys; raises :class:`ConfigError` naming the bad key (and never
    repeating the password)."""
    r = OptionReader(where, data)
    url = r.text("url").rstrip("/")
    parsed = yarl.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise r._fail("url", url, "an http:// or https:// URL")
    if parsed.user is not None or parsed.password is not None:
        raise ConfigError(
            f"{where}.url: has credentials in it; expected them in username and password"
        )
    username = data.get("username")
    password = data.get("password")
    if username is not None and (not isinstance(username, str) or not username):
        raise r._fail("username", username, "a non-empty string")
    if isinstance(password, int) and not isinstance(password, bool):
        password = str(password)  # YAML reads password: 1234 as a number
    if password is not None and not isinstance(password, str):
        raise ConfigError(f"{where}.password: expected a string (value not shown)")
    if (username is None) != (password is None):
        raise ConfigError(f"{where}: username and password go together (HTTP basic auth)")
    spool = data.get("spool_dir")
    if spool is not None and (not isinstance(spool, str) or not spool):
        raise r._fail("spool_dir", spool, "a folder path")
    return OrthancOptions(
        url=url,
        username=username,
        password=password,
        timeout_s=r.number("timeout_s", DEFAULT_TIMEOUT_S, 0.001),
        connect_timeout_s=r.number("connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S, 0.001),
        connections=r.integer("connections", 4, 1, 64),
        tls=tls_options(r, resolve),
        spool_dir=resolve(Path(spool)) if spool else None,
    )


# -- the job -------------------------------------------------------------------------------


class JobError(ValueError):
    """The job is not a valid reconciliation job (the text says which key and why)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A patient as the PACS knows it: PatientID, and IssuerOfPatientID when known."""

    patient_id: str
    issuer: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """One reconciliation change (the contract in docs/DELIVERY.md)."""

    op: str
    id: str
    patient: Identity | None
    target: Identity | None
    accession: str
    study_uids: tuple[str, ...]
    set: Mapping[str, str]


def parse_job(payload: bytes) -> Job:
    """Decode and check a job; raises :class:`JobError` naming the key (never its value)."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise JobError(f"not UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise JobError("expected a JSON object")
    op = data.get("op")
    if op not in OPS:
        raise JobError(f"op is {op!r}; expected one of {', '.join(OPS)}")
    job_id = data.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise JobError("id: expected a non-empty string")
    patient = _identity(data, "patient", required=op != "update_order")
    target = _identity(data, "target", required=op == "merge_patient")
    accession = data.get("accession", "")
    if not isinstance(accession, str):
        raise JobError("accession: expected a string")
    uids = data.get("study_uids", [])
    if not isinstance(uids, list) or not all(isinstance(u, str) and u for u in uids):
        raise JobError("study_uids: expected a list of UIDs")
    if op == "update_order" and not accession and not uids:
        raise JobError("update_order needs an accession or study_uids")
    changes = data.get("set", {})
    if not isinstance(changes, dict):
        raise JobError("set: expected an object of DICOM keywords to strings")
    for keyword, value in changes.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise JobError(f"set.{keyword}: not a DICOM keyword")
        if keyword in IDENTITY_KEYWORDS:
            raise JobError(
                f"set.{keyword}: cannot be changed by set (identity goes in merge_patient's "
                "target; UIDs are kept)"
            )
        if dictionary_VR(tag) not in TEXT_VRS:
            raise JobError(f"set.{keyword}: VR {dictionary_VR(tag)} cannot be set from text")
        if not isinstance(value, str):
            raise JobError(f'set.{keyword}: expected a string ("" clears)')
    return Job(op, job_id, patient, target, accession, tuple(dict.fromkeys(uids)), changes)


def _identity(data: Mapping[str, Any], key: str, *, required: bool) -> Identity | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        raise JobError(f"{key}: expected an object with PatientID")
    patient_id = value.get("PatientID")
    if not isinstance(patient_id, str) or not patient_id:
        raise JobError(f"{key}.PatientID: expected a non-empty string")
    issuer = value.get("IssuerOfPatientID")
    if issuer is not None and not isinstance(issuer, str):
        raise JobError(f"{key}.IssuerOfPatientID: expected a string")
    return Identity(patient_id, issuer)


# -- errors inside one delivery ------------------------------------------------------------


class _Stop(Exception):
    """Ends the delivery with this outcome (raised from deep inside a job)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class _HttpError(Exception):
    """Orthanc answered a status other than 2xx."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.code: int | None = None
        text = body.decode("utf-8", "replace").strip()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if isinstance(answer, dict):  # Orthanc's error object (HttpDescribeErrors)
            self.code = answer.get("OrthancStatus")
            text = ": ".join(str(answer[k]) for k in ("Message", "Details") if answer.get(k))
        super().__init__(f"HTTP {status}{': ' + text if text else ''}"[:MAX_ERROR_TEXT])

    @property
    def refused_overwrite(self) -> bool:
        return self.status == 500 and self.code == ORTHANC_CANNOT_STORE


# -- the destination -----------------------------------------------------------------------


class OrthancDestination(Closing):
    """Applies reconciliation jobs to one Orthanc (see the module docstring)."""

    def __init__(self, name: str, options: OrthancOptions) -> None:
        self.name = name
        self.options = options
        self._ssl: ssl.SSLContext | None = (
            options.tls.context(f"destinations.{name}") if options.tls else None
        )
        # HTTP basic auth (RFC 7617) built here: aiohttp 3.14 deprecates BasicAuth, and the
        # header only lives in the session (redirects are not followed, so it goes nowhere else).
        self._headers: dict[str, str] = {}
        if options.username is not None:
            token = f"{options.username}:{options.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        self._session: aiohttp.ClientSession | None = None
        self._spool = Spool(options.spool_dir) if options.spool_dir else None
        # Set once Orthanc refused an in-place overwrite and there is a spool: go per
        # instance from then on instead of paying a failing study modify each time.
        self._overwrite_refused = False

    @property
    def where(self) -> str:
        return f"orthanc {self.name}"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # aiohttp sets TCP_NODELAY on every connection it opens (base_protocol.py
            # connection_made), so request/response turns do not stall ~40 ms.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.options.connections,
                    ssl=self._ssl if self._ssl is not None else True,
                ),
                timeout=aiohttp.ClientTimeout(
                    total=self.options.timeout_s, connect=self.options.connect_timeout_s
                ),
                headers=self._headers,
                raise_for_status=False,
            )
        return self._session

    async def deliver(self, entry: Entry) -> Outcome:
        """Apply the entry's job; Delivered with counts, Retry or Dead (never raises)."""
        if entry.content_type != CONTENT_TYPE:
            return Dead(
                f"{self.where}: entry is {entry.content_type!r}; expected a reconciliation "
                f"job ({CONTENT_TYPE})"
            )
        try:
            job = parse_job(entry.payload)
        except JobError as exc:
            return Dead(f"{self.where}: reconciliation job is invalid: {exc}")
        try:
            if self._spool is not None:
                await self._recover_spool()
            return Delivered(await self._apply(job))
        except _Stop as stop:
            return stop.outcome
        except _HttpError as exc:
            return self._judge(exc)
        except OSError as exc:  # network errors are mapped in _request: this is the spool
            return Retry(f"{self.where}: spool_dir: {exc.strerror or exc}")

    async def probe(self) -> bool:
        """Whether a TCP connection to Orthanc's HTTP port opens (closed at once)."""
        url = yarl.URL(self.options.url)
        if url.host is None or url.port is None:
            return False
        return await tcp_reachable(url.host, url.port, self.options.connect_timeout_s)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the three operations ----------------------------------------------------------

    async def _apply(self, job: Job) -> str:
        if job.op == "update_order":
            studies = await self._order_studies(job)
            if not studies:
                what = f"accession {job.accession}" if job.accession else "the given study UIDs"
                return f"no study in Orthanc for {what}"
            for study in studies:
                await self._update_study(study, dict(job.set))
            return f"update_order: {_count(studies)} updated"
        assert job.patient is not None  # parse_job requires it for the patient ops
        studies = await self._patient_studies(job.patient)
        if not studies:
            return "no study in Orthanc for the patient"
        if job.op == "update_patient":
            for study in studies:
                await self._update_study(study, dict(job.set))
            return f"update_patient: {_count(studies)} updated"
        assert job.target is not None
        replace = dict(job.set)
        if job.target.issuer is not None:
            replace["IssuerOfPatientID"] = job.target.issuer
        if job.target.patient_id == job.patient.patient_id:
            # Only the issuer changes: the Orthanc ids stay, so it is an update in place.
            for study in studies:
                await self._update_study(study, replace)
            return f"merge_patient: {_count(studies)} updated (same PatientID)"
        replace["PatientID"] = job.target.patient_id
        moved = 0
        for study in studies:
            moved += await self._move_study(study, replace)
        return (
            f"merge_patient: {_count(studies)} moved to the surviving patient ({moved} instances)"
        )

    async def _patient_studies(self, patient: Identity) -> list[dict[str, Any]]:
        """Studies of this PatientID, less those whose stored IssuerOfPatientID differs from
        the job's (both set): another issuer's patient that shares the number."""
        found = await self._find({"PatientID": patient.patient_id})
        studies = [
            s
            for s in found
            if s.get("PatientMainDicomTags", {}).get("PatientID") == patient.patient_id
        ]
        if not patient.issuer:
            return studies
        kept = []
        for study in studies:
            stored = await self._study_issuer(study)
            if not stored or stored == patient.issuer:
                kept.append(study)
        return kept

    async def _order_studies(self, job: Job) -> list[dict[str, Any]]:
        """Studies with the job's AccessionNumber, plus those of its study UIDs that exist."""
        studies: dict[str, dict[str, Any]] = {}
        if job.accession:
            for study in await self._find({"AccessionNumber": job.accession}):
                if study.get("MainDicomTags", {}).get("AccessionNumber") == job.accession:
                    studies[study["ID"]] = study
        if job.study_uids:
            # UID list matching (PS3.4 C.2.2.2.2): one query for all of them.
            for study in await self._find({"StudyInstanceUID": "\\".join(job.study_uids)}):
                if study.get("MainDicomTags", {}).get("StudyInstanceUID") in job.study_uids:
                    studies[study["ID"]] = study
        return list(studies.values())

    async def _update_study(self, study: Mapping[str, Any], replace: dict[str, str]) -> None:
        """Apply ``replace`` to every instance of the study, keeping its UIDs and Orthanc ids."""
        study_id = study["ID"]
        if not replace:
            return  # nothing to set: the files stay as they are
        if not self._overwrite_refused:
            try:
                answer = await self._json(
                    "POST",
                    f"/studies/{study_id}/modify",
                    # Never KeepSource false here: the source is the result (it would be deleted).
                    _modification(replace),
                )
            except _HttpError as exc:
                if not exc.refused_overwrite:
                    raise
                if self._spool is None:  # asked again next time: the analyst may fix Orthanc
                    raise self._retry(REFUSED_OVERWRITE) from None
                self._overwrite_refused = True
                log.warning(
                    "destination %s: Orthanc refuses to overwrite instances; "
                    "replacing them one by one through the spool",
                    self.name,
                )
            else:
                failed = answer.get("FailedInstancesCount", 0) if isinstance(answer, dict) else 0
                if failed:
                    raise self._retry(f"{failed} instances of study {study_id} not modified")
                await self._reconstruct(study_id)
                return
        assert self._spool is not None
        for instance_id in await self._instances(study_id):
            data = await self._modified(instance_id, replace)
            await self._replace(instance_id, data)
        await self._reconstruct(study_id)

    async def _move_study(self, study: Mapping[str, Any], replace: dict[str, str]) -> int:
        """Move each instance to its new PatientID: store the corrected copy (a new Orthanc
        id), then delete the old instance. Returns how many instances moved."""
        targets: set[str] = set()
        instances = await self._instances(study["ID"])
        for instance_id in instances:
            data = await self._modified(instance_id, replace)
            stored = await self._upload(data)
            new_id = stored["ID"]
            if stored.get("Status") == "AlreadyStored" and await self._md5(new_id) != _md5(data):
                # The surviving patient already held this instance with other content, and
                # Orthanc did not overwrite it: correct it before the old one goes.
                if self._spool is None:
                    raise self._retry(REFUSED_OVERWRITE)
                await self._replace(new_id, data)
            await self._delete(instance_id)
            targets.add(stored["ParentStudy"])
        for target in sorted(targets):
            await self._reconstruct(target)
        return len(instances)

    async def _replace(self, instance_id: str, data: bytes) -> None:
        """Replace a stored instance by ``data`` (same Orthanc id) when Orthanc does not
        overwrite: spool ``data`` durably, delete, upload, forget the spooled copy."""
        assert self._spool is not None
        if await self._md5(instance_id) == _md5(data):
            return  # already the corrected copy (a retry)
        kept = await self._keep(instance_id, data)
        try:
            await self._delete(instance_id)
            await self._upload(data)
        except BaseException:
            kept.release()  # stays on disk: the next attempt uploads it first
            raise
        kept.done()

    async def _keep(self, instance_id: str, data: bytes) -> Kept:
        """Spool ``data`` (fsync in a thread); a cancelled caller still lets go of the lock."""
        assert self._spool is not None
        task = asyncio.ensure_future(asyncio.to_thread(self._spool.keep, instance_id, data))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_release_when_kept)
            raise

    async def _recover_spool(self) -> None:
        """Upload corrected copies left by an attempt that died between deleting an
        instance and storing its copy, before anything else touches those studies."""
        assert self._spool is not None
        for kept in self._spool.leftovers():
            try:
                data = await asyncio.to_thread(kept.path.read_bytes)
                stored = await self._upload(data)
            except _HttpError as exc:
                kept.release()
                if not 400 <= exc.status < 500 or exc.status in (401, 403, 408, 429):
                    raise
                # Orthanc will never take this file: set it aside, or every job would stop here.
                kept.path.rename(kept.path.with_suffix(".rejected"))
                log.error(
                    "destination %s: Orthanc refuses the spooled copy %s (%s); it is kept as "
                    "%s.rejected for the analyst",
                    self.name, kept.key, phi(exc), kept.key,  # Orthanc's text may quote tags
                )  # fmt: skip
                continue
            except BaseException:
                kept.release()
                raise
            if stored.get("Status") == "AlreadyStored":
                # The original was never deleted (or the copy is in): the job's own retry
                # corrects it; nothing is lost by dropping this copy.
                log.info("destination %s: spooled copy %s already stored", self.name, kept.key)
            kept.done()

    # -- Orthanc REST calls ------------------------------------------------------------

    async def _find(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        answer = await self._json(
            "POST",
            "/tools/find",
            {"Level": "Study", "Query": dict(query), "Expand": True, "CaseSensitive": True},
        )
        return [s for s in answer if isinstance(s, dict)] if isinstance(answer, list) else []

    async def _study_issuer(self, study: Mapping[str, Any]) -> str:
        """IssuerOfPatientID of the study's first instance ("" when absent): it is not one
        of the tags Orthanc indexes for patients."""
        for series_id in study.get("Series", []):
            series = await self._json("GET", f"/series/{series_id}")
            for instance_id in series.get("Instances", [])[:1]:
                try:
                    raw = await self._request("GET", f"/instances/{instance_id}/content/0010-0021")
                except _HttpError as exc:
                    if exc.status == 404:
                        return ""
                    raise
                try:
                    return raw.decode("utf-8").strip(" \x00")
                except UnicodeDecodeError:
                    return raw.decode("latin-1").strip(" \x00")
        return ""

    async def _instances(self, study_id: str) -> list[str]:
        study = await self._json("GET", f"/studies/{study_id}")
        ids: list[str] = []
        for series_id in study.get("Series", []):
            ids.extend((await self._json("GET", f"/series/{series_id}")).get("Instances", []))
        return ids

    async def _modified(self, instance_id: str, replace: Mapping[str, str]) -> bytes:
        """The corrected file of one instance (Orthanc returns it without storing it)."""
        body = _modification(replace)
        return await self._request("POST", f"/instances/{instance_id}/modify", json_body=body)

    async def _upload(self, data: bytes) -> dict[str, Any]:
        answer = await self._json("POST", "/instances", data=data)
        status = answer.get("Status")
        if status not in ("Success", "AlreadyStored"):
            raise self._retry(
                f"Orthanc did not store a corrected instance (status {status}); "
                "a filter or storage rule of Orthanc refused it"
            )
        return dict(answer)

    async def _md5(self, instance_id: str) -> str | None:
        """The MD5 Orthanc keeps of the stored file (None if unknown or gone)."""
        try:
            raw = await self._request("GET", f"/instances/{instance_id}/attachments/dicom/md5")
        except _HttpError as exc:
            if exc.status in (400, 404):  # StoreMD5ForAttachments off, or no such instance
                return None
            raise
        return raw.decode("ascii", "replace").strip()

    async def _delete(self, instance_id: str) -> None:
        try:
            await self._request("DELETE", f"/instances/{instance_id}")
        except _HttpError as exc:
            if exc.status != 404:  # already gone: a retry
                raise

    async def _reconstruct(self, study_id: str) -> None:
        """Refresh Orthanc's index of the study from its files (C-FIND answers from it)."""
        await self._request("POST", f"/studies/{study_id}/reconstruct", json_body={})

    async def _json(
        self, method: str, path: str, json_body: Any = None, *, data: bytes | None = None
    ) -> Any:
        raw = await self._request(method, path, json_body=json_body, data=data)
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise self._retry(f"{method} {path}: answer is not JSON") from None

    async def _request(
        self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None
    ) -> bytes:
        """One REST call; the body on 2xx, :class:`_HttpError` otherwise, network failures
        as ``_Stop(Retry)`` (the credentials are in the session, never in a text)."""
        for again in (True, False):
            try:
                return await self._send(method, path, json_body, data)
            except aiohttp.ServerDisconnectedError:
                # Mostly a pooled keep-alive connection that Orthanc closed (it restarted):
                # once more on a new connection. Safe, as every step of a job is repeatable.
                if again:
                    continue
                raise self._retry("Orthanc closed the connection", "lost") from None
        raise AssertionError("unreachable")

    async def _send(self, method: str, path: str, json_body: Any, data: bytes | None) -> bytes:
        url = self.options.url + path
        headers = {"Content-Type": "application/dicom"} if data is not None else None
        try:
            async with self._client().request(
                method, url, json=json_body, data=data, headers=headers, allow_redirects=False
            ) as response:
                body = await response.read()
                status = response.status
        except aiohttp.ServerDisconnectedError:
            raise
        except aiohttp.ClientConnectorError as exc:  # refused, unreachable, DNS, TLS
            tls = isinstance(exc, aiohttp.ClientSSLError)
            raise self._retry(
                f"{exc or type(exc).__name__}", "lost" if tls else "connect"
            ) from None
        except aiohttp.ConnectionTimeoutError:
            timeout = self.options.connect_timeout_s
            raise self._retry(f"cannot connect within {timeout:g} s", "connect") from None
        except TimeoutError:
            timeout = self.options.timeout_s
            raise self._retry(f"{method} {path}: no answer within {timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:  # reset, closed mid-request
            raise self._retry(f"{exc or type(exc).__name__}", "lost") from None
        if 200 <= status < 300:
            return body
        raise _HttpError(status, body)

    def _retry(self, text: str, network: Network = "") -> _Stop:
        return _Stop(Retry(f"{self.where}: {text}", network))

    def _judge(self, exc: _HttpError) -> Outcome:
        """An HTTP error that ended the job: retried unless the request itself was wrong."""
        if exc.status in (401, 403):
            return Retry(
                f"{self.where}: credentials refused ({exc}); check this destination's "
                "username and password against Orthanc's RegisteredUsers"
            )
        if exc.refused_overwrite:
            return Retry(f"{self.where}: {REFUSED_OVERWRITE}")
        if exc.status == 404:  # a resource went away between two calls: look again
            return Retry(f"{self.where}: {exc} (changed while reconciling; retried)")
        if exc.status >= 500 or exc.status in (408, 429):
            return Retry(f"{self.where}: {exc}")
        return Dead(f"{self.where}: Orthanc refused the change: {exc}")


def _modification(replace: Mapping[str, str]) -> dict[str, Any]:
    """The body of a ``/modify`` call that keeps the UIDs. Tags go as "gggg,eeee": Orthanc's
    DCMTK dictionary names some differently (OtherPatientIDs is RETIRED_OtherPatientIDs
    there, and a name it does not know is an HTTP 500)."""
    tags = {}
    for keyword, value in replace.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None  # parse_job checked every keyword
        tags[f"{tag >> 16:04X},{tag & 0xFFFF:04X}"] = value
    return {"Replace": tags, "Keep": list(KEEP_UIDS), "Force": True}


def _release_when_kept(task: asyncio.Future[Kept]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().release()


def _count(studies: list[Any]) -> str:
    return f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}"


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def build_orthanc(
    name: str, options: Mapping[str, Any], resolve: Callable[[Path], Path] = Path.resolve
) -> OrthancDestination:
    """An ``orthanc`` destination from its config keys; raises :class:`ConfigError`."""
    return OrthancDestination(name, orthanc_options(f"destinations.{name}", options, resolve))


__all__ = [
    "CONTENT_TYPE",
    "KEEP_UIDS",
    "OPS",
    "Identity",
    "Job",
    "JobError",
    "OrthancDestination",
    "OrthancOptions",
    "build_orthanc",
    "orthanc_options",
    "parse_job",
]
