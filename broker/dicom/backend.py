"""The seam between the DICOM SCP and the worklist: the protocol the SCP calls, nothing more.

``broker.worklist``'s service satisfies :class:`WorklistBackend` structurally; only ``app.py``
wires one to the other (protocol code never imports the application).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from pydicom import Dataset


class StatusLike(Protocol):
    """A DIMSE status answer: the worklist's ``DimseStatus(status, comment)`` satisfies it."""

    @property
    def status(self) -> int: ...

    @property
    def comment(self) -> str: ...


class WorklistBackend(Protocol):
    """What the SCP needs from the worklist service.

    A deliberate failure is any exception with an ``int`` attribute ``status`` and a ``str``
    attribute ``comment`` (the worklist's ``QueryError``): the SCP answers with that status and
    comment as ErrorComment. Any other exception is a handler failure (0xC311 for C-FIND,
    0x0110 for N-CREATE/N-SET); the association stays up in both cases.

    ``find`` runs on the event loop (it must be fast: reads only) unless the backend has a
    true ``find_blocks`` attribute (its store is across the network): then its batches are
    taken in a worker thread. ``mpps_create`` and ``mpps_set`` run in a worker thread (they
    commit durably).
    """

    def find(
        self, identifier: bytes, *, explicit_vr: bool, calling_ae: str
    ) -> Iterator[list[bytes]]:
        """Match a C-FIND identifier (encoded, little endian, in the negotiated transfer syntax).

        Yields batches of encoded response identifiers in the same transfer syntax; the SCP
        checks for C-CANCEL between batches. Raises a status-bearing error before yielding for a
        bad identifier.
        """
        ...

    def mpps_create(self, sop_instance_uid: str, dataset: Dataset, calling_ae: str) -> StatusLike:
        """Handle an MPPS N-CREATE (PS3.4 F.7.2.1) and return the status to answer."""
        ...

    def mpps_set(self, sop_instance_uid: str, dataset: Dataset, calling_ae: str) -> StatusLike:
        """Handle an MPPS N-SET (PS3.4 F.7.2.2) and return the status to answer."""
        ...


def failure_of(exc: BaseException) -> tuple[int, str] | None:
    """Return ``(status, comment)`` when ``exc`` is a deliberate DIMSE failure, else None."""
    status = getattr(exc, "status", None)
    comment = getattr(exc, "comment", None)
    if isinstance(status, int) and not isinstance(status, bool) and isinstance(comment, str):
        return status, comment
    return None
