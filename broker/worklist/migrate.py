"""Import of DICOM worklist files (wlmscpfs, Orthanc) and export to a wlmscpfs folder.

Migration path for departments moving off DCMTK wlmscpfs (one ``.wl`` file per item in a
folder named after the called AE title, plus a ``lockfile``) or Orthanc's worklist plugin
(a folder of ``.wl`` files). Every readable file becomes one item, as it is: nothing is
merged, dropped or invented. The report names, per file, what PS3.4 Table K.6-1 requires
and the file lacks (wlmscpfs would silently skip such a file with ``--enable-file-reject``),
and which files could not be read at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from broker.worklist.encode import native_charset
from broker.worklist.item import DicomJson, validate

__all__ = ["FileReport", "ImportReport", "export_items", "import_files", "read_worklist_file"]

#: Modality Worklist Information Model - FIND (PS3.4 K.6.1.1.2), used as the files' class.
MWL_FIND = UID("1.2.840.10008.5.1.4.31")
_DROP = ("00080005",)  # Specific Character Set: items are Unicode; answers declare their own


class _BulkLoader(Protocol):
    def bulk_load(self, items: Iterable[DicomJson], *, source: str = ...) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class FileReport:
    """One file: the item it became (None when unreadable) and what it lacks."""

    path: str
    item_id: int | None
    problems: tuple[str, ...] = ()
    error: str = ""


@dataclass(slots=True)
class ImportReport:
    """The outcome of one import: a line per file."""

    files: list[FileReport] = field(default_factory=list)

    @property
    def imported(self) -> int:
        """Files that became items."""
        return sum(1 for f in self.files if f.item_id is not None)

    @property
    def incomplete(self) -> list[FileReport]:
        """Imported files that lack values PS3.4 requires."""
        return [f for f in self.files if f.item_id is not None and f.problems]

    @property
    def failed(self) -> list[FileReport]:
        """Files that could not be read."""
        return [f for f in self.files if f.item_id is None]

    def lines(self) -> list[str]:
        """The report as text, one line per finding (no attribute values: they may be PHI)."""
        out = [f"{self.imported} of {len(self.files)} files imported"]
        for f in self.files:
            if f.error:
                out.append(f"{f.path}: not imported: {f.error}")
            for problem in f.problems:
                out.append(f"{f.path}: {problem}")
        return out


def read_worklist_file(path: Path) -> DicomJson:
    """One worklist file as a DICOM JSON item (Unicode text, without Specific Character Set).

    Raises ValueError when the file is not readable DICOM.
    """
    try:
        ds = pydicom.dcmread(path, force=True)
        ds.decode()
        data = ds.to_json_dict()
    except Exception as exc:  # pydicom raises many types for broken files
        raise ValueError(f"not a readable DICOM file ({type(exc).__name__})") from exc
    if not data:
        raise ValueError("no attributes")
    for key in _DROP:
        data.pop(key, None)
    return data


def _expand(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*.wl") if p.is_file()))
        else:
            out.append(path)
    return out


def import_files(store: _BulkLoader, paths: Sequence[Path]) -> ImportReport:
    """Import worklist files (folders are searched for ``*.wl``); returns the report."""
    report = ImportReport()
    readable: list[tuple[Path, DicomJson]] = []
    for path in _expand(paths):
        try:
            readable.append((path, read_worklist_file(path)))
        except (OSError, ValueError) as exc:
            report.files.append(FileReport(str(path), None, (), str(exc)))
    ids = store.bulk_load([item for _, item in readable], source="import")
    for (path, item), item_id in zip(readable, ids, strict=True):
        problems = tuple(str(p) for p in validate(item))
        report.files.append(FileReport(str(path), item_id, problems))
    return report


def item_dataset(item: DicomJson) -> Dataset:
    """An item as a pydicom Dataset with the Specific Character Set its text needs."""
    ds = Dataset.from_json(item)
    charset = native_charset(item)
    if charset:
        ds.SpecificCharacterSet = charset
    return ds


def export_items(items: Iterable[tuple[int, DicomJson]], directory: Path) -> list[Path]:
    """Write each item as ``<id>.wl`` in ``directory`` (plus the ``lockfile`` wlmscpfs needs);
    serve them with ``wlmscpfs -dfp <parent>`` and the folder's name as called AE title."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "lockfile").touch()
    written: list[Path] = []
    for item_id, item in items:
        ds = item_dataset(item)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MWL_FIND
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = directory / f"{item_id:08d}.wl"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
