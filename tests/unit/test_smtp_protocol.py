"""The sans-I/O SMTP core, byte for byte (RFC 5321, 2920, 3030, 3207, 4954)."""

from __future__ import annotations

import pytest
from test_smtp_helpers import EHLO, Peer, session

from correo.smtp import commands as c
from correo.smtp import replies
from correo.smtp.protocol import (
    ALLOWED,
    AUTH_LINE,
    MAIL_LINE,
    NEED_DATA,
    RCPT_LINE,
    Limits,
    LocalProtocolError,
    ServerProtocol,
    State,
)

TX = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"


def test_greeting_and_ehlo_carry_no_enhanced_code() -> None:
    peer = Peer()
    assert peer.greeting == b"220 mx.example.test ESMTP correo\r\n"
    assert peer.feed(b"EHLO client.example\r\n") == (
        b"250-mx.example.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
    )
    assert peer.events == [c.Hello("client.example", extended=True)]
    assert peer.proto.state is State.READY


def test_pipelined_transaction_one_reply_per_command() -> None:
    out, peer = session(TX + b"DATA\r\nhello\r\n.\r\nQUIT\r\n")
    assert out == (
        b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
        b"354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Message accepted\r\n"
        b"221 2.0.0 Bye\r\n"
    )
    assert peer.messages() == [b"hello\r\n"]
    assert peer.proto.state is State.CLOSED


def test_reply_must_be_sent_before_next_event() -> None:
    proto = ServerProtocol(Limits())
    with pytest.raises(LocalProtocolError):
        proto.next_event()
    proto.send(replies.reply(220, "", "hi"))
    proto.receive_data(b"NOOP\r\nNOOP\r\n")
    assert isinstance(proto.next_event(), c.Noop)
    with pytest.raises(LocalProtocolError):
        proto.next_event()
    proto.send(replies.R250_OK)
    assert isinstance(proto.next_event(), c.Noop)
    proto.send(replies.R250_OK)
    assert proto.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        proto.send(replies.R250_OK)


def test_command_split_across_reads() -> None:
    peer = Peer()
    assert peer.feed(b"EH") == b""
    assert peer.feed(b"LO x\r") == b""
    assert peer.feed(b"\n").startswith(b"250-")


# --------------------------------------------------------------------------- DATA text


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        (b"a\r\n..b\r\n.\r\n", b"a\r\n.b\r\n"),  # RFC 5321 §4.5.2 unstuffing
        (b"..\r\n.\r\n", b".\r\n"),
        (b".\r\n", b""),  # empty message
        (b"a\nb\n.\r\n.\r\n", b"a\r\nb\r\n.\r\n"),  # bare LF → CRLF; "." after it is text
        (b"a\rb\r\n.\r\n", b"a\rb\r\n"),  # a bare CR stays inside its line
        (b"a\r\r\n.\r\n", b"a\r\r\n"),
    ],
)
def test_data_transparency(text: bytes, stored: bytes) -> None:
    out, peer = session(TX + b"DATA\r\n" + text)
    assert peer.messages() == [stored]
    assert out.endswith(b"250 2.0.0 Message accepted\r\n")


@pytest.mark.parametrize(
    "smuggle",
    [
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\r.\r\n",
        b"\r\n.\r\r\n",
        b"\n.\n\r\n",
    ],
)
def test_only_crlf_dot_crlf_ends_data(smuggle: bytes) -> None:
    """SMTP smuggling (CVE-2023-51764 family): none of these end the message, so the
    "MAIL FROM" after them is message text, not a second transaction."""
    body = b"Subject: x\r\n\r\nfirst" + smuggle + b"MAIL FROM:<evil@x.example>\r\n"
    out, peer = session(TX + b"DATA\r\n" + body + b".\r\n")
    assert out.count(b"250 2.0.0 Message accepted") == 1
    assert [type(e) for e in peer.events[1:]] == [c.Mail, c.Rcpt, c.Data, c.Message]
    (stored,) = peer.messages()
    assert stored.endswith(b"MAIL FROM:<evil@x.example>\r\n")
    assert b"\n" not in stored.replace(b"\r\n", b"")  # only CRLF line ends are stored


def test_data_split_at_every_offset() -> None:
    wire = b"l1\r\n..l2\r\n\r\n.\r\n"
    for cut in range(len(wire) + 1):
        peer = Peer()
        peer.feed(b"EHLO x\r\n" + TX + b"DATA\r\n")
        peer.feed(wire[:cut])
        peer.feed(wire[cut:])
        assert peer.messages() == [b"l1\r\n.l2\r\n\r\n"], cut


