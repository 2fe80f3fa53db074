"""The whole-message stuffing path (``stuff_reply``/``stuff_pieces``) against the
line-by-line reference, including text dense with dots (where the memchr loop hands over
to the regex) and chunked feeding that starts in the middle of a line."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_pop3_stuffing import chunked, reference_stuff

from correo.pop3.stuffing import DotStuffer, stuff_pieces, stuff_reply


def test_whole_examples() -> None:
    assert stuff_reply(b"+OK\r\n", b"") == b"+OK\r\n.\r\n"
    assert stuff_reply(b"+OK\r\n", b".a\r\n") == b"+OK\r\n..a\r\n.\r\n"
    assert stuff_reply(b"", b"no dot") == b"no dot\r\n.\r\n"
    prose = b"One. Two. Three.\r\n.dot line\r\n" * 40 + b".\r\n"
    assert stuff_reply(b"", prose) == reference_stuff(prose)


def test_no_dot_is_not_copied() -> None:
    data = b"abc\r\ndef\r\n"
    assert stuff_pieces(data)[0] is data


def test_continuation_chunk_is_not_at_line_start() -> None:
    assert b"".join(stuff_pieces(b".x\n.y", at_line_start=False)) == b".x\n..y"
    dense = b"." * 40 + b"\n." + b"a.b" * 30
    assert b"".join(stuff_pieces(dense, at_line_start=False)) == dense.replace(b"\n.", b"\n..")
    assert b"".join(stuff_pieces(dense)) == b"." + dense.replace(b"\n.", b"\n..")


_line = st.one_of(
    st.sampled_from([b"", b".", b"..", b".x", b"x.", b"a.b.c.d", b". . .", b"\r", b".\r"]),
    st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),
)


@settings(max_examples=500, deadline=None)
@given(
    lines=st.lists(_line, max_size=80),
    tail=st.booleans(),
    lf_only=st.booleans(),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
)
def test_whole_and_chunked_match_reference(
    lines: list[bytes], tail: bool, lf_only: bool, cuts: list[int]
) -> None:
    eol = b"\n" if lf_only else b"\r\n"
    message = eol.join(lines) + (eol if tail and lines else b"")
    expected = reference_stuff(message)
    assert stuff_reply(b"+OK\r\n", message) == b"+OK\r\n" + expected
    s = DotStuffer()
    assert b"".join(s.feed(c) for c in chunked(message, cuts)) + s.finish() == expected
