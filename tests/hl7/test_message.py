"""Tests for broker.hl7.message, the lazy accessor, with python-hl7 as the oracle.

python-hl7 (``hl7.parse``) builds the whole tree; we compare every value our accessor reads with
what its ``extract_field`` returns. Its known quirks, and how the comparison handles them:

* it only accepts CR segment terminators and strips whitespace around the whole message: the
  oracle gets the CR-joined text, and every generated message ends with a fixed ``ZZZ|END``
  segment so that stripping cannot eat generated content;
* where a path is absent it raises IndexError for some shapes (component 2 of a field without
  components) and returns "" for others: both mean "absent", which is "" for us;
* a path that stops above a leaf follows the first child (``PID.F3.R1.C2`` returns the first
  subcomponent); ours returns the raw composite text instead, so such paths are compared with
  ``str()`` of the oracle's container, leaf paths with ``extract_field``;
* its unescape renders \\H\\ \\N\\ as "_" and \\.br\\ as CR, and drops unknown sequences; ours
  keeps them verbatim (broker.hl7.escape). The generator draws only \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ and
  \\Xhh..\\ with ASCII bytes or a single byte >= 0x80 (where both give chr(byte): no MSH-18 and
  not valid UTF-8), the part where the two agree by definition;
* MSH with no field after MSH-2 makes it mis-read MSH-2, so MSH-3 is always present; a segment
  without any field separator ("NTE") is not found by name (its ID becomes "N"), so every
  generated segment has at least one field (test_segment_without_fields covers ours).
"""

from __future__ import annotations

from dataclasses import dataclass

import hl7
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from broker.hl7.charset import CharsetError, decode_frame
from broker.hl7.message import HL7ParseError, Message, Path, Segment, Separators, compile_path

# ---------------------------------------------------------------------------------------------
# Named hand-made messages

# IHE RAD-4 style ORM^O01, Latin-1 name, two PID-3 repetitions, an escaped '&' in OBR-4.2,
# a second OBR, and a ZDS carrying the StudyInstanceUID.
ORM = "\r".join([
    "MSH|^~\\&|RIS|RADIOLOGY|BROKER|HOSPITAL|20240611083000||ORM^O01^ORM_O01|MSG00001|P|2.4|||AL"
    "|NE||8859/1",
    "PID|1||123456^^^HOSP^MR~987654321^^^NHS^NH||MÜLLER^HANS^PETER||19650412|M",
    "PV1|1|O|RAD^CT1^01",
    "ORC|NW|ORD448811|ACC448811||SC",
    "OBR|1|ORD448811|ACC448811|CTCHABD^CT THORAX\\T\\ABDOMEN^L||||||||||||||ACC448811|RP1|SPS1",
    "OBR|2|ORD448812|ACC448812|CTHEAD^CT HEAD^L||||||||||||||ACC448812|RP2|SPS2",
    "ZDS|1.2.826.0.1.3680043.8.498.1234^BROKER^Application^DICOM",
]) + "\r"


def test_orm_picks() -> None:
    m = Message.parse(ORM)
    assert m.get("MSH-10") == "MSG00001"
    assert m.get("PID-3.1") == "123456"
    assert m.get("PID-3(2).1") == "987654321"
    assert m.get("PID-3(2).4") == "NHS"
    assert m.get("PID-3(3).1") == ""
    assert m.get("PID-5.1") == "MÜLLER"
    assert m.get("ORC-1") == "NW"
    assert m.get("OBR-4.2") == "CT THORAX&ABDOMEN"
    assert m.raw("OBR-4.2") == "CT THORAX\\T\\ABDOMEN"
    assert m.get("OBR-18") == "ACC448811"
    assert m.get("OBR(2)-18") == "ACC448812"
    assert m.get("OBR(2)-4.2") == "CT HEAD"
    assert m.get("OBR(3)-4") == ""
    assert m.get("ZDS-1.1") == "1.2.826.0.1.3680043.8.498.1234"
    assert m["ZDS-1.2"] == "BROKER"
    assert m.get(compile_path("PID-5.2")) == "HANS"