def test_commands_pipelined_after_data_end_are_commands() -> None:
    out, _peer = session(TX + b"DATA\r\nx\r\n.\r\nRSET\r\nNOOP\r\n")
    assert out.endswith(b"250 2.0.0 Message accepted\r\n250 2.0.0 OK\r\n250 2.0.0 OK\r\n")


def test_nul_in_message_is_refused_at_its_end() -> None:
    out, peer = session(TX + b"DATA\r\na\0b\r\n.\r\nNOOP\r\n")
    assert out.endswith(b"554 5.6.0 NUL octets are not allowed in messages\r\n250 2.0.0 OK\r\n")
    assert peer.messages() == []
    assert peer.proto.state is State.READY


def test_long_data_line_policy() -> None:
    ok = b"x" * 998
    out, peer = session(TX + b"DATA\r\n" + ok + b"\r\n." + ok + b"\r\n.\r\n")
    assert peer.messages() == [ok + b"\r\n" + ok + b"\r\n"]  # 998 + stuffing dot is fine
    out, peer = session(TX + b"DATA\r\n" + b"y" * 999 + b"\r\n.\r\n")
    assert out.endswith(
        b"554 5.6.0 Message has a line longer than 998 octets (RFC 5322 section 2.1.1)\r\n"
    )
    assert peer.messages() == []


def test_long_data_line_is_not_buffered() -> None:
    peer = Peer()
    peer.feed(b"EHLO x\r\n" + TX + b"DATA\r\n")
    for _ in range(100):
        peer.feed(b"z" * 10_000)
        assert peer.proto.buffered < 3000
    out = peer.feed(b"\r\n.\r\n")
    assert out.startswith(b"554 5.6.0")


