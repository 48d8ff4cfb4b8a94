"""Which segment a path means: the message scope and per-step scopes (segment groups).

An order message repeats groups: ORM^O01 ``ORC OBR [ZDS]`` per requested procedure (HL7 v2.3.1
§4.4.1, IHE RAD TF-2 §4.4), OMI^O23 ``ORC TQ1 OBR IPC+`` with one IPC per scheduled step (HL7
v2.5.1 §4.4.6, RAD TF-2 §4.4.4.1). A mapping names the step anchor (``each: OBR`` or ``each:
IPC``) and the order-group boundary (``split: ORC``); inside a step, ``ORC-1`` means the ORC of
that step's order group, ``OBR-4`` its OBR, ``ZDS-1`` the ZDS that follows it. Segments not in
the group (MSH, PID, PV1) resolve to their first occurrence in the message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.hl7.message import Message, Segment


class Scope:
    """Resolves segment names to segments for one message or one step; holds ``$variables``."""

    __slots__ = ("_cache", "message", "parent", "vars")

    def __init__(
        self,
        message: Message,
        segments: dict[str, Segment] | None = None,
        parent: Scope | None = None,
        variables: dict[str, str] | None = None,
    ) -> None:
        self.message = message
        self._cache: dict[str, Segment | None] = dict(segments) if segments else {}
        self.parent = parent
        self.vars: dict[str, str] = variables if variables is not None else {}

    def find(self, name: str) -> Segment | None:
        """The segment ``name`` means in this scope, or None."""
        try:
            return self._cache[name]
        except KeyError:
            pass
        seg = self.parent.find(name) if self.parent is not None else self.message.segment(name, 1)
        self._cache[name] = seg
        return seg

    def var(self, name: str) -> str:
        v = self.vars.get(name)
        if v is None and self.parent is not None:
            return self.parent.var(name)
        return v or ""

    def child(self, segments: dict[str, Segment], variables: dict[str, str]) -> Scope:
        return Scope(self.message, segments, self, variables)


def step_segments(message: Message, each: str, split: str | None) -> list[dict[str, Any]]:
    """One ``{segment name: Segment}`` dict per occurrence of ``each``.

    Within the order group (from one ``split`` segment to the next; the whole message when
    ``split`` is absent), a name resolves to its closest occurrence before the anchor, else
    its first occurrence after it.
    """
    names = message.segment_names()
    if each not in names:
        return []
    groups: list[list[tuple[str, int]]] = [[]]
    counts: dict[str, int] = {}
    seen_split = False
    for name in names:
        n = counts.get(name, 0) + 1
        counts[name] = n
        if name == split:
            if seen_split or groups[-1]:
                groups.append([])
            seen_split = True
        groups[-1].append((name, n))
    if split is None or not seen_split:
        groups = [[(nm, k) for g in groups for (nm, k) in g]]
    out: list[dict[str, Any]] = []
    for group in groups:
        # Segments before the first ORC (MSH, PID, PV1) stay at message level.
        if split is not None and seen_split and (not group or group[0][0] != split):
            continue
        for pos, (name, occ) in enumerate(group):
            if name != each:
                continue
            segs: dict[str, Any] = {each: message.segment(each, occ)}
            chosen: dict[str, int] = {}
            for nm, k in group[:pos]:
                chosen[nm] = k
            for nm, k in group[pos + 1:]:
                if nm not in chosen and nm != each:
                    chosen[nm] = k
            for nm, k in chosen.items():
                if nm != each:
                    segs[nm] = message.segment(nm, k)
            out.append(segs)
    return out