def test_orm_whole_field_and_component_semantics() -> None:
    m = Message.parse(ORM)
    # A selection that still holds separators comes back raw, separators and escapes kept.
    assert m.get("PID-5") == "MÜLLER^HANS^PETER"
    assert m.get("PID-3") == "123456^^^HOSP^MR"  # first repetition
    assert m.raw_field("PID-3") == "123456^^^HOSP^MR~987654321^^^NHS^NH"
    assert m.get("OBR-4") == "CTCHABD^CT THORAX\\T\\ABDOMEN^L"
    assert m.get_all("PID-3(*).1") == ["123456", "987654321"]
    assert m.get_all("PID-3(*)") == ["123456^^^HOSP^MR", "987654321^^^NHS^NH"]
    assert m.get_all("PID-3(2).4") == ["NHS"]
    assert m.get_all("PID-3(5).4") == []
    assert m.get_all("PID-4(*)") == []
    assert m.get("PID-3(*).1") == "123456"  # get() on (*) reads the first repetition


def test_orm_msh_conveniences() -> None:
    m = Message.parse(ORM)
    assert m.control_id == "MSG00001"
    assert (m.message_type, m.trigger, m.structure) == ("ORM", "O01", "ORM_O01")
    assert m.version == "2.4"
    assert (m.sending_app, m.sending_facility) == ("RIS", "RADIOLOGY")
    assert (m.receiving_app, m.receiving_facility) == ("BROKER", "HOSPITAL")
    assert m.processing_id == "P"
    assert (m.accept_ack_type, m.app_ack_type) == ("AL", "NE")
    assert m.charset == "8859/1"
    assert m.separators == Separators("|", "^", "~", "\\", "&")


def test_msh_numbering() -> None:
    m = Message.parse(ORM)
    assert m.get("MSH-1") == "|"
    assert m.get("MSH-2") == "^~\\&"  # as written: not unescaped, not split at '~'
    assert m.get("MSH-2.2") == ""
    assert m.get("MSH-3") == "RIS"
    assert m.get("MSH-9") == "ORM^O01^ORM_O01"
    assert m.get("MSH-9.2") == "O01"
    msh = m.segment("MSH")
    assert msh is not None
    assert msh.raw_field(1) == "|"
    assert msh.raw_field(2) == "^~\\&"
    assert msh.get(3) == "RIS"
    assert msh.field_count() == 18


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
def test_segment_terminators(terminator: str) -> None:
    m = Message.parse(ORM.replace("\r", terminator))
    assert m.segment_names() == ["MSH", "PID", "PV1", "ORC", "OBR", "OBR", "ZDS"]
    assert m.get("ZDS-1.2") == "BROKER"
    assert "\n" not in m.text


def test_mixed_terminators_and_trailing_empties() -> None:
    text = "MSH|^~\\&|A|B\r\nPID|1||42\nZDS|x\r\r\n\n  \n"
    m = Message.parse(text)
    assert m.segment_names() == ["MSH", "PID", "ZDS"]
    assert m.get("PID-3") == "42"
    assert m.get("ZDS-1") == "x"


def test_empty_segments_in_the_middle_are_skipped() -> None:
    m = Message.parse("MSH|^~\\&|A\r\rPID|1||42\r")
    assert m.segment_names() == ["MSH", "PID"]
    assert m.get("PID-3") == "42"


def test_escape_sequences_in_values() -> None:
    text = "MSH|^~\\&|A\rNTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\g\\H\\h\\N\\"
    m = Message.parse(text)
    assert m.get("NTE-3") == "a|b^c&d~e\\fAg\\H\\h\\N\\"
    assert m.raw("NTE-3") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\g\\H\\h\\N\\"


def test_hex_escape_uses_msh18() -> None:
    raw = "MSH|^~\\&|A||||||ADT^A08|1|P|2.5||||||8859/1\rPID|1||1||M\\XDC\\LLER\r"
    assert Message.parse(raw).get("PID-5") == "MÜLLER"


@pytest.mark.parametrize(("charset", "encoding"), [("8859/1", "latin-1"), ("UNICODE UTF-8", "utf-8")])
def test_decoded_latin1_and_utf8_names(charset: str, encoding: str) -> None:
    text = ORM.replace("|8859/1", f"|{charset}")
    m = Message.parse(decode_frame(text.encode(encoding)).text)
    assert m.get("PID-5.1") == "MÜLLER"
    assert m.charset == charset


