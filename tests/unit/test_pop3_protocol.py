"""The sans-I/O POP3 core: bytes in → events, per state, byte for byte; a state-by-command
matrix; replies rendered byte for byte; Hypothesis fuzzing of the parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correo.pop3 import protocol as p
from correo.pop3.capa import capabilities


def events(proto: p.Pop3Protocol, data: bytes = b"") -> list[object]:
    if data:
        proto.receive_data(data)
    out: list[object] = []
    while True:
        ev = proto.next_event()
        if ev is p.NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, p.ConnectionClosed):
            return out


def in_state(state: p.State) -> p.Pop3Protocol:
    proto = p.Pop3Protocol()
    path = {
        p.State.AUTHORIZATION: [],
        p.State.SASL: [p.Transition.SASL_BEGIN],
        p.State.TRANSACTION: [p.Transition.LOGGED_IN],
        p.State.UPDATE: [p.Transition.LOGGED_IN, p.Transition.QUIT],
        p.State.CLOSED: [p.Transition.QUIT],
    }[state]
    for t in path:
        proto.advance(t)
    assert proto.state is state
    return proto


# --------------------------------------------------------------------------- transcripts


def test_authorization_transcript() -> None:
    proto = p.Pop3Protocol()
    assert events(proto, b"capa\r\nUSER alice@example.test\r\n") == [
        p.Capa(),
        p.User("alice@example.test"),
    ]
    proto.accept_user("alice@example.test")
    # RFC 1939 §7: the password is the rest of the line, spaces and all.
    assert events(proto, b"PASS  two  words \r\n") == [p.Pass("alice@example.test", " two  words ")]
    assert events(proto, b"AUTH plain AGFsaWNlAHNlY3JldA==\r\nAUTH\r\nSTLS\r\nUTF8\r\n") == [
        p.Auth("PLAIN", "AGFsaWNlAHNlY3JldA=="),
        p.Auth(None, None),
        p.Stls(),
        p.Utf8(),
    ]
    assert events(proto, b"QUIT\r\n") == [p.Quit()]


def test_pass_must_directly_follow_an_accepted_user() -> None:
    proto = p.Pop3Protocol()
    assert events(proto, b"PASS secret\r\n") == [p.Rejected("PASS must follow a successful USER")]
    assert events(proto, b"USER bob\r\n") == [p.User("bob")]
    # USER not accepted by the session (e.g. plaintext refused): PASS is refused too.
    assert events(proto, b"PASS secret\r\n") == [p.Rejected("PASS must follow a successful USER")]
    assert events(proto, b"USER bob\r\n") == [p.User("bob")]
    proto.accept_user("bob")
    assert events(proto, b"CAPA\r\nPASS secret\r\n") == [
        p.Capa(),
        p.Rejected("PASS must follow a successful USER"),
    ]


def test_sasl_state_passes_lines_through() -> None:
    proto = in_state(p.State.SASL)
    assert events(proto, b"QUIT\r\n*\r\n\r\nAGFsaWNlAHNlY3JldA==\r\n") == [
        p.SaslResponse("QUIT"),
        p.SaslResponse("*"),
        p.SaslResponse(""),
        p.SaslResponse("AGFsaWNlAHNlY3JldA=="),
    ]
    proto.advance(p.Transition.SASL_END)
    assert events(proto, b"QUIT\r\n") == [p.Quit()]


def test_transaction_transcript() -> None:
    proto = in_state(p.State.TRANSACTION)
    data = (
        b"STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nuidl 1\r\nRETR 1\r\nTOP 1 0\r\nDELE 3\r\n"
        b"NOOP\r\nRSET\r\nCAPA\r\nQUIT\r\n"
    )
    assert events(proto, data) == [
        p.Stat(),
        p.List(None),
        p.List(2),
        p.Uidl(None),
        p.Uidl(1),
        p.Retr(1),
        p.Top(1, 0),
        p.Dele(3),
        p.Noop(),
        p.Rset(),
        p.Capa(),
        p.Quit(),
    ]


def test_update_and_closed_states_accept_nothing() -> None:
    proto = in_state(p.State.UPDATE)
    assert events(proto, b"STAT\r\n") == [p.Rejected("STAT is not allowed in the update state")]
    proto.advance(p.Transition.UPDATE_DONE)
    assert proto.state is p.State.CLOSED
    assert events(proto, b"STAT\r\n") == []


def test_pipelined_commands_split_anywhere() -> None:
    proto = in_state(p.State.TRANSACTION)
    stream = b"RETR 1\r\nDELE 1\r\nRETR 2\r\n"
    got: list[object] = []
    for i in range(len(stream)):
        got += events(proto, stream[i : i + 1])
    assert got == [p.Retr(1), p.Dele(1), p.Retr(2)]


def test_bare_lf_ends_a_line() -> None:
    assert events(in_state(p.State.TRANSACTION), b"STAT\nNOOP\n") == [p.Stat(), p.Noop()]


def test_eof_after_complete_lines_then_connection_closed() -> None:
    proto = in_state(p.State.TRANSACTION)
    proto.receive_data(b"DELE 1\r\nQUIT")  # QUIT without CRLF is not a command
    proto.receive_data(b"")
    assert events(proto) == [p.Dele(1), p.ConnectionClosed()]
    assert proto.state is p.State.CLOSED


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b"FOO", "unknown command"),
        (b"", "empty command"),
        (b" STAT", "empty command"),
        (b"XTND XLST", "unknown command"),
        (b"STAT 1", "STAT takes no argument"),
        (b"NOOP x", "NOOP takes no argument"),
        (b"LIST 1 2", "LIST takes at most one message number"),
        (b"LIST x", "invalid message number"),
        (b"LIST -1", "invalid message number"),
        (b"LIST +1", "invalid message number"),
        (b"LIST 1234567890", "invalid message number"),
        (b"LIST \xd9\xa1", "invalid message number"),  # Arabic-Indic digit one
        (b"UIDL 1 2", "UIDL takes at most one message number"),
        (b"RETR", "RETR needs exactly one message number"),
        (b"RETR 1 2", "RETR needs exactly one message number"),
        (b"DELE", "DELE needs exactly one message number"),
        (b"DELE one", "invalid message number"),
        (b"TOP 1", "TOP needs a message number and a number of lines"),
        (b"TOP 1 x", "invalid number"),
        (b"TOP 1 -1", "invalid number"),
        (b"LIST  1", "arguments are separated by a single space"),
        (b"STAT\x00", "control characters in command"),
        (b"STAT\xff", "command is not valid UTF-8"),
        (b"USER a", "USER is not allowed in the transaction state"),
        (b"STLS", "STLS is not allowed in the transaction state"),
        (b"APOP a b", "APOP is not supported, use USER/PASS or AUTH"),
    ],
)
def test_transaction_bad_input(line: bytes, text: str) -> None:
    assert events(in_state(p.State.TRANSACTION), line + b"\r\n") == [p.Rejected(text)]


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b"USER", "USER needs exactly one name"),
        (b"USER a b", "USER needs exactly one name"),
        (b"AUTH PLAIN a b", "AUTH takes a mechanism and an optional initial response"),
        (b"APOP mrose c4c9334bac560ecc979e58001b3e22fb", "APOP is not supported, use "
         "USER/PASS or AUTH"),
        (b"STAT", "STAT is not allowed in the authorization state"),
        (b"RETR 1", "RETR is not allowed in the authorization state"),
        (b"CAPA x", "CAPA takes no argument"),
    ],
)  # fmt: skip
def test_authorization_bad_input(line: bytes, text: str) -> None:
    assert events(p.Pop3Protocol(), line + b"\r\n") == [p.Rejected(text)]


def test_255_octet_command_accepted_and_overlong_line_skipped() -> None:
    proto = p.Pop3Protocol()
    name = "u" * 250
    assert events(proto, f"USER {name}\r\n".encode()) == [p.User(name)]  # 257 octets
    long = b"USER " + b"x" * (p.MAX_COMMAND_LINE + 10)
    # Arrives in pieces without a LF: refused once, the rest skipped up to the LF.
    assert events(proto, long[:600]) == []
    assert events(proto, long[600:]) == [p.Rejected("line too long")]
    assert proto.buffered == 0
    assert events(proto, b"yyyy\r\nCAPA\r\n") == [p.Capa()]


def test_overlong_line_with_lf_in_same_read() -> None:
    proto = p.Pop3Protocol()
    data = b"NOOP " + b"x" * p.MAX_COMMAND_LINE + b"\r\nCAPA\r\n"
    assert events(proto, data) == [p.Rejected("line too long"), p.Capa()]


def test_sasl_lines_may_be_longer_than_commands_but_are_bounded() -> None:
    proto = in_state(p.State.SASL)
    line = "QUFB" * 1000  # 4000 octets: beyond the command limit
    assert events(proto, line.encode() + b"\r\n") == [p.SaslResponse(line)]
    assert events(proto, b"A" * (p.MAX_SASL_LINE + 1) + b"\r\n") == [
        p.Rejected("SASL response too long, authentication aborted")
    ]
    assert proto.state is p.State.AUTHORIZATION


# --------------------------------------------------------------------------- the matrix

SAMPLES: dict[str, tuple[bytes, object]] = {
    "USER": (b"USER a", p.User("a")),
    "PASS": (b"PASS b", p.Pass("a", "b")),
    "AUTH": (b"AUTH PLAIN", p.Auth("PLAIN", None)),
    "CAPA": (b"CAPA", p.Capa()),
    "STLS": (b"STLS", p.Stls()),
    "UTF8": (b"UTF8", p.Utf8()),
    "STAT": (b"STAT", p.Stat()),
    "LIST": (b"LIST", p.List(None)),
    "UIDL": (b"UIDL 1", p.Uidl(1)),
    "RETR": (b"RETR 1", p.Retr(1)),
    "TOP": (b"TOP 1 5", p.Top(1, 5)),
    "DELE": (b"DELE 1", p.Dele(1)),
    "NOOP": (b"NOOP", p.Noop()),
    "RSET": (b"RSET", p.Rset()),
    "QUIT": (b"QUIT", p.Quit()),
    "APOP": (b"APOP a b", None),
}
EXPECTED_ALLOWED = {
    p.State.AUTHORIZATION: {"USER", "PASS", "AUTH", "CAPA", "STLS", "UTF8", "QUIT"},
    p.State.TRANSACTION: {
        "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "NOOP", "RSET", "QUIT", "CAPA"
    },
    p.State.UPDATE: set(),
}  # fmt: skip


@pytest.mark.parametrize("state", list(EXPECTED_ALLOWED))
@pytest.mark.parametrize("keyword", list(SAMPLES))
def test_state_command_matrix(state: p.State, keyword: str) -> None:
    proto = in_state(state)
    if keyword == "PASS" and state is p.State.AUTHORIZATION:
        proto.accept_user("a")
    line, event = SAMPLES[keyword]
    got = events(proto, line + b"\r\n")
    assert len(got) == 1
    if keyword in EXPECTED_ALLOWED[state] and event is not None:
        assert got == [event]
    else:
        assert isinstance(got[0], p.Rejected)
    # Whatever happened, the next command is parsed normally.
    assert len(events(proto, b"QUIT\r\n")) == 1


def test_transition_table_refuses_anything_else() -> None:
    for state in p.State:
        for t in p.Transition:
            proto = in_state(state)
            if (state, t) in p.TRANSITIONS:
                proto.advance(t)
                assert proto.state is p.TRANSITIONS[(state, t)]
            else:
                with pytest.raises(p.LocalProtocolError):
                    proto.advance(t)


# --------------------------------------------------------------------------- STLS hygiene


def test_start_tls_discards_pipelined_input() -> None:
    """CVE-2011-0411: commands sent in clear after STLS must never run under TLS."""
    proto = p.Pop3Protocol()
    assert events(proto, b"STLS\r\nUSER mallory\r\nPASS x\r\n")[:1] == [p.Stls()]
    # The session answers +OK and upgrades; the rest of that read is dropped.
    proto.start_tls()
    assert proto.buffered == 0 and proto.tls
    assert events(proto, b"CAPA\r\n") == [p.Capa()]
    with pytest.raises(p.LocalProtocolError):
        proto.start_tls()


def test_start_tls_ends_a_pending_user() -> None:
    proto = p.Pop3Protocol()
    events(proto, b"USER a\r\n")
    proto.accept_user("a")
    assert events(proto, b"STLS\r\n") == [p.Stls()]
    proto.start_tls()
    assert events(proto, b"PASS x\r\n") == [p.Rejected("PASS must follow a successful USER")]


# --------------------------------------------------------------------------- replies


def test_reply_rendering() -> None:
    assert p.ok() == b"+OK\r\n"
    assert p.ok("2 320") == b"+OK 2 320\r\n"
    assert p.err("maildrop already locked", "IN-USE") == (
        b"-ERR [IN-USE] maildrop already locked\r\n"
    )
    assert p.err("evil\r\n+OK forged") == b"-ERR evil  +OK forged\r\n"
    assert p.challenge(b"") == b"+ \r\n"
    assert p.multiline("x", ["1 120", ".hidden", ""]) == (
        b"+OK x\r\n1 120\r\n..hidden\r\n\r\n.\r\n"
    )


def test_capabilities_per_state() -> None:
    kw = {"mechanisms": ("PLAIN", "LOGIN"), "expire": "NEVER", "login_delay": 0}
    plain = capabilities(p.State.AUTHORIZATION, passwords_allowed=False, stls=True, **kw)
    assert "STLS" in plain and "USER" not in plain
    assert not any(c.startswith("SASL") for c in plain)
    for tag in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"):
        assert tag in plain
    assert any(c.startswith("IMPLEMENTATION correo") for c in plain)
    secure = capabilities(p.State.AUTHORIZATION, passwords_allowed=True, stls=False, **kw)
    assert "USER" in secure and "SASL PLAIN LOGIN" in secure and "STLS" not in secure
    kw["login_delay"] = 900
    kw["expire"] = "0"
    after = capabilities(p.State.TRANSACTION, passwords_allowed=False, stls=True, **kw)
    assert "SASL PLAIN LOGIN" in after and "STLS" not in after
    assert "LOGIN-DELAY 900" in after and "EXPIRE 0" in after


# --------------------------------------------------------------------------- fuzzing

ALL_EVENT_TYPES = (
    p.User, p.Pass, p.Auth, p.SaslResponse, p.Capa, p.Stls, p.Utf8, p.Stat, p.List, p.Uidl,
    p.Retr, p.Top, p.Dele, p.Noop, p.Rset, p.Quit, p.Rejected, p.ConnectionClosed,
)  # fmt: skip

_tokens = st.sampled_from(
    [b"USER a", b"PASS b", b"STAT", b"LIST", b"LIST 1", b"RETR 99999", b"TOP 1 2", b"DELE",
     b"UIDL", b"QUIT", b"AUTH PLAIN", b"CAPA", b"STLS", b" ", b"\r", b"\n", b"\r\n", b".",
     b"\x00", b"\xff", b"x" * 300, b"9" * 20]
)  # fmt: skip
_streams = st.lists(st.one_of(_tokens, st.binary(max_size=64)), max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    stream=_streams,
    cuts=st.lists(st.integers(0, 2000), max_size=10),
    state=st.sampled_from([p.State.AUTHORIZATION, p.State.SASL, p.State.TRANSACTION]),
)
def test_fuzz_never_raises_and_is_split_independent(
    stream: bytes, cuts: list[int], state: p.State
) -> None:
    whole = in_state(state)
    expected = events(whole, stream) if stream else []
    pieces = in_state(state)
    got: list[object] = []
    last = 0
    for cut in [*sorted(c for c in cuts if c <= len(stream)), len(stream)]:
        if cut > last:
            got += events(pieces, stream[last:cut])
            # Nothing held beyond one line limit plus what just arrived.
            assert pieces.buffered <= p.MAX_SASL_LINE + (cut - last)
        last = cut
    assert got == expected
    assert all(isinstance(e, ALL_EVENT_TYPES) for e in got)
    pieces.receive_data(b"")
    tail = events(pieces)
    assert isinstance(tail[-1], p.ConnectionClosed)
    assert pieces.state is p.State.CLOSED
