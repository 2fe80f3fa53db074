"""Byte-stuffing and TOP across chunk boundaries, against line-by-line references."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correo.pop3.stuffing import DotStuffer, TopFilter


def stuff(chunks: list[bytes]) -> bytes:
    s = DotStuffer()
    return b"".join(s.feed(c) for c in chunks) + s.finish()


def reference_stuff(message: bytes) -> bytes:
    """RFC 1939 §3 done the slow, obvious way: line by line."""
    if not message:
        return b".\r\n"
    lines = message.split(b"\n")
    out = [b"." + line if line.startswith(b".") else line for line in lines]
    data = b"\n".join(out)
    return data + (b".\r\n" if message.endswith(b"\n") else b"\r\n.\r\n")


def unstuff(wire: bytes) -> bytes:
    """What a client (poplib) reconstructs: lines until ".", leading dot removed."""
    lines = wire.split(b"\r\n")
    end = lines.index(b".")
    return b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\r\n" for ln in lines[:end])


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def test_stuffing_examples() -> None:
    assert stuff([b"a\r\n.b\r\n..\r\n.\r\n"]) == b"a\r\n..b\r\n...\r\n..\r\n.\r\n"
    assert stuff([b".first\r\n"]) == b"..first\r\n.\r\n"
    assert stuff([]) == b".\r\n"
    assert stuff([b"no final newline"]) == b"no final newline\r\n.\r\n"


@pytest.mark.parametrize("split", range(1, 9))
def test_dot_at_chunk_boundary(split: int) -> None:
    data = b"ab\r\n.cd\r\n"
    assert stuff([data[:split], data[split:]]) == b"ab\r\n..cd\r\n.\r\n"


_lines = st.lists(
    st.one_of(
        st.sampled_from([b"", b".", b"..", b".x", b"x.", b"\r", b"a\rb"]),
        st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(lines=_lines, tail=st.booleans(), cuts=st.lists(st.integers(0, 800), max_size=12))
def test_stuffing_matches_reference_and_round_trips(
    lines: list[bytes], tail: bool, cuts: list[int]
) -> None:
    message = b"\r\n".join(lines) + (b"\r\n" if tail and lines else b"")
    wire = stuff(chunked(message, cuts))
    assert wire == reference_stuff(message)
    # The terminator appears once, at the very end.
    assert wire.endswith(b".\r\n")
    assert (b"\r\n" + wire).count(b"\r\n.\r\n") == 1
    if b"\n" not in message.replace(b"\r\n", b""):
        expected = message if message.endswith(b"\r\n") or not message else message + b"\r\n"
        assert unstuff(wire) == expected


def top(message: bytes, n: int, cuts: list[int]) -> bytes:
    f = TopFilter(n)
    out = []
    for c in chunked(message, cuts):
        out.append(f.feed(c))
        if f.done:
            break
    return b"".join(out)


def test_top_examples() -> None:
    msg = b"Subject: x\r\nFrom: y\r\n\r\nline1\r\nline2\r\nline3\r\n"
    assert top(msg, 0, []) == b"Subject: x\r\nFrom: y\r\n\r\n"
    assert top(msg, 2, [3, 15, 24]) == b"Subject: x\r\nFrom: y\r\n\r\nline1\r\nline2\r\n"
    assert top(msg, 10, [1, 2, 3]) == msg
    assert top(b"\r\nbody\r\n", 0, []) == b"\r\n"  # no header at all
    assert top(b"Subject: only a header\r\n", 0, []) == b"Subject: only a header\r\n"
    with pytest.raises(ValueError):
        TopFilter(-1)


@settings(max_examples=400, deadline=None)
@given(
    header=st.lists(st.sampled_from([b"A: 1", b"Bb: two", b" folded", b"\r"]), max_size=5),
    body=st.lists(st.sampled_from([b"x", b"", b".", b"long line " * 5]), max_size=12),
    blank=st.booleans(),
    n=st.integers(0, 15),
    cuts=st.lists(st.integers(0, 300), max_size=10),
)
def test_top_matches_reference(
    header: list[bytes], body: list[bytes], blank: bool, n: int, cuts: list[int]
) -> None:
    header = [h for h in header if h != b"\r"]
    parts = [h + b"\r\n" for h in header]
    if blank:
        parts.append(b"\r\n")
        parts += [b + b"\r\n" for b in body]
    message = b"".join(parts)
    got = top(message, n, cuts)
    if not blank:
        assert got == message
        return
    head = b"".join(h + b"\r\n" for h in header) + b"\r\n"
    assert got == head + b"".join(b + b"\r\n" for b in body[:n])