def test_wrong_msh18_is_a_charset_error() -> None:
    with pytest.raises(CharsetError):
        decode_frame(ORM.replace("|8859/1", "|UNICODE UTF-8").encode("latin-1"))


def test_non_standard_delimiters() -> None:
    text = "MSH#$*@!#RIS#RAD\rPID#1##A$B!C*D$E#X@F@Y@T@Z\r"
    m = Message.parse(text)
    assert m.separators == Separators("#", "$", "*", "@", "!")
    assert m.get("MSH-1") == "#"
    assert m.get("MSH-2") == "$*@!"
    assert m.get("MSH-3") == "RIS"
    assert m.get("PID-3.1") == "A"
    assert m.get("PID-3.2.2") == "C"
    assert m.get("PID-3.2") == "B!C"
    assert m.get("PID-3(2).2") == "E"
    assert m.get("PID-4") == "X#Y!Z"


def test_v27_truncation_character_is_ignored() -> None:
    m = Message.parse("MSH|^~\\&#|A|B\rPID|1||x^y\r")
    assert m.separators == Separators("|", "^", "~", "\\", "&")
    assert m.get("MSH-2") == "^~\\&#"
    assert m.get("PID-3.2") == "y"


def test_explicit_null_is_returned_as_written() -> None:
    m = Message.parse('MSH|^~\\&|A\rPID|1||""|\r')
    assert m.get("PID-3") == '""'
    assert m.get("PID-4") == ""


def test_z_segments_and_occurrences() -> None:
    m = Message.parse("MSH|^~\\&|A\rZDS|uid1\rZXY|a\rZDS|uid2\r")
    assert m.get("ZDS-1") == "uid1"
    assert m.get("ZDS(2)-1") == "uid2"
    assert m.get("ZDS(3)-1") == ""
    assert m.get("ZXY-1") == "a"
    assert [s.get(1) for s in m.segments("ZDS")] == ["uid1", "uid2"]
    second = m.segment("ZDS", 2)
    assert second is not None and second.name == "ZDS"
    assert m.segment("ZDS", 3) is None
    assert m.segment("PID") is None
    assert m.segments("PID") == []


def test_malformed_segment_name_is_not_matched() -> None:
    m = Message.parse("MSH|^~\\&|A\rPIDX|bad\rPID|1||good\r")
    assert m.get("PID-3") == "good"
    assert m.segment_names() == ["MSH", "PIDX", "PID"]


def test_segment_without_fields() -> None:
    m = Message.parse("MSH|^~\\&|A\rNTE\rNTE|1||second\r")
    assert m.get("NTE-3") == ""  # the first NTE has no fields
    assert m.get("NTE(2)-3") == "second"


def test_absent_everything_is_empty() -> None:
    m = Message.parse(ORM)
    for path in ("NTE-1", "PID-99", "PID-5.9", "PID-5.1.2", "PID-5(2)", "MSH-1.2", "MSH-30"):
        assert m.get(path) == ""
        assert m.raw(path) == ""


@pytest.mark.parametrize("text", ["", "PID|1\r", "   \r\n", "EVN|A08\rMSH|^~\\&|A\r"])
def test_missing_msh_is_a_parse_error(text: str) -> None:
    with pytest.raises(HL7ParseError) as info:
        Message.parse(text)
    assert info.value.location == "MSH"


def test_leading_whitespace_before_msh_is_tolerated() -> None:
    assert Message.parse("\r\n MSH|^~\\&|A\r").get("MSH-3") == "A"


@pytest.mark.parametrize(
    ("text", "location"),
    [("MSH", "MSH^1^1"), ("MSHA^~\\&|", "MSH^1^1"), ("MSH||x", "MSH^1^2"),
     ("MSH|^^\\&|x", "MSH^1^2")],
)
def test_bad_delimiters(text: str, location: str) -> None:
    with pytest.raises(HL7ParseError) as info:
        Message.parse(text)
    assert info.value.location == location


