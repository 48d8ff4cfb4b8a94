"""Which segment a path means: the message scope and per-step scopes (segment groups).

An order message repeats groups: ORM^O01 ``ORC OBR [ZDS]`` per requested procedure (HL7 v2.3.1
§4.4.1, IHE RAD TF-2 §4.4), OMI^O23 ``ORC TQ1 OBR IPC+`` with one IPC per scheduled step (HL7
v2.5.1 §4.4.6, RAD TF-2 §4.4.4.1). A mapping names the step anchor (``each: OBR`` or ``each:
IPC``) and the order-group boundary (``split: ORC``); inside a step, ``ORC-1`` means the ORC of
that step's order group, ``OBR-4`` its OBR, ``ZDS-1`` the ZDS that follows it, and a group
segment this group lacks is absent (never borrowed from another group). Segments outside the
groups (MSH, PID, PV1) resolve to their first occurrence in the message.

Hot path: a scope only stores the segments that differ from "first occurrence in the message".
:meth:`Scope.plain` splits each segment a scope reads into fields once; when the segment holds
no escape, subcomponent or quote character (the usual case), a compiled path reads its value by
index and ``str.find`` with the exact result ``Message.get`` would give, and otherwise it falls
back to ``Message.get`` / ``Segment.get`` (escapes, HL7 nulls, MSH-1/MSH-2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.hl7.message import Message, Segment


#: ``Scope.plain`` for a segment that must be read through the accessor (see the docstring)
SLOW: tuple[list[str], str, str] = ([], "", "")
_HEADERS = frozenset({"MSH", "BHS", "FHS"})


class Scope:
    """One message or one step: ``segs`` overrides (name → Segment, None = absent), ``vars``."""

    __slots__ = ("cache", "message", "rows", "segfields", "segs", "vars")

    def __init__(
        self,
        message: Message,
        segs: dict[str, Segment | None] | None = None,
        variables: dict[str, str] | None = None,
    ) -> None:
        self.message = message
        self.segs: dict[str, Segment | None] = segs if segs is not None else {}
        self.vars: dict[str, str] = variables if variables is not None else {}
        #: free for callers: values worth keeping for the life of the scope
        self.cache: dict[str, str] = {}
        #: lookup-table rows read in this scope, by table and key expression: a mapping looks
        #: up the same procedure row for several attributes (station, modality, protocol)
        self.rows: dict[str, dict[str, str]] = {}
        #: what :meth:`plain` found, by segment name (compiled getters read it first)
        self.segfields: dict[str, tuple[list[str], str, str]] = {}

    def has_segment(self, name: str) -> bool:
        """Whether ``name`` is present in this scope."""
        if name in self.segs:
            return self.segs[name] is not None
        return self.message.segment(name, 1) is not None

    def plain(self, name: str) -> tuple[list[str], str, str]:
        """(fields, repetition separator, component separator) of segment ``name`` in this
        scope, split once and numbered as HL7 numbers them; fields is [] when the segment is
        absent. :data:`SLOW` when the segment holds an escape, subcomponent or quote character
        (or is BHS/FHS): read it with ``Message.get`` / ``Segment.get`` instead."""
        hit = self.segfields.get(name)
        if hit is not None:
            return hit
        message = self.message
        fs, cs, rs, esc, ss = message.separators
        text: str | None
        if name == "MSH" and name not in self.segs:
            hit = _msh_fields(message.text, fs, esc, ss, rs, cs)
        elif name in _HEADERS:  # Segment.get shifts BHS/FHS fields as it does MSH's
            hit = SLOW
        else:
            if name in self.segs:
                seg = self.segs[name]
                text = None if seg is None else seg.text
            else:
                text = _first_segment(message.text, name, fs)
            if text is None:
                hit = ([], rs, cs)
            elif esc in text or ss in text or '"' in text:
                hit = SLOW
            else:
                hit = (text.split(fs), rs, cs)
        self.segfields[name] = hit
        return hit


def _msh_fields(
    text: str, fs: str, esc: str, ss: str, rs: str, cs: str
) -> tuple[list[str], str, str]:
    """The message's MSH for ``plain``: index n is MSH-n from MSH-3 on (MSH-1 and MSH-2, the
    delimiters, are read through the accessor); SLOW when MSH-3 on is not plain."""
    end = text.find("\r")
    seg = text if end < 0 else text[:end]
    fields = seg.split(fs)
    rest = seg[len(fields[0]) + len(fields[1]) + 2 :] if len(fields) > 2 else ""
    if esc in rest or ss in rest or '"' in rest:
        return SLOW
    fields.insert(1, fs)
    return fields, rs, cs


def _first_segment(text: str, name: str, fs: str) -> str | None:
    """The text of the first segment whose ID is exactly ``name`` (``text`` CR-separated and
    starting with MSH, as ``Message.parse`` leaves it); the segment ``Message.get`` reads."""
    key = "\r" + name
    n = len(key)
    i = text.find(key)
    while i >= 0:
        after = text[i + n : i + n + 1]
        if after == fs or after == "\r" or not after:
            end = text.find("\r", i + 1)
            return text[i + 1 :] if end < 0 else text[i + 1 : end]
        i = text.find(key, i + 1)
    return None


def step_scopes(message: Message, each: str, split: str | None) -> list[dict[str, Segment | None]]:
    """One segment-override dict per occurrence of ``each`` (module docstring); [] when none.

    Within an order group (from one ``split`` segment to the next; the whole message when
    there is no ``split`` segment) a name resolves to its closest occurrence before the anchor,
    else its first occurrence after it.
    """
    fs = message.separators.field
    # message.segment_names(), without its per-segment function call
    names = [s.partition(fs)[0] for s in message.text.split("\r") if s and not s.isspace()]
    if each not in names:
        return []
    if len(set(names)) == len(names):
        # The usual one-order message: every name occurs once, so one step whose segments
        # are all first occurrences (no overrides), if the anchor is inside the order group.
        pos = names.index(each)
        if split is not None and split in names:
            return [{}] if names.index(split) <= pos else []
        return [{}] if pos > 0 else []  # without a split segment the group is all but MSH
    counts: dict[str, int] = {}
    indexed: list[tuple[str, int]] = []
    for name in names:
        n = counts.get(name, 0) + 1
        counts[name] = n
        indexed.append((name, n))
    groups: list[list[tuple[str, int]]] = []
    if split is not None and split in counts:
        for item in indexed:
            if item[0] == split:
                groups.append([item])
            elif groups:
                groups[-1].append(item)
    else:
        groups = [indexed[1:]]  # everything but MSH
    group_names = {nm for g in groups for nm, _ in g} if len(groups) > 1 else set()
    cache: dict[str, list[Segment]] = {}

    def seg(nm: str, k: int) -> Segment:
        found = cache.get(nm)
        if found is None:
            found = cache[nm] = message.segments(nm)
        return found[k - 1]

    out: list[dict[str, Segment | None]] = []
    for group in groups:
        for pos, (name, occ) in enumerate(group):
            if name != each:
                continue
            chosen: dict[str, int] = {each: occ}
            for nm, k in group[:pos]:
                if nm != each:
                    chosen[nm] = k
            for nm, k in group[pos + 1 :]:
                if nm not in chosen:
                    chosen[nm] = k
            segs: dict[str, Segment | None] = {nm: None for nm in group_names if nm not in chosen}
            for nm, k in chosen.items():
                if k != 1:
                    segs[nm] = seg(nm, k)
            out.append(segs)
    return out
