"""IMAP response encoding, byte for byte (RFC 3501 §4, §7)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from correo.imap import encoder
from correo.imap.grammar import Reader
from correo.imap.spec import Atom, BodyLiteral


class FakeBody:
    """Only ``size`` is read by the encoder; streaming is the session's job."""

    size = 10

    async def read(self, offset: int = 0, length: int = -1) -> bytes:
        raise AssertionError("the encoder must not read bodies")

    def chunks(self, offset: int = 0, length: int = -1, chunk: int = 65536):  # type: ignore[no-untyped-def]
        raise AssertionError("the encoder must not read bodies")


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("hello", b'"hello"'),
        ("", b'""'),
        ('say "hi"', b'"say \\"hi\\""'),
        ("back\\slash", b'"back\\\\slash"'),
        ("two\r\nlines", b"{10}\r\ntwo\r\nlines"),
        ("nul\0", b"{4}\r\nnul\0"),
        ("caf\u00e9", b"{5}\r\ncaf\xc3\xa9"),
        (b"x" * 1025, b"{1025}\r\n" + b"x" * 1025),
    ],
)
def test_string(value: str | bytes, wire: bytes) -> None:
    assert encoder.string(value) == wire


def test_string_utf8_enabled_stays_quoted() -> None:
    assert encoder.string("café", utf8=True) == b'"caf\xc3\xa9"'
    assert encoder.string("a\nb", utf8=True) == b"{3}\r\na\nb"


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("INBOX", b"INBOX"),
        ("a]b", b"a]b"),
        ("with space", b'"with space"'),
        ("NIL", b'"NIL"'),
        ("nil", b'"nil"'),
        ("", b'""'),
        ("50%", b'"50%"'),
        ("a*", b'"a*"'),
        ("{x", b'"{x"'),
    ],
)
def test_astring(value: str, wire: bytes) -> None:
    assert encoder.astring(value) == wire


def test_mailbox_names_are_modified_utf7() -> None:
    assert encoder.mailbox("Été") == b"&AMk-t&AOk-"
    assert encoder.mailbox("Mes Documents") == b'"Mes Documents"'
    assert encoder.mailbox("a&b") == b"a&-b"


def test_render_structures() -> None:
    out: list[encoder.Piece] = []
    encoder.render([None, 7, "x y", Atom("\\Seen"), [b"a", []]], out)
    assert b"".join(p for p in out if isinstance(p, bytes)) == b'(NIL 7 "x y" \\Seen ("a" ()))'
    with pytest.raises(TypeError):
        encoder.render(True, [])
    with pytest.raises(ValueError):
        encoder.render(-1, [])


def test_fetch_response_streams_body_literal() -> None:
    body = BodyLiteral(FakeBody(), 2, 5)
    pieces = encoder.fetch_response(
        3, [("UID", 9), ("FLAGS", [Atom("\\Seen")]), ("BODY[]<2>", body)]
    )
    assert pieces == [b"* 3 FETCH (UID 9 FLAGS (\\Seen) BODY[]<2> {5}\r\n", body, b")\r\n"]


def test_fetch_response_body_sections_are_literals() -> None:
    pieces = encoder.fetch_response(1, [("BODY[1]", b"hi"), ("RFC822.HEADER", "h: v\r\n\r\n")])
    assert pieces == [b"* 1 FETCH (BODY[1] {2}\r\nhi RFC822.HEADER {8}\r\nh: v\r\n\r\n)\r\n"]


def test_empty_body_literal_has_no_piece() -> None:
    body = BodyLiteral(FakeBody(), 0, 0)
    assert encoder.fetch_response(1, [("BODY[]", body)]) == [b"* 1 FETCH (BODY[] {0}\r\n)\r\n"]


def test_tagged_and_text_never_break_lines() -> None:
    assert encoder.tagged("a1", "OK", "done", "APPENDUID 3 4") == b"a1 OK [APPENDUID 3 4] done\r\n"
    assert encoder.tagged("*", "NO", "evil\r\n* OK injected") == b"* NO evil  * OK injected\r\n"
    assert encoder.continuation() == b"+ Ready\r\n"
    assert encoder.untagged("3 EXISTS") == b"* 3 EXISTS\r\n"


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_string_round_trips_through_our_reader(value: bytes | str) -> None:
    """Whatever we emit, our own parser reads back to the same octets (and a quoted
    string never carries a bare quote or a line break)."""
    wire = encoder.string(value)
    data = value.encode() if isinstance(value, str) else value
    literals = {}
    text = wire
    m = re.match(rb"\{(\d+)\}\r\n", wire)
    if m:
        literals[0] = wire[m.end() :]
        text = wire[: m.end() - 2]
    else:
        inner = wire[1:-1].replace(b"\\\\", b"").replace(b'\\"', b"")
        assert b'"' not in inner and b"\r" not in inner and b"\n" not in inner
    r = Reader(text, literals)
    assert r.string() == data
    assert r.at_end()


def _reference(value: object) -> bytes:
    """The plain RFC 3501 rendering, written independently of the fast path."""
    if value is None:
        return b"NIL"
    if isinstance(value, Atom):
        return value.value.encode()
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, str | bytes):
        return encoder.string(value)
    assert isinstance(value, list)
    return b"(" + b" ".join(_reference(v) for v in value) + b")"


_values = st.recursive(
    st.none()
    | st.integers(0, 2**32)
    | st.text(max_size=30)
    | st.binary(max_size=30)
    | st.sampled_from([Atom("\\Seen"), Atom("$Junk")]),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=20,
)


@given(_values)
def test_fast_rendering_matches_reference(value: object) -> None:
    out: list[encoder.Piece] = []
    encoder.render(value, out)
    assert b"".join(p for p in out if isinstance(p, bytes)) == _reference(value)
