"""The broker's exception tree: one root, one branch per concern.

BrokerError
├── ConfigError            config file or environment value is wrong (names key, value, expected)
├── StoreError             the durable store failed (sqlite3 / redis errors translated here)
│   └── ConflictError      a change contradicts stored state (e.g. a StudyInstanceUID owned by
│                          another order); the message is answered AE and nothing is applied
├── ProtocolError          a peer broke HL7/MLLP or DICOM rules
└── DefinitionError        a route or mapping file is invalid (names file:line, field, expected)
"""

from __future__ import annotations


class BrokerError(Exception):
    """Root of every error the broker raises on purpose."""


class ConfigError(BrokerError):
    """The configuration is invalid; the message names key, value and what was expected."""


class StoreError(BrokerError):
    """The durable store could not complete an operation."""


class ConflictError(StoreError):
    """A change contradicts stored state; nothing of the message is applied.

    ``hl7_location`` (e.g. ``"ZDS^1^1"``) tells the ACK builder where in the message the
    conflicting value came from, when it is known.
    """

    def __init__(self, message: str, *, hl7_location: str = "", hl7_code: int = 205) -> None:
        super().__init__(message)
        self.hl7_location = hl7_location
        self.hl7_code = hl7_code


class ProtocolError(BrokerError):
    """A peer sent something the protocol does not allow."""


class DefinitionError(BrokerError):
    """A route or mapping definition is invalid."""
