"""Route files → validated models; the engine that matches a message and runs its actions."""

from broker.routing.check import CheckReport, check, dry_run, read_message
from broker.routing.engine import RouteEngine
from broker.routing.holder import RouterHolder
from broker.routing.loader import Definitions, DefinitionsError, load_all, load_definitions
from broker.routing.schema import write_schemas

__all__ = [
    "CheckReport",
    "Definitions",
    "DefinitionsError",
    "RouteEngine",
    "RouterHolder",
    "check",
    "dry_run",
    "load_all",
    "load_definitions",
    "read_message",
    "write_schemas",
]