def test_segment_api() -> None:
    seg = Segment("PID|1||a~b^c&d||", Separators("|", "^", "~", "\\", "&"))
    assert seg.name == "PID"
    assert seg.field_count() == 5
    assert seg.raw_field(3) == "a~b^c&d"
    assert seg.get(3) == "a"
    assert seg.get(3, 2) == "b^c&d"
    assert seg.get(3, 2, 2) == "c&d"
    assert seg.get(3, 2, 2, 2) == "d"
    assert seg.get(9) == ""
    with pytest.raises(ValueError, match="start at 1"):
        seg.get(0)


# ---------------------------------------------------------------------------------------------
# compile_path


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("PID-3", ("PID", 1, 3, 1, 0, 0)),
        ("PID-3.1", ("PID", 1, 3, 1, 1, 0)),
        ("PID-3.1.2", ("PID", 1, 3, 1, 1, 2)),
        ("PID-3(2).1", ("PID", 1, 3, 2, 1, 0)),
        ("OBR(2)-4.2", ("OBR", 2, 4, 1, 2, 0)),
        ("ZDS-1", ("ZDS", 1, 1, 1, 0, 0)),
        ("MSH-9.2", ("MSH", 1, 9, 1, 2, 0)),
        ("PID-3(*)", ("PID", 1, 3, 0, 0, 0)),
        ("PID-3(*).1", ("PID", 1, 3, 0, 1, 0)),
        (" pid-3 ", ("PID", 1, 3, 1, 0, 0)),
    ],
)
def test_compile_path(spec: str, expected: tuple[str, int, int, int, int, int]) -> None:
    p = compile_path(spec)
    assert isinstance(p, Path)
    got = (p.segment, p.segment_occurrence, p.field, p.repetition, p.component, p.subcomponent)
    assert got == expected
    assert compile_path(str(p)) == p


@pytest.mark.parametrize(
    "spec",
    ["PID", "PID-", "PID-0", "PID-x", "PID-3.0", "PID-3.1.2.3", "PID-3(0)", "PID-3(", "PI-3",
     "PID(0)-3", "PID(*)-3", "1ID-3", "PID-3)", "PID-3..1", "PID.3.1", "PID-3(x)"],
)
def test_compile_path_errors(spec: str) -> None:
    with pytest.raises(ValueError, match="expected SEG") as info:
        compile_path(spec)
    assert repr(spec) in str(info.value)


# ---------------------------------------------------------------------------------------------
# Differential property test against python-hl7

PUNCTUATION = "|^~\\&#$*@!%+:;=?/<>[]{}"
CONTENT = st.characters(
    codec="utf-8",
    exclude_categories=("Cs", "Cc", "Zl", "Zp"),
    exclude_characters=PUNCTUATION,
) | st.sampled_from(".-,'_ ÄÖÜäöüßéñ€中😀")


@st.composite
def separators(draw: st.DrawFn) -> Separators:
    if draw(st.booleans()):
        return Separators("|", "^", "~", "\\", "&")
    chars = draw(st.permutations(PUNCTUATION))[:5]
    return Separators(*chars)


@st.composite
def leaf(draw: st.DrawFn, esc: str) -> str:
    """Subcomponent text: plain characters and escape sequences both libraries define alike."""
    pieces = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["text", "text", "text", "sep", "hex", "high"]))
        if kind == "text":
            pieces.append(draw(st.text(CONTENT, min_size=1, max_size=6)))
        elif kind == "sep":
            pieces.append(f"{esc}{draw(st.sampled_from('FSTRE'))}{esc}")
        elif kind == "hex":
            data = bytes(draw(st.lists(st.integers(0x20, 0x7E), min_size=1, max_size=3)))
            pieces.append(f"{esc}X{data.hex().upper()}{esc}")
        else:
            pieces.append(f"{esc}X{draw(st.integers(0x80, 0xFF)):02X}{esc}")
    return "".join(pieces)


# A generated field: repetitions -> components -> subcomponents (leaf text).
Field = list[list[list[str]]]


def join(seps: Separators, tree: Field) -> str:
    return seps.repetition.join(
        seps.component.join(seps.subcomponent.join(subs) for subs in comps) for comps in tree
    )


