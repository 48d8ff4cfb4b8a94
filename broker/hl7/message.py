"""The lazy HL7 v2 accessor: read a few fields of a message without parsing all of it.

``Message.parse`` only normalises segment terminators and reads the delimiters from MSH-1/MSH-2
(HL7 v2.5.1 §2.5.4). A segment is located (``str.find``) and split into fields the first time one
of its fields is read; repetitions, components and subcomponents are split only along the path
asked for, and escape sequences (§2.7, :mod:`broker.hl7.escape`) are resolved only in the value
returned. Routing an ORM^O01 reads about seven fields, so this is where a full parse loses its time.

Paths (:func:`compile_path`) name what to read, numbered as HL7 numbers it: ``PID-3``,
``PID-3.1``, ``PID-3.1.2``, ``PID-3(2).1``, ``PID-3(*)``, ``OBR(2)-4.2``, ``MSH-9.2``, ``ZDS-1``.
MSH-1 is the field separator itself and MSH-2 the encoding characters, both returned as written.

What ``get`` returns for a path:

* a subcomponent path: that subcomponent, escapes resolved;
* a path that stops at a component or at a field (repetition): the selected text with escapes
  resolved **if it holds no deeper separator**; otherwise the raw text of the selection, its
  separators and escape sequences as they were (``PID-5`` → ``"MÜLLER^HANS"``), so nothing is
  lost and a caller can split it further;
* no repetition given means the first; ``(*)`` means all of them for :meth:`Message.get_all`,
  and the first for ``get`` and ``raw``;
* ``""`` for anything absent (segment, field, repetition, component). HL7's explicit null, a
  field holding ``""``, comes back as the two characters ``""``; callers decide what it means.

``raw`` makes the same selection and never resolves escapes.
"""

from __future__ import annotations

from broker.errors import ProtocolError
from broker.hl7.escape import DEFAULT_SEPARATORS, Separators, unescape

__all__ = ["HL7ParseError", "Message", "Path", "Segment", "Separators", "compile_path"]


class HL7ParseError(ProtocolError, ValueError):
    """The text is not an HL7 v2 message. ``location`` is an ERR-2 style location
    (``"MSH^1^2"``); the message names what was wrong and where, never message content."""

    def __init__(self, message: str, location: str = "MSH") -> None:
        super().__init__(message)
        self.location = location


# --------------------------------------------------------------------------------------------
# Paths


class Path:
    """A compiled field path (see :func:`compile_path`). Indexes are 1-based as in HL7;
    ``repetition`` 0 means all repetitions, ``component``/``subcomponent`` 0 mean "not given"."""

    __slots__ = (
        "_find",
        "_key",
        "_rep",
        "component",
        "field",
        "repetition",
        "segment",
        "segment_occurrence",
        "subcomponent",
    )

    segment: str
    segment_occurrence: int
    field: int
    repetition: int
    component: int
    subcomponent: int
    _key: str  # per-message cache key of the segment's field list
    _find: str  # what str.find looks for to locate the first such segment
    _rep: int  # repetition to pick in get() / raw(): (*) picks the first

    def __init__(
        self,
        segment: str,
        field: int,
        repetition: int = 1,
        component: int = 0,
        subcomponent: int = 0,
        segment_occurrence: int = 1,
    ) -> None:
        if not (len(segment) == 3 and segment.isalnum() and segment.isascii()
                and segment.isupper() and segment[0].isalpha()):
            raise ValueError(f"segment name {segment!r} is not three letters/digits (e.g. PID)")
        if field < 1 or repetition < 0 or component < 0 or subcomponent < 0:
            raise ValueError("field must be >= 1 and repetition/component/subcomponent >= 0")
        if segment_occurrence < 1:
            raise ValueError("segment occurrence must be >= 1")
        if subcomponent and not component:
            raise ValueError("a subcomponent needs a component")
        self.segment = segment
        self.segment_occurrence = segment_occurrence
        self.field = field
        self.repetition = repetition
        self.component = component
        self.subcomponent = subcomponent
        self._key = segment if segment_occurrence == 1 else f"{segment}({segment_occurrence})"
        self._find = "\r" + segment
        self._rep = repetition or 1

    def __str__(self) -> str:
        seg = self._key
        rep = "" if self.repetition == 1 else ("(*)" if not self.repetition
                                               else f"({self.repetition})")
        tail = "".join(f".{n}" for n in (self.component, self.subcomponent) if n)
        return f"{seg}-{self.field}{rep}{tail}"

    def __repr__(self) -> str:
        return f"Path({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Path) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


