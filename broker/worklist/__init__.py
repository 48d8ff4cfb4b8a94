"""The modality worklist: item model, PS3.4 matching, query planning, answers, MPPS, lifecycle.

Other packages import from here, never from the modules. The network side calls
:class:`WorklistService`; the store lives in ``broker.storage.sqlite_worklist``.
"""

from broker.worklist.explain import Explanation, explain
from broker.worklist.item import DicomJson, Problem, index_keys, validate
from broker.worklist.lifecycle import ACTIVE, FINAL, is_active, transition
from broker.worklist.matcher import InvalidKey, Key, Matcher, compile_keys
from broker.worklist.migrate import ImportReport, export_items, import_files, read_worklist_file
from broker.worklist.query import IndexPlan, ParsedQuery, parse_identifier, plan
from broker.worklist.service import DimseStatus, QueryError, WorklistService, WorklistStore

__all__ = [
    "ACTIVE",
    "FINAL",
    "DicomJson",
    "DimseStatus",
    "Explanation",
    "ImportReport",
    "IndexPlan",
    "InvalidKey",
    "Key",
    "Matcher",
    "ParsedQuery",
    "Problem",
    "QueryError",
    "WorklistService",
    "WorklistStore",
    "compile_keys",
    "explain",
    "export_items",
    "import_files",
    "index_keys",
    "is_active",
    "parse_identifier",
    "plan",
    "read_worklist_file",
    "transition",
    "validate",
]
