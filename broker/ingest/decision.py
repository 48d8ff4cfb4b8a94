"""What routing decided about one inbound message: the seam between routing and ingest.

The ingest pipeline (protocol side) calls a :class:`Router`; the routing package implements
it. The decision is plain data: the store applies ``effects`` atomically with the journal
entry, and the ACK is built from ``ack_code`` and ``errors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from broker.effects import Effect
from broker.hl7.ack import AckCode, AckError

if TYPE_CHECKING:
    from broker.hl7.message import Message

#: One ERR segment (HL7 table 0357 code, location like ``PID^1^7``, text without patient data).
HL7Error = AckError


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The outcome of routing one message.

    ``route`` is the name of the matched route (None: no route matched); ``actions`` is a
    JSON-able description of each action and its result, kept in the journal and printed by
    ``broker route``.
    """

    route: str | None
    ack_code: AckCode = "AA"
    effects: tuple[Effect, ...] = ()
    errors: tuple[HL7Error, ...] = ()
    actions: tuple[dict[str, Any], ...] = field(default_factory=tuple)


class Router(Protocol):
    """Decides what a message does. Pure: no I/O, no clock-dependent side effects."""

    def route(self, message: Message) -> RouteDecision: ...


class AcceptAll:
    """The router used until routes are configured: journal and acknowledge, nothing else."""

    def route(self, message: Message) -> RouteDecision:
        return RouteDecision(route=None, ack_code="AA")