_PATH_FORM = (
    "expected SEG[(n)]-FIELD[(rep|*)][.COMPONENT[.SUBCOMPONENT]], e.g. PID-3, PID-3.1, "
    "PID-3.1.2, PID-3(2).1, PID-3(*), OBR(2)-4.2 (numbers start at 1)"
)


def _number(text: str, spec: str, what: str) -> int:
    if not (text.isdigit() and text.isascii()) or int(text) < 1:
        raise ValueError(f"HL7 path {spec!r}: {what} {text!r} is not a number >= 1; {_PATH_FORM}")
    return int(text)


def _occurrence(text: str, spec: str, what: str, star: bool) -> tuple[str, int]:
    """Split ``NAME(n)`` into (NAME, n); n is 1 without parentheses, 0 for ``(*)``."""
    if not text.endswith(")"):
        if "(" in text:
            raise ValueError(f"HL7 path {spec!r}: unclosed '(' in {text!r}; {_PATH_FORM}")
        return text, 1
    head, sep, inner = text[:-1].partition("(")
    if not sep:
        raise ValueError(f"HL7 path {spec!r}: unbalanced ')' in {text!r}; {_PATH_FORM}")
    if star and inner == "*":
        return head, 0
    return head, _number(inner, spec, what)


def compile_path(spec: str) -> Path:
    """Compile a path such as ``PID-3(2).1`` or ``OBR(2)-4.2``; raise ValueError naming the
    expected form when ``spec`` is not one."""
    text = spec.strip()
    seg_part, dash, rest = text.partition("-")
    if not dash or not rest:
        raise ValueError(f"HL7 path {spec!r}: missing '-FIELD'; {_PATH_FORM}")
    name, occurrence = _occurrence(seg_part, spec, "segment occurrence", star=False)
    if not (len(name) == 3 and name.isascii() and name.isalnum() and name[0].isalpha()):
        raise ValueError(
            f"HL7 path {spec!r}: segment {name!r} is not a 3-character segment ID; {_PATH_FORM}"
        )
    parts = rest.split(".")
    if len(parts) > 3:
        raise ValueError(f"HL7 path {spec!r}: too many '.' levels; {_PATH_FORM}")
    field_text, repetition = _occurrence(parts[0], spec, "repetition", star=True)
    field = _number(field_text, spec, "field")
    component = _number(parts[1], spec, "component") if len(parts) > 1 else 0
    subcomponent = _number(parts[2], spec, "subcomponent") if len(parts) > 2 else 0
    return Path(name.upper(), field, repetition, component, subcomponent, occurrence)


_PATHS: dict[str, Path] = {}
_PATHS_MAX = 4096  # paths come from mapping files; bound the cache against arbitrary input


def _path(spec: str) -> Path:
    path = _PATHS.get(spec)
    if path is None:
        path = compile_path(spec)
        if len(_PATHS) >= _PATHS_MAX:
            _PATHS.clear()
        _PATHS[spec] = path
    return path


# --------------------------------------------------------------------------------------------
# Selection shared by Segment and the slower Message methods


