"""Build an outbound HL7 v2 message: copy input segments, then set fields at paths.

Used for forwarding (HL7 → HL7 mappings). Not on the order → worklist hot path, so segments
are plain nested lists here. Values are escaped (HL7 v2.5.1 §2.7) unless the mapping marks
them raw (already HL7-encoded, e.g. a whole copied field).
"""

from __future__ import annotations

from broker.hl7.escape import Separators, escape
from broker.mapping.paths import HL7Path


class OutMessage:
    """Segments as lists of raw field strings (index 0: the segment name)."""

    def __init__(self, separators: Separators) -> None:
        self.seps = separators
        self.segments: list[list[str]] = []

    def add_raw(self, text: str) -> None:
        self.segments.append(text.split(self.seps.field))

    def _segment(self, name: str, occurrence: int) -> list[str]:
        seen = 0
        for seg in self.segments:
            if seg[0] == name:
                seen += 1
                if seen == occurrence:
                    return seg
        while True:  # append the missing occurrence(s)
            seg = [name]
            self.segments.append(seg)
            seen += 1
            if seen >= occurrence:
                return seg

    def set(self, path: HL7Path, value: str, raw: bool = False) -> None:
        """Set the value at ``path`` (escaped unless ``raw``), creating what is missing."""
        s = self.seps
        if not raw:
            value = escape(value, s)
        seg = self._segment(path.segment, path.occurrence or 1)
        idx = path.field - 1 if path.segment == "MSH" else path.field
        if path.segment == "MSH" and path.field <= 2:
            return  # MSH-1/MSH-2 are the separators themselves
        while len(seg) <= idx:
            seg.append("")
        if path.component is None and path.repetition in (0, 1):
            seg[idx] = value
            return
        reps = seg[idx].split(s.repetition) if seg[idx] else [""]
        r = max(path.repetition, 1)
        while len(reps) < r:
            reps.append("")
        if path.component is None:
            reps[r - 1] = value
        else:
            comps = reps[r - 1].split(s.component) if reps[r - 1] else [""]
            while len(comps) < path.component:
                comps.append("")
            if path.subcomponent is None:
                comps[path.component - 1] = value
            else:
                subs = comps[path.component - 1].split(s.subcomponent)
                while len(subs) < path.subcomponent:
                    subs.append("")
                subs[path.subcomponent - 1] = value
                comps[path.component - 1] = s.subcomponent.join(subs)
            reps[r - 1] = s.component.join(comps).rstrip(s.component) or ""
        seg[idx] = s.repetition.join(reps)

    def text(self) -> str:
        """The message, segments ended by CR (HL7 v2.5.1 §2.5.5)."""
        fs = self.seps.field
        return "".join(
            fs.join(seg).rstrip(fs) + "\r" if seg[0] != "MSH" else fs.join(seg) + "\r"
            for seg in self.segments
        )
