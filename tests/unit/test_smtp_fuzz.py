"""Hypothesis: the SMTP core never raises, never buffers without bound, and its DATA
reader agrees with a plain line-by-line reading of RFC 5321 §4.5.2 whatever the splits."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_smtp_helpers import Peer

from correo.smtp import commands as c
from correo.smtp.data import MAX_TEXT_LINE, DataReader
from correo.smtp.protocol import AUTH_LINE, Limits

MAX_SIZE = 2000
BOUND = AUTH_LINE + 2 + MAX_SIZE

TOKENS = [
    b"EHLO x\r\n",
    b"HELO x\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<>\r\n",
    b"RCPT TO:<c@d.example>\r\n",
    b"RCPT TO:<Postmaster>\r\n",
    b"DATA\r\n",
    b"BDAT 3\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 5 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN dXNlcg==\r\n",
    b"*\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\0",
    b"x" * 600,
    b"y" * 1200,
    b"\xff\xfe",
    b"MAIL FROM:<\xc3\xa9@b.example> SMTPUTF8\r\n",
    b"RCPT TO:<a@b.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@c\r\n",
]


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=80)), max_size=40),
    st.lists(st.integers(0, 20_000), max_size=8),
    st.booleans(),
)
def test_core_never_raises_and_stays_bounded(
    parts: list[bytes], cuts: list[int], eof: bool
) -> None:
    peer = Peer(limits=Limits(max_message_size=MAX_SIZE, max_errors=1000))
    data = b"".join(parts)
    for piece in chunks(data, cuts):
        peer.feed(piece)
        assert peer.proto.buffered <= BOUND
    if eof:
        peer.proto.receive_data(b"")
        peer.feed(b"")
        assert isinstance(peer.events[-1], c.Closed) or peer.proto.state.value == "closed"
    for message in peer.messages():
        assert b"\0" not in message
        assert message.count(b"\n") == message.count(b"\r\n")  # stored with CRLF only


def reference(wire: bytes) -> tuple[bytes | str, bytes] | None:
    """RFC 5321 §4.5.2 read one line at a time: (text or refusal, rest) or None."""
    prev_crlf = True
    out: list[bytes] = []
    problem = ""
    pos = 0
    while True:
        nl = wire.find(b"\n", pos)
        if nl < 0:
            return None
        line = wire[pos:nl]
        crlf = line.endswith(b"\r")
        if crlf:
            line = line[:-1]
        if prev_crlf and crlf and line == b".":
            return (problem or b"".join(out)), wire[nl + 1 :]
        if line.startswith(b".") and len(line) > 1:
            line = line[1:]
        if len(line) > MAX_TEXT_LINE:
            problem = problem or "long"
        if b"\0" in line:
            problem = "nul" if problem != "long" else problem
        out.append(line + b"\r\n")
        prev_crlf = crlf
        pos = nl + 1


LINE_BYTES = st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\0", b"..", b"x" * 400])


@settings(max_examples=600, deadline=None)
@given(st.lists(LINE_BYTES, max_size=30), st.lists(st.integers(0, 3000), max_size=6))
def test_data_reader_matches_reference(parts: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(parts) + b"\r\n.\r\nNEXT"
    reader = DataReader(max_size=0)
    buf = bytearray()
    done = False
    for piece in chunks(wire, cuts):
        buf += piece
        if reader.feed(buf):
            done = True
            break
    expected = reference(wire)
    assert expected is not None and done
    text, rest = expected
    result = reader.result()
    if isinstance(text, bytes):
        assert result == text
    else:
        assert not isinstance(result, bytes)
        assert result.code == 554
    # what follows the terminator is untouched (more pieces may not have been fed yet)
    assert rest.startswith(bytes(buf))


LINE = st.binary(max_size=120).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, max_size=30), st.lists(st.integers(0, 5000), max_size=5))
def test_dot_stuffing_round_trip(lines: list[bytes], cuts: list[int]) -> None:
    """What a conforming client stuffs comes back exactly (RFC 5321 §4.5.2)."""
    wire = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    peer = Peer()
    peer.feed(b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<a@b.example>\r\nDATA\r\n")
    for piece in chunks(wire + b".\r\n", cuts):
        peer.feed(piece)
    assert peer.messages() == [b"".join(ln + b"\r\n" for ln in lines)]


ARG = st.lists(
    st.sampled_from([*'<>@"\\.:,;+= -_abcXYZ09%!é[]', "SIZE=", "NOTIFY=", "ORCPT=", "ENVID="]),
    max_size=40,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(ARG, st.booleans())
def test_mail_and_rcpt_arguments_never_raise(text: str, utf8: bool) -> None:
    from correo.smtp.commands import parse_mail, parse_rcpt
    from correo.smtp.replies import Reply

    for result in (parse_mail(text, 1000), parse_rcpt(text, utf8)):
        assert isinstance(result, Reply | c.Mail | c.Rcpt)