def _select(
    fields: list[str], msh: bool, seps: Separators,
    field: int, repetition: int, component: int, subcomponent: int,
) -> tuple[str, bool] | None:
    """Select from a segment's fields (``str.split`` of its text, name first).

    Returns None when absent, else (text, decodable): decodable is False when the text still
    holds component/subcomponent separators (or is MSH-1/MSH-2) and must be returned raw.
    """
    if msh:
        if field <= 2:
            if component > 1 or subcomponent > 1 or repetition > 1:
                return None
            return (seps.field if field == 1 else fields[1]), False
        field -= 1
    if field >= len(fields):
        return None
    value = fields[field]
    if not value:
        return None
    if seps.repetition in value:
        reps = value.split(seps.repetition)
        if repetition > len(reps):
            return None
        value = reps[repetition - 1]
    elif repetition > 1:
        return None
    if not component:
        return value, not (seps.component in value or seps.subcomponent in value)
    if seps.component in value:
        comps = value.split(seps.component)
        if component > len(comps):
            return None
        value = comps[component - 1]
    elif component > 1:
        return None
    if not subcomponent:
        return value, seps.subcomponent not in value
    if seps.subcomponent in value:
        subs = value.split(seps.subcomponent)
        if subcomponent > len(subs):
            return None
        value = subs[subcomponent - 1]
    elif subcomponent > 1:
        return None
    return value, True


def _segment_name(text: str, field_separator: str) -> str:
    end = text.find(field_separator)
    return text if end < 0 else text[:end]


# --------------------------------------------------------------------------------------------
# Segment


class Segment:
    """One segment, split into fields on first use; fields are numbered as in HL7."""

    __slots__ = ("_charset", "_fields", "_msh", "_seps", "name", "text")

    def __init__(
        self,
        text: str,
        separators: Separators = DEFAULT_SEPARATORS,
        charset: str = "",
        fields: list[str] | None = None,
    ) -> None:
        self.text = text
        self.name = _segment_name(text, separators.field)
        self._seps = separators
        self._charset = charset
        self._msh = self.name in ("MSH", "BHS", "FHS")
        self._fields = fields

    def __repr__(self) -> str:
        return f"<Segment {self.name}: {self.field_count()} fields>"

    def _split(self) -> list[str]:
        fields = self._fields
        if fields is None:
            fields = self._fields = self.text.split(self._seps.field)
        return fields

    def field_count(self) -> int:
        """Number of fields as written, trailing empty ones included (MSH counts MSH-1)."""
        fields = self._split()
        return len(fields) if self._msh else len(fields) - 1

    def raw_field(self, n: int) -> str:
        """Field ``n`` exactly as written (all repetitions, escapes kept); '' when absent."""
        if n < 1:
            raise ValueError(f"field number must be >= 1, got {n}")
        if self._msh:
            if n == 1:
                return self._seps.field
            n -= 1
        fields = self._split()
        return fields[n] if n < len(fields) else ""

    def raw(
        self, field: int, repetition: int = 1, component: int | None = None,
        subcomponent: int | None = None,
    ) -> str:
        """Like :meth:`get` but escape sequences are kept as written."""
        hit = _select(self._split(), self._msh, self._seps, field, repetition or 1,
                      component or 0, subcomponent or 0)
        return "" if hit is None else hit[0]

    def get(
        self, field: int, repetition: int = 1, component: int | None = None,
        subcomponent: int | None = None,
    ) -> str:
        """The value at field[.component[.subcomponent]] of the given repetition; '' when
        absent. Decoded, or raw when the selection holds deeper separators (module doc)."""
        if field < 1 or repetition < 1 or (component or 1) < 1 or (subcomponent or 1) < 1:
            raise ValueError("field, repetition, component and subcomponent start at 1")
        hit = _select(self._split(), self._msh, self._seps, field, repetition,
                      component or 0, subcomponent or 0)
        if hit is None:
            return ""
        value, decodable = hit
        if decodable and self._seps.escape in value:
            return unescape(value, self._seps, self._charset)
        return value


# --------------------------------------------------------------------------------------------
# Message

_SEPARATORS: dict[str, Separators] = {}  # MSH-1 + MSH-2 as written -> Separators