@dataclass
class Generated:
    seps: Separators
    segments: list[tuple[str, list[Field]]]  # name, fields
    terminators: list[str]

    def text(self, crlf: bool) -> str:
        out = []
        for (name, fields), term in zip(self.segments, self.terminators, strict=True):
            body = [join(self.seps, f) for f in fields]
            if name == "MSH":
                line = "MSH" + self.seps.field + self.seps.encoding_characters
                line += "".join(self.seps.field + b for b in body)
            else:
                line = self.seps.field.join([name, *body])
            out.append(line + (term if crlf else "\r"))
        return "".join(out) + "ZZZ" + self.seps.field + "END"


@st.composite
def messages(draw: st.DrawFn) -> Generated:
    seps = draw(separators())
    sub = leaf(seps.escape)
    field = st.lists(st.lists(st.lists(sub, min_size=1, max_size=3), min_size=1, max_size=3),
                     min_size=1, max_size=3)
    names = st.sampled_from(["PID", "PV1", "ORC", "OBR", "OBX", "ZDS", "Z01"])
    segs = [("MSH", draw(st.lists(field, min_size=1, max_size=8)))]
    for _ in range(draw(st.integers(0, 5))):
        segs.append((draw(names), draw(st.lists(field, min_size=1, max_size=6))))
    terms = draw(st.lists(st.sampled_from(["\r", "\n", "\r\n"]), min_size=len(segs),
                          max_size=len(segs)))
    return Generated(seps, segs, terms)


def oracle(msg: hl7.Message, *path: object) -> str:
    try:
        value = msg.extract_field(*path)
    except IndexError:
        return ""  # python-hl7's way of saying "absent" for some shapes
    assert isinstance(value, str)
    return value


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_differential_against_python_hl7(gen: Generated) -> None:
    ours = Message.parse(gen.text(crlf=True))
    theirs = hl7.parse(gen.text(crlf=False))
    seps = gen.seps
    assert ours.separators == seps
    assert ours.segment_names() == [name for name, _ in gen.segments] + ["ZZZ"]

    seen: dict[str, int] = {}
    for name, fields in gen.segments:
        occ = seen[name] = seen.get(name, 0) + 1
        their_seg = theirs.segments(name)(occ)
        our_seg = ours.segment(name, occ)
        assert our_seg is not None
        first = 3 if name == "MSH" else 1
        numbers = list(range(first, first + len(fields) + 1))
        for f in numbers:
            if f < len(their_seg):
                assert ours.raw_field(Path(name, f, segment_occurrence=occ)) == str(their_seg(f))
            tree: Field = fields[f - first] if f - first < len(fields) else []
            for r in range(1, len(tree) + 2):
                comps: list[list[str]] = tree[r - 1] if r <= len(tree) else []
                rep_raw = seps.component.join(seps.subcomponent.join(s) for s in comps)
                assert ours.raw(Path(name, f, r, segment_occurrence=occ)) == rep_raw
                for c in range(1, len(comps) + 2):
                    subs: list[str] = comps[c - 1] if c <= len(comps) else []
                    comp_path = Path(name, f, r, c, segment_occurrence=occ)
                    if len(subs) <= 1:  # a leaf component: the oracle's answer is well defined
                        expected = oracle(theirs, name, occ, f, r, c, 1)
                        assert ours.get(comp_path) == expected
                    else:
                        assert ours.get(comp_path) == seps.subcomponent.join(subs)
                    for s in range(1, len(subs) + 2):
                        expected = oracle(theirs, name, occ, f, r, c, s)
                        assert ours.get(Path(name, f, r, c, s, occ)) == expected
                        assert our_seg.get(f, r, c, s) == expected
            # A field that is one plain value reads the same at every level.
            if len(tree) == 1 and len(tree[0]) == 1 and len(tree[0][0]) == 1:
                value = oracle(theirs, name, occ, f, 1, 1, 1)
                assert ours.get(Path(name, f, segment_occurrence=occ)) == value
                assert our_seg.get(f) == value
    assert ours.get("MSH-1") == oracle(theirs, "MSH", 1, 1, 1, 1, 1) == seps.field
    assert ours.get("MSH-2") == oracle(theirs, "MSH", 1, 2, 1, 1, 1)
