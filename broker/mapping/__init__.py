"""The declarative mapping language: HL7 paths in, DICOM JSON (or HL7) out; compiled once."""

from broker.mapping.compiler import CompileError, MappingFault, predicate, stable_uid
from broker.mapping.mapping import (
    DicomMapping,
    HL7Mapping,
    MappedItems,
    Mapping,
    compile_mapping,
    generated_source,
)
from broker.mapping.models import Attribute, MappingFile, Predicate
from broker.mapping.paths import ExpressionError, HL7Path, parse_expression, parse_path
from broker.mapping.scope import Scope

__all__ = [
    "Attribute",
    "CompileError",
    "DicomMapping",
    "ExpressionError",
    "HL7Mapping",
    "HL7Path",
    "MappedItems",
    "Mapping",
    "MappingFault",
    "MappingFile",
    "Predicate",
    "Scope",
    "compile_mapping",
    "generated_source",
    "parse_expression",
    "parse_path",
    "predicate",
    "stable_uid",
]