def _separators(text: str) -> Separators:
    """Read the delimiters from MSH-1 and MSH-2 (``text`` starts with "MSH")."""
    key = text[3:8]
    if text[8:9] == key[:1]:
        seps = _SEPARATORS.get(key)
        if seps is not None:
            return seps
    fs = text[3:4]
    if not fs or fs in "\r\n" or fs.isalnum() or fs.isspace():
        raise HL7ParseError("MSH-1 (field separator) is missing or not a delimiter", "MSH^1^1")
    end = text.find(fs, 4)
    cr = text.find("\r", 4)
    if end < 0 or (0 <= cr < end):
        end = cr if cr >= 0 else len(text)
    enc = text[4:end]
    if not enc:
        raise HL7ParseError("MSH-2 (encoding characters) is empty", "MSH^1^2")
    # MSH-2 is component, repetition, escape, subcomponent (v2.7 adds a truncation character,
    # not used here); missing ones take the standard defaults, as python-hl7 does.
    chars = (enc + DEFAULT_SEPARATORS.encoding_characters[len(enc):])[:4]
    seps = Separators(fs, chars[0], chars[1], chars[2], chars[3])
    if len(set(seps)) != 5 or any(c.isalnum() or c.isspace() for c in chars):
        raise HL7ParseError(
            "MSH-1/MSH-2 delimiters must be five distinct non-alphanumeric characters",
            "MSH^1^2",
        )
    if len(enc) >= 4 and text[4 + len(enc):5 + len(enc)] == fs and len(_SEPARATORS) < 64:
        _SEPARATORS[fs + enc[:4]] = seps
    return seps