def test_message_over_size_limit_is_dropped_as_it_arrives() -> None:
    peer = Peer(limits=Limits(max_message_size=10_000))
    peer.feed(b"EHLO x\r\n" + TX + b"DATA\r\n")
    for _ in range(200):
        peer.feed(b"0123456789" * 50 + b"\r\n")
        assert peer.proto.buffered < 12_000
    assert peer.feed(b".\r\n") == (b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")


def test_declared_size_over_limit() -> None:
    out, _ = session(
        b"MAIL FROM:<a@b.example> SIZE=10001\r\n", limits=Limits(max_message_size=10_000)
    )
    assert out == b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"


def test_eof_in_data_gives_no_message() -> None:
    peer = Peer()
    peer.feed(b"EHLO x\r\n" + TX + b"DATA\r\npartial\r\n")
    peer.proto.receive_data(b"")
    assert isinstance(peer.proto.next_event(), c.Closed)
    assert peer.messages() == []


# --------------------------------------------------------------------------- BDAT


def test_bdat_chunks_counted_exactly_and_pipelined() -> None:
    out, peer = session(TX + b"BDAT 6\r\nab\r\ncdBDAT 0 LAST\r\nNOOP\r\n")
    assert out.endswith(
        b"250 2.0.0 6 octets received\r\n250 2.0.0 Message accepted\r\n250 2.0.0 OK\r\n"
    )
    assert peer.messages() == [b"ab\r\ncd"]


def test_bdat_data_may_look_like_commands() -> None:
    chunk = b"QUIT\r\n.\r\n"
    _out, peer = session(TX + b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    assert peer.messages() == [chunk]
    assert peer.proto.state is State.READY


def test_refused_bdat_chunk_is_still_read() -> None:
    out, _peer = session(b"BDAT 4 LAST\r\nQUITNOOP\r\n")
    assert out == b"503 5.5.1 Bad sequence of commands\r\n250 2.0.0 OK\r\n"


def test_bdat_bare_lf_normalised_and_no_data_after_bdat() -> None:
    out, peer = session(TX + b"BDAT 3\r\na\nbDATA\r\n")
    assert out.endswith(b"503 5.5.1 DATA and BDAT cannot be mixed\r\n")
    out, peer = session(TX + b"BDAT 3 LAST\r\na\nb")
    assert peer.messages() == [b"a\r\nb"]


def test_bdat_over_size_limit() -> None:
    out, _peer = session(
        TX + b"BDAT 20 LAST\r\n" + b"x" * 20 + b"NOOP\r\n", limits=Limits(max_message_size=10)
    )
    assert out.endswith(
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.0.0 OK\r\n"
    )


# --------------------------------------------------------------------------- limits


def test_command_line_limits() -> None:
    out, _ = session(b"NOOP " + b"x" * (512 - 7) + b"\r\n")
    assert out == b"250 2.0.0 OK\r\n"
    out, _ = session(b"NOOP " + b"x" * (512 - 6) + b"\r\n")
    assert out == b"500 5.5.2 Line too long\r\n"
    mail = b"MAIL FROM:<a@b.example> ENVID=" + b"x" * 100 + b"\r\n"
    assert len(mail) < MAIL_LINE
    out, _ = session(mail)
    assert out == b"250 2.1.0 Sender OK\r\n"
    rcpt = b"RCPT TO:<c@d.example> ORCPT=rfc822;" + b"x" * 470 + b"@d.example\r\n"
    assert 512 < len(rcpt) < RCPT_LINE
    out, _ = session(b"MAIL FROM:<>\r\n" + rcpt)
    assert out.endswith(b"250 2.1.5 Recipient OK\r\n")


def test_endless_line_is_discarded_not_buffered() -> None:
    peer = Peer()
    peer.feed(b"EHLO x\r\n")
    for _ in range(100):
        assert peer.feed(b"A" * 10_000) == b""
        assert peer.proto.buffered <= AUTH_LINE + 2
    assert peer.feed(b"\r\nNOOP\r\n") == b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"


def test_auth_response_limit() -> None:
    def policy(event: c.Event) -> replies.Reply:
        if isinstance(event, c.Auth):
            return replies.r334("")
        if isinstance(event, c.AuthResponse):
            return replies.R235_AUTH_OK
        if isinstance(event, c.Invalid):
            return event.reply
        return EHLO

    out, peer = session(b"AUTH PLAIN\r\n" + b"A" * (AUTH_LINE - 2) + b"\r\n", policy=policy)
    assert out == b"334 \r\n235 2.7.0 Authentication successful\r\n"
    out, peer = session(
        b"AUTH PLAIN\r\n" + b"A" * (AUTH_LINE - 1) + b"\r\nAUTH PLAIN\r\n", policy=policy
    )
    assert out == b"334 \r\n500 5.5.6 Authentication exchange line is too long\r\n334 \r\n"
    assert peer.proto.state is State.AUTH and not peer.proto.authenticated


def test_nul_in_command_line() -> None:
    out, _ = session(b"NOOP\0\r\n")
    assert out == b"500 5.5.2 NUL octets are not allowed\r\n"


def test_too_many_errors_closes() -> None:
    peer = Peer(limits=Limits(max_errors=3))
    out = peer.feed(b"BOGUS\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n")
    assert out == (
        b"500 5.5.2 Command not recognized\r\n500 5.5.2 Command not recognized\r\n"
        b"421 4.7.0 Too many errors, closing connection\r\n"
    )
    assert peer.proto.state is State.CLOSED


def test_max_recipients() -> None:
    out, _ = session(
        b"MAIL FROM:<>\r\n" + b"RCPT TO:<x@y.example>\r\n" * 3, limits=Limits(max_recipients=2)
    )
    assert out.endswith(b"250 2.1.5 Recipient OK\r\n452 4.5.3 Too many recipients\r\n")


def test_refused_rcpt_does_not_count() -> None:
    def policy(event: c.Event) -> replies.Reply:
        if isinstance(event, c.Rcpt) and event.recipient.startswith("no"):
            return replies.R550_NO_SUCH_USER
        if isinstance(event, c.Invalid):
            return event.reply
        return EHLO if isinstance(event, c.Hello) else replies.R250_OK

    out, peer = session(b"MAIL FROM:<>\r\nRCPT TO:<no@x.example>\r\nDATA\r\n", policy=policy)
    assert out.endswith(b"550 5.1.1 No such user here\r\n554 5.5.1 No valid recipients\r\n")
    assert peer.proto.state is State.MAIL


# --------------------------------------------------------------------------- STARTTLS


def test_starttls_discards_pipelined_input_and_resets() -> None:
    """CVE-2011-0411: commands sent with STARTTLS must not run inside TLS."""
    out, peer = session(b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\n")
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    assert peer.proto.tls and peer.proto.state is State.CONNECTED
    assert peer.proto.buffered == 0
    assert peer.feed(b"MAIL FROM:<a@b.example>\r\n") == b"503 5.5.1 Send HELO/EHLO first\r\n"
    assert peer.feed(b"EHLO x\r\nSTARTTLS\r\n").endswith(b"503 5.5.1 TLS already active\r\n")


# --------------------------------------------------------------------------- the matrix

STATES_BY_SETUP: dict[State, bytes] = {
    State.CONNECTED: b"",
    State.READY: b"EHLO x\r\n",
    State.MAIL: b"EHLO x\r\nMAIL FROM:<>\r\n",
    State.RCPT: b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<a@b.example>\r\n",
    State.CHUNKING: b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<a@b.example>\r\nBDAT 1\r\nx",
}
COMMAND_LINES = {
    "HELO": b"HELO x\r\n",
    "EHLO": b"EHLO x\r\n",
    "MAIL": b"MAIL FROM:<a@b.example>\r\n",
    "RCPT": b"RCPT TO:<c@d.example>\r\n",
    "DATA": b"DATA\r\n",
    "BDAT": b"BDAT 1 LAST\r\nz",
    "RSET": b"RSET\r\n",
    "NOOP": b"NOOP\r\n",
    "QUIT": b"QUIT\r\n",
    "VRFY": b"VRFY u\r\n",
    "EXPN": b"EXPN l\r\n",
    "HELP": b"HELP\r\n",
    "STARTTLS": b"STARTTLS\r\n",
    "AUTH": b"AUTH PLAIN AGEAYg==\r\n",
}


@pytest.mark.parametrize("state", list(STATES_BY_SETUP))
@pytest.mark.parametrize("verb", list(COMMAND_LINES))
def test_state_command_matrix(state: State, verb: str) -> None:
    """Every command in every state: in sequence it reaches the session (which here
    accepts everything), out of sequence the core answers 503 (or 554 for DATA/BDAT
    without recipients, RFC 5321 §3.3) and the state is unchanged."""
    peer = Peer()
    peer.feed(STATES_BY_SETUP[state])
    assert peer.proto.state is state
    n = len(peer.events)
    out = peer.feed(COMMAND_LINES[verb])
    event = peer.events[n]
    if state in ALLOWED[verb]:
        assert not isinstance(event, c.Invalid), out
        assert out[:1] in (b"2", b"3"), out
    else:
        assert isinstance(event, c.Invalid)
        assert out[:3] in (b"503", b"554"), out
        assert peer.proto.state is (
            State.READY if verb == "BDAT" and state is not State.CONNECTED else state
        )


def test_unknown_command() -> None:
    out, _peer = session(b"XYZZY\r\n")
    assert out == b"500 5.5.2 Command not recognized\r\n"


def test_rset_resets_transaction() -> None:
    out, _peer = session(TX + b"RSET\r\nRCPT TO:<c@d.example>\r\n")
    assert out.endswith(b"250 2.0.0 OK\r\n503 5.5.1 Need MAIL before RCPT\r\n")


def test_core_modules_are_sans_io() -> None:
    """DESIGN.md principle 1: the core imports no asyncio, socket, ssl or store code."""
    import ast
    from pathlib import Path

    import correo.smtp

    banned = ("asyncio", "socket", "ssl", "selectors", "correo.store", "correo.net")
    for name in ("protocol", "commands", "data", "replies"):
        path = Path(correo.smtp.__file__).parent / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert not module.startswith(banned), f"{name}.py imports {module}"


def test_which_replies_may_be_buffered() -> None:
    """RFC 2920 §3.2: MAIL/RCPT/RSET replies may wait for the group; EHLO, DATA, VRFY,
    EXPN, QUIT, NOOP and unrecognized commands must go out at once."""
    peer = Peer()
    flushes = []
    for line in (
        b"EHLO x\r\n",
        b"RSET\r\n",
        b"MAIL FROM:<>\r\n",
        b"RCPT TO:<a@b.example>\r\n",
        b"NOOP\r\n",
        b"VRFY a\r\n",
        b"BOGUS\r\n",
        b"DATA\r\n",
    ):
        peer.feed(line)
        flushes.append(peer.proto.flush_now)
    assert flushes == [True, False, False, False, True, True, True, True]


def test_reply_constants_agree_with_their_class() -> None:
    """RFC 2034 §4: the enhanced code's class equals the reply's; 3yz carry none."""
    for name in dir(replies):
        value = getattr(replies, name)
        if not isinstance(value, replies.Reply):
            continue
        assert name.startswith(f"R{value.code}_"), name
        if value.code // 100 == 3:
            assert value.enhanced == "", name
        else:
            assert value.enhanced.startswith(f"{value.code // 100}."), name