class Message:
    """A parsed-on-demand HL7 v2 message (see the module docstring for path semantics)."""

    __slots__ = ("_charset", "_cs", "_esc", "_fields", "_fs", "_names", "_rs", "_segs", "_ss",
                 "separators", "text")

    text: str
    separators: Separators
    _fs: str
    _cs: str
    _rs: str
    _esc: str
    _ss: str
    _fields: dict[str, list[str]]  # Path._key -> the segment's fields, split on first use
    _segs: list[str] | None  # the text split at CR, on first access
    _names: list[str]  # s[:3] of each of _segs
    _charset: str | None

    @classmethod
    def parse(cls, text: str) -> Message:
        """Prepare ``text`` for reading: segments may end in CR, LF or CRLF (mixed too), empty
        segments are ignored; it must begin with MSH. Raises HL7ParseError otherwise."""
        if "\n" in text:
            text = text.replace("\r\n", "\r").replace("\n", "\r")
        if text[:3] != "MSH":
            text = text.lstrip()
            if text[:3] != "MSH":
                raise HL7ParseError("message does not begin with an MSH segment", "MSH")
        seps = _separators(text)
        self = cls.__new__(cls)
        self.text = text
        self.separators = seps
        self._fs, self._cs, self._rs, self._esc, self._ss = seps
        self._fields = {}
        self._segs = None
        self._charset = None
        return self

    def __repr__(self) -> str:
        return f"<Message {self.message_type}^{self.trigger} {len(self.segment_names())} segments>"

    # -- segments ---------------------------------------------------------------------------

    def _split_segments(self) -> list[str]:
        """Split the text into segments and index their names, once per message."""
        segs = self._segs = self.text.split("\r")
        # Segment IDs are three characters (HL7 v2.5.1 §2.5.1); s[:3] is checked against the
        # field separator when a segment is picked, so a malformed "PIDX|" is never read as PID.
        self._names = [s[:3] for s in segs]
        return segs

    def _named(self, name: str) -> list[str]:
        """The texts of every segment whose ID is exactly ``name``, in order."""
        fs = self._fs
        segs = self._segs if self._segs is not None else self._split_segments()
        return [s for s in segs if _segment_name(s, fs) == name]

    def _locate(self, path: Path) -> list[str]:
        """Split and cache the fields of the segment ``path`` names; [] when there is none."""
        segs = self._segs
        if segs is None:
            segs = self._split_segments()
        fields: list[str] = []
        if path.segment_occurrence == 1:
            try:
                seg = segs[self._names.index(path.segment)]
            except ValueError:
                pass
            else:
                after = seg[3:4]
                if after == self._fs or not after:
                    fields = seg.split(self._fs)
                else:
                    found = self._named(path.segment)
                    if found:
                        fields = found[0].split(self._fs)
        else:
            found = self._named(path.segment)
            n = path.segment_occurrence
            if n <= len(found):
                fields = found[n - 1].split(self._fs)
        self._fields[path._key] = fields
        return fields

    def segment_names(self) -> list[str]:
        """The segment IDs in message order (empty and blank segments are skipped)."""
        fs = self._fs
        segs = self._segs if self._segs is not None else self._split_segments()
        return [_segment_name(s, fs) for s in segs if s and not s.isspace()]

    def segments(self, name: str) -> list[Segment]:
        """Every segment named ``name``, in order (empty list when none)."""
        seps, charset = self.separators, self.charset
        return [Segment(s, seps, charset) for s in self._named(name)]

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        """The ``occurrence``-th segment named ``name`` (1-based), or None."""
        found = self.segments(name)
        return found[occurrence - 1] if 0 < occurrence <= len(found) else None

    # -- values -----------------------------------------------------------------------------

    def _hex_charset(self) -> str:
        charset = self._charset
        if charset is None:
            charset = self._charset = self.raw(_MSH_18)
        return charset

    def _unescape(self, value: str) -> str:
        charset = self._hex_charset() if self._esc + "X" in value else ""
        return unescape(value, self.separators, charset)

    def get(self, path: str | Path) -> str:
        """The value ``path`` selects, escapes resolved; '' when absent (module docstring)."""
        # The hot path: _select() inlined, because a routing decision reads ~7 fields per
        # message and the call plus tuple packing cost about a third of a pick.
        p = (_PATHS.get(path) or _path(path)) if isinstance(path, str) else path
        fields = self._fields.get(p._key)
        if fields is None:
            fields = self._locate(p)
        f = p.field
        if p._key == "MSH":
            if f <= 2:
                hit = _select(fields, True, self.separators, f, p._rep, p.component,
                              p.subcomponent)
                return "" if hit is None else hit[0]
            f -= 1
        if f >= len(fields):
            return ""
        v = fields[f]
        if not v:
            return ""
        # Index 1 is by far the most common at every level: find + slice, no list built.
        r = p._rep
        if r == 1:
            i = v.find(self._rs)
            if i >= 0:
                v = v[:i]
        elif self._rs in v:
            reps = v.split(self._rs)
            if r > len(reps):
                return ""
            v = reps[r - 1]
        else:
            return ""
        c = p.component
        if c:
            if c == 1:
                i = v.find(self._cs)
                if i >= 0:
                    v = v[:i]
            elif self._cs in v:
                comps = v.split(self._cs)
                if c > len(comps):
                    return ""
                v = comps[c - 1]
            else:
                return ""
            s = p.subcomponent
            if s:
                if s == 1:
                    i = v.find(self._ss)
                    if i >= 0:
                        v = v[:i]
                elif self._ss in v:
                    subs = v.split(self._ss)
                    if s > len(subs):
                        return ""
                    v = subs[s - 1]
                else:
                    return ""
            elif self._ss in v:
                return v
        elif self._cs in v or self._ss in v:
            return v
        if self._esc in v:
            return self._unescape(v)
        return v

    __getitem__ = get

    def raw(self, path: str | Path) -> str:
        """The same selection as :meth:`get`, escape sequences kept as written."""
        p = _path(path) if isinstance(path, str) else path
        fields = self._fields.get(p._key)
        if fields is None:
            fields = self._locate(p)
        hit = _select(fields, p._key == "MSH", self.separators, p.field, p._rep, p.component,
                      p.subcomponent)
        return "" if hit is None else hit[0]

    def get_all(self, path: str | Path) -> list[str]:
        """Every repetition ``path`` selects, each decoded as :meth:`get` would.

        With ``(*)`` all repetitions of the field (``PID-3(*).1``: the first component of each);
        otherwise a one-element list, or [] when the field or repetition is absent.
        """
        p = _path(path) if isinstance(path, str) else path
        fields = self._fields.get(p._key)
        if fields is None:
            fields = self._locate(p)
        msh = p._key == "MSH"
        if p.repetition:
            reps = [p.repetition]
        else:
            whole = _select(fields, msh, self.separators, p.field, 1, 0, 0)
            if whole is None:
                return []
            count = 1 if msh and p.field <= 2 else self.raw_field(p).count(self._rs) + 1
            reps = list(range(1, count + 1))
        out: list[str] = []
        for r in reps:
            hit = _select(fields, msh, self.separators, p.field, r, p.component, p.subcomponent)
            if hit is None:
                if p.repetition:
                    return []
                out.append("")
                continue
            value, decodable = hit
            out.append(self._unescape(value) if decodable and self._esc in value else value)
        return out

    def raw_field(self, path: str | Path) -> str:
        """The whole field ``path`` names (all repetitions), exactly as written."""
        p = _path(path) if isinstance(path, str) else path
        fields = self._fields.get(p._key)
        if fields is None:
            fields = self._locate(p)
        f = p.field
        if p._key == "MSH":
            if f == 1:
                return self._fs
            f -= 1
        return fields[f] if f < len(fields) else ""

    # -- MSH conveniences (HL7 v2.5.1 §2.14.9) -----------------------------------------------

    @property
    def control_id(self) -> str:
        """MSH-10 Message Control ID."""
        return self.get(_MSH_10)

    @property
    def message_type(self) -> str:
        """MSH-9.1 Message Code (ORM, ADT, ...)."""
        return self.get(_MSH_9_1)

    @property
    def trigger(self) -> str:
        """MSH-9.2 Trigger Event (O01, A08, ...)."""
        return self.get(_MSH_9_2)

    @property
    def structure(self) -> str:
        """MSH-9.3 Message Structure (ORM_O01, ...), '' when not sent."""
        return self.get(_MSH_9_3)

    @property
    def version(self) -> str:
        """MSH-12.1 Version ID (2.3, 2.5.1, ...)."""
        return self.get(_MSH_12_1)

    @property
    def sending_app(self) -> str:
        """MSH-3.1 Sending Application (namespace ID)."""
        return self.get(_MSH_3_1)

    @property
    def sending_facility(self) -> str:
        """MSH-4.1 Sending Facility (namespace ID)."""
        return self.get(_MSH_4_1)

    @property
    def receiving_app(self) -> str:
        """MSH-5.1 Receiving Application (namespace ID)."""
        return self.get(_MSH_5_1)

    @property
    def receiving_facility(self) -> str:
        """MSH-6.1 Receiving Facility (namespace ID)."""
        return self.get(_MSH_6_1)

    @property
    def processing_id(self) -> str:
        """MSH-11.1 Processing ID (P, D, T)."""
        return self.get(_MSH_11_1)

    @property
    def accept_ack_type(self) -> str:
        """MSH-15 Accept Acknowledgment Type (AL, NE, ER, SU), '' when not sent."""
        return self.get(_MSH_15)

    @property
    def app_ack_type(self) -> str:
        """MSH-16 Application Acknowledgment Type, '' when not sent."""
        return self.get(_MSH_16)

    @property
    def charset(self) -> str:
        """MSH-18.1 Character Set (first repetition), '' when not sent."""
        return self._hex_charset()


_MSH_3_1 = compile_path("MSH-3.1")
_MSH_4_1 = compile_path("MSH-4.1")
_MSH_5_1 = compile_path("MSH-5.1")
_MSH_6_1 = compile_path("MSH-6.1")
_MSH_9_1 = compile_path("MSH-9.1")
_MSH_9_2 = compile_path("MSH-9.2")
_MSH_9_3 = compile_path("MSH-9.3")
_MSH_10 = compile_path("MSH-10")
_MSH_11_1 = compile_path("MSH-11.1")
_MSH_12_1 = compile_path("MSH-12.1")
_MSH_15 = compile_path("MSH-15")
_MSH_16 = compile_path("MSH-16")
_MSH_18 = compile_path("MSH-18.1")
