"""The sans-I/O IMAP command reader, byte for byte (RFC 3501 §9, RFC 7888)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correo.imap import commands as c
from correo.imap import encoder
from correo.imap.parser import (
    NEED_DATA,
    BadCommand,
    CommandReader,
    CommandReceived,
    ContinuationRequest,
    LineReceived,
    LiteralTooBig,
)
from correo.imap.spec import FetchAtt, SearchKey, Section, SequenceSet
from correo.store.base import FlagMode


def reader(**kw: int) -> CommandReader:
    return CommandReader(**kw)


def events(r: CommandReader, data: bytes = b"") -> list[object]:
    r.receive_data(data)
    out = []
    while (ev := r.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def parse(line: bytes) -> c.Command:
    evs = events(reader(), line + b"\r\n")
    assert len(evs) == 1 and isinstance(evs[0], CommandReceived), evs
    return evs[0].command


def bad(line: bytes) -> BadCommand:
    evs = events(reader(), line + b"\r\n")
    assert len(evs) == 1 and isinstance(evs[0], BadCommand), evs
    return evs[0]


# ------------------------------------------------------------------ framing


def test_simple_commands_and_case() -> None:
    assert parse(b"a1 capability") == c.Capability("a1")
    assert parse(b"A2 NOOP") == c.Noop("A2")
    assert parse(b"x.y LOGOUT") == c.Logout("x.y")


def test_partial_input_needs_data() -> None:
    r = reader()
    assert events(r, b"a1 NO") == []
    assert events(r, b"OP\r") == []
    assert events(r, b"\n") == [CommandReceived(c.Noop("a1"))]


def test_pipelined_commands() -> None:
    evs = events(reader(), b"a NOOP\r\nb CAPABILITY\r\nc LOGOUT\r\n")
    assert [e.command for e in evs if isinstance(e, CommandReceived)] == [
        c.Noop("a"),
        c.Capability("b"),
        c.Logout("c"),
    ]


def test_synchronising_literal_is_an_event_and_line_is_kept() -> None:
    r = reader()
    assert events(r, b"a LOGIN {5}\r\n") == [ContinuationRequest(5)]
    assert events(r, b"al") == []
    assert events(r, b"ice {6}\r\n") == [ContinuationRequest(6)]
    assert events(r, b's3cr"t\r\n') == [CommandReceived(c.Login("a", "alice", 's3cr"t'))]


def test_non_synchronising_literal_needs_no_continuation() -> None:
    evs = events(reader(), b"a LOGIN {5+}\r\nalice {2+}\r\npw\r\n")
    assert evs == [CommandReceived(c.Login("a", "alice", "pw"))]


def test_literal_may_contain_crlf_and_look_like_commands() -> None:
    evs = events(reader(), b"a LOGIN u {13+}\r\nx\r\nb LOGOUT\r\n\r\n")
    assert evs == [CommandReceived(c.Login("a", "u", "x\r\nb LOGOUT\r\n"))]


def test_over_limit_sync_literal_is_refused_without_continuation() -> None:
    r = reader(max_literal_size=10)
    evs = events(r, b"a LOGIN {11}\r\n")
    assert evs == [LiteralTooBig("a", "LOGIN", 11, 10, True)]
    assert events(r, b"b NOOP\r\n") == [CommandReceived(c.Noop("b"))]


def test_append_limit_before_and_after_login() -> None:
    r = reader(max_literal_size=10, max_message_size=100)
    assert events(r, b"a APPEND INBOX {50}\r\n") == [LiteralTooBig("a", "APPEND", 50, 10, True)]
    r.authenticated()
    assert events(r, b"b APPEND INBOX {50}\r\n") == [ContinuationRequest(50)]
    assert isinstance(events(r, b"x" * 50 + b"\r\n")[0], CommandReceived)
    assert events(r, b"c APPEND INBOX {101}\r\n") == [LiteralTooBig("c", "APPEND", 101, 100, True)]


def test_over_limit_non_sync_literal_is_read_and_discarded() -> None:
    r = reader(max_literal_size=10)
    assert events(r, b"a LOGIN {20+}\r\n") == [LiteralTooBig("a", "LOGIN", 20, 10, False)]
    # the literal's content, even if it looks like commands, is never executed
    assert events(r, b"b LOGOUT\r\nc LOGOUT\r\n") == []
    assert events(r, b" rest of line {3+}\r\nxyz\r\nd NOOP\r\n") == [CommandReceived(c.Noop("d"))]


def test_literal_count_and_total_bounded() -> None:
    r = reader(max_literal_size=10)
    line = b"a SEARCH" + b" TEXT {10+}\r\n0123456789" * 4 + b" TEXT {10+}\r\n"
    evs = events(r, line)
    assert isinstance(evs[-1], LiteralTooBig)


def test_line_too_long_is_skipped_without_buffering() -> None:
    r = reader(max_line_length=100)
    evs = events(r, b"a1 NOOP " + b"x" * 200)
    assert evs == [BadCommand("a1", "command line too long")]
    assert events(r, b"y" * 10_000) == []
    assert len(r._buf) <= 32
    assert events(r, b"\r\nb NOOP\r\n") == [CommandReceived(c.Noop("b"))]


def test_complete_line_too_long() -> None:
    r = reader(max_line_length=20)
    assert events(r, b"a1 NOOP " + b"x" * 30 + b"\r\nb NOOP\r\n") == [
        BadCommand("a1", "command line too long"),
        CommandReceived(c.Noop("b")),
    ]


def test_bad_count() -> None:
    r = reader(max_errors=3)
    events(r, b"a FROB\r\nb FROB\r\n")
    assert not r.too_many_errors
    events(r, b"c FROB\r\n")
    assert r.too_many_errors


def test_badcharset_is_no_and_not_counted() -> None:
    r = reader()
    (ev,) = events(r, b"a SEARCH CHARSET KOI8-R ALL\r\n")
    assert isinstance(ev, BadCommand) and ev.status == "NO"
    assert ev.code == "BADCHARSET (US-ASCII UTF-8)" and r.errors == 0


def test_want_line_and_discard() -> None:
    r = reader()
    r.want_line()
    assert events(r, b"dGVzdA==\r\na NOOP\r\n") == [
        LineReceived(b"dGVzdA=="),
        CommandReceived(c.Noop("a")),
    ]
    r.receive_data(b"b LOGIN x y\r\nc NOOP\r\n")
    assert r.discard_input() > 0
    assert r.next_event() is NEED_DATA


def test_requested_line_is_bounded_too() -> None:
    r = reader(max_line_length=10)
    r.want_line()
    assert events(r, b"x" * 20) == [BadCommand("*", "command line too long")]
    assert events(r, b"\r\na NOOP\r\n") == [CommandReceived(c.Noop("a"))]
    r.want_line()
    assert events(r, b"y" * 11 + b"\r\n") == [BadCommand("*", "line too long")]


def test_authenticate_repr_hides_the_initial_response() -> None:
    cmd = parse(b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==")
    assert "AGFsaWNl" not in repr(cmd)


def test_bare_lf_is_accepted() -> None:
    assert events(reader(), b"a NOOP\n") == [CommandReceived(c.Noop("a"))]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "empty command line"),
        (b"a", "expected a tag, a space and a command"),
        (b"+tag NOOP", "expected a tag"),
        (b"a FROB", "unknown command FROB"),
        (b"a NOOP extra", "unexpected characters at the end of the command"),
        (b'a LOGIN "unterminated', "unterminated quoted string"),
        (b'a LOGIN "bad\\escape" x', 'only \\" and \\\\ may be escaped in a quoted string'),
        (
            b"a SELECT &Jjo!",
            "mailbox name is not valid modified UTF-7: unterminated '&' shifted sequence",
        ),
        (b"a FETCH 0 FLAGS", "bad sequence set '0'"),
        (b"a FETCH 1: FLAGS", "bad sequence set '1:'"),
        (b"a FETCH 1 FROB", "unknown fetch attribute FROB"),
        (b"a FETCH 1 BODY[1.]", "section part ends with '.'"),
        (b"a FETCH 1 BODY[MIME]", "MIME needs a part number"),
        (b"a STORE 1 FLAGS (\\Recent)", "\\Recent cannot be set (RFC 3501 §2.3.2)"),
        (b"a STORE 1 BOGUS x", "expected FLAGS, +FLAGS or -FLAGS"),
        (b"a SEARCH FROB", "unknown search key FROB"),
        (b"a SEARCH SINCE 31-Feb-2026", "no such date"),
        (b"a STATUS INBOX (MESSAGES FOO)", "unknown STATUS item FOO"),
        (b"a UID FROB 1", "UID FROB is not a command"),
        (b'a APPEND INBOX "x"', 'expected a date-time like "17-Jul-1996 02:44:25 -0700"'),
        (b"a SELECT INBOX (CONDSTORE)", "SELECT parameters are not supported"),
    ],
)
def test_syntax_errors(line: bytes, reason: str) -> None:
    ev = bad(line)
    assert ev.reason == reason and ev.status == "BAD"


def test_invalid_tag_answered_untagged() -> None:
    assert bad(b"a{b NOOP").tag == "*"


def test_deep_nesting_refused() -> None:
    assert bad(b"a SEARCH " + b"(" * 50 + b"ALL" + b")" * 50).reason == (
        "search program nested too deeply"
    )
    assert isinstance(parse(b"a SEARCH " + b"(" * 10 + b"ALL" + b")" * 10), c.Search)


# ------------------------------------------------------------------ grammar


def test_login_and_authenticate() -> None:
    assert parse(b'a LOGIN "alice@example.test" "p w"') == c.Login("a", "alice@example.test", "p w")
    assert "secret" not in repr(parse(b"a LOGIN u secret"))
    assert parse(b"a AUTHENTICATE plain") == c.Authenticate("a", "PLAIN")
    assert parse(b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==") == c.Authenticate(
        "a", "PLAIN", b"AGFsaWNlAHNlY3JldA=="
    )
    assert parse(b"a AUTHENTICATE PLAIN =") == c.Authenticate("a", "PLAIN", b"=")


def test_mailbox_commands() -> None:
    assert parse(b"a SELECT inbox") == c.Select("a", "INBOX")
    assert parse(b"a EXAMINE Inbox/Sub") == c.Select("a", "INBOX/Sub", readonly=True)
    assert parse(b"a SELECT &AMk-t&AOk-") == c.Select("a", "Été")
    assert parse(b"a CREATE Projects/2026/") == c.Create("a", "Projects/2026")
    assert parse(b"a CREATE Sent2 (USE (\\Sent))") == c.Create("a", "Sent2", ("\\Sent",))
    assert parse(b"a DELETE x") == c.Delete("a", "x")
    assert parse(b'a RENAME "a b" c') == c.Rename("a", "a b", "c")
    assert parse(b"a SUBSCRIBE x") == c.Subscribe("a", "x")
    assert parse(b"a UNSUBSCRIBE x") == c.Subscribe("a", "x", subscribe=False)
    assert parse(b'a LIST "" *') == c.List("a", "", "*")
    assert parse(b"a LIST Work/ %/]") == c.List("a", "Work/", "%/]")
    assert parse(b'a LSUB "" "*"') == c.List("a", "", "*", lsub=True)
    assert parse(b"a STATUS INBOX (messages UIDNEXT)") == c.Status(
        "a", "INBOX", ("MESSAGES", "UIDNEXT")
    )


def test_append() -> None:
    cmd = parse(b'a APPEND INBOX (\\Seen $Label) " 7-Jul-1996 02:44:25 -0700" {3+}\r\nabc')
    assert cmd == c.Append(
        "a",
        "INBOX",
        frozenset({"\\Seen", "$Label"}),
        dt.datetime(1996, 7, 7, 2, 44, 25, tzinfo=dt.timezone(-dt.timedelta(hours=7))),
        b"abc",
    )
    assert parse(b"a APPEND Drafts {1+}\r\nx") == c.Append("a", "Drafts", frozenset(), None, b"x")
    assert bad(b'a APPEND INBOX "abc"').reason.startswith("expected a date-time")


def test_utf8_accept_names_and_append() -> None:
    r = reader()
    r.utf8 = True
    assert events(r, 'a SELECT "Été/&AMk-"\r\n'.encode()) == [
        CommandReceived(c.Select("a", "Été/&AMk-"))
    ]
    (ev,) = events(r, b'b SELECT "bad\xff"\r\n')
    assert isinstance(ev, BadCommand) and ev.reason == "mailbox name is not UTF-8"
    (ev,) = events(r, 'c CREATE "a\u2028b"\r\n'.encode())
    assert isinstance(ev, BadCommand)
    assert events(r, b"d APPEND INBOX (\\Seen) UTF8 (~{3+}\r\nh\xc3\xa9)\r\n") == [
        CommandReceived(c.Append("d", "INBOX", frozenset({"\\Seen"}), None, b"h\xc3\xa9", True))
    ]
    (ev,) = events(r, b"e APPEND INBOX UTF8 (~{1+}\r\nx\r\n")
    assert isinstance(ev, BadCommand) and ev.reason == "expected ')'"


def test_misc_commands() -> None:
    assert parse(b"a ENABLE UTF8=ACCEPT condstore") == c.Enable("a", ("UTF8=ACCEPT", "CONDSTORE"))
    assert parse(b"a ID NIL") == c.Id("a", None)
    assert parse(b'a ID ("name" "mutt" "version" NIL)') == c.Id(
        "a", (("name", "mutt"), ("version", None))
    )
    assert parse(b"a IDLE") == c.Idle("a")
    assert parse(b"a NAMESPACE") == c.Namespace("a")
    assert parse(b"a UNSELECT") == c.Unselect("a")
    assert parse(b"a UID EXPUNGE 3:5") == c.Expunge("a", SequenceSet(((3, 5),)))


def test_sequence_sets() -> None:
    cmd = parse(b"a FETCH 5:3,*,7:*,1 FLAGS")
    assert isinstance(cmd, c.Fetch)
    assert cmd.messages == SequenceSet(((5, 3), (None, None), (7, None), (1, 1)))
    assert str(cmd.messages) == "5:3,*,7:*,1"


def test_fetch_attributes() -> None:
    cmd = parse(
        b"a UID FETCH 1:* (FLAGS BODY.PEEK[1.2.HEADER.FIELDS.NOT (x-a Subject)]<10.20> "
        b"BODY[] RFC822.SIZE BODY[2.MIME] BODY[TEXT] BODY[3] BODYSTRUCTURE)"
    )
    assert isinstance(cmd, c.Fetch) and cmd.uid
    assert cmd.atts == (
        FetchAtt("FLAGS"),
        FetchAtt(
            "BODY[]", Section((1, 2), "HEADER.FIELDS.NOT", ("X-A", "SUBJECT")), True, (10, 20)
        ),
        FetchAtt("BODY[]", Section()),
        FetchAtt("RFC822.SIZE"),
        FetchAtt("BODY[]", Section((2,), "MIME")),
        FetchAtt("BODY[]", Section((), "TEXT")),
        FetchAtt("BODY[]", Section((3,))),
        FetchAtt("BODYSTRUCTURE"),
    )
    assert cmd.atts[1].label() == "BODY[1.2.HEADER.FIELDS.NOT (X-A SUBJECT)]<10>"


@pytest.mark.parametrize(
    ("macro", "names"),
    [
        (b"ALL", ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]),
        (b"fast", ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]),
        (b"FULL", ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]),
        (b"rfc822.header", ["RFC822.HEADER"]),
    ],
)
def test_fetch_macros(macro: bytes, names: list[str]) -> None:
    cmd = parse(b"a FETCH 1 " + macro)
    assert isinstance(cmd, c.Fetch)
    assert [a.name for a in cmd.atts] == names


def test_store() -> None:
    assert parse(b"a STORE 1:2 +FLAGS.SILENT (\\deleted $Junk)") == c.Store(
        "a", SequenceSet(((1, 2),)), FlagMode.ADD, frozenset({"\\Deleted", "$Junk"}), True
    )
    assert parse(b"a UID STORE 4 -FLAGS \\Seen \\Flagged") == c.Store(
        "a",
        SequenceSet(((4, 4),)),
        FlagMode.REMOVE,
        frozenset({"\\Seen", "\\Flagged"}),
        False,
        True,
    )
    assert parse(b"a STORE 1 FLAGS ()") == c.Store(
        "a", SequenceSet(((1, 1),)), FlagMode.SET, frozenset()
    )


def test_copy_and_move() -> None:
    assert parse(b"a COPY 1:3 Trash") == c.Copy("a", SequenceSet(((1, 3),)), "Trash")
    assert parse(b"a MOVE 2 Archive") == c.Copy("a", SequenceSet(((2, 2),)), "Archive", move=True)
    assert parse(b"a UID MOVE 2 inbox") == c.Copy(
        "a", SequenceSet(((2, 2),)), "INBOX", uid=True, move=True
    )


def K(op: str, value: object = None, *children: SearchKey) -> SearchKey:
    return SearchKey(op, value, tuple(children))  # type: ignore[arg-type]


def test_search_program() -> None:
    cmd = parse(
        b'a SEARCH CHARSET utf-8 OR (FROM "b\xc3\xb6b" SINCE 1-Feb-2026) NOT 1:3 '
        b"HEADER X-Spam yes LARGER 100 UID 4:* KEYWORD $Junk UNSEEN TEXT {5+}\r\nw\xc3\xb6rd"
    )
    assert isinstance(cmd, c.Search) and cmd.charset == "UTF-8"
    assert cmd.key == K(
        "AND",
        None,
        K(
            "OR",
            None,
            K("AND", None, K("FROM", "böb"), K("SINCE", dt.date(2026, 2, 1))),
            K("NOT", None, K("SEQ", SequenceSet(((1, 3),)))),
        ),
        K("HEADER", ("X-Spam", "yes")),
        K("LARGER", 100),
        K("UID", SequenceSet(((4, None),))),
        K("KEYWORD", "$Junk"),
        K("UNSEEN"),
        K("TEXT", "wörd"),
    )


def test_search_every_rfc3501_key_parses() -> None:
    keys = (
        b"ALL ANSWERED BCC x BEFORE 1-Jan-2020 BODY x CC x DELETED DRAFT FLAGGED FROM x "
        b"HEADER a b KEYWORD k LARGER 1 NEW NOT ALL OLD ON 1-Jan-2020 OR ALL ALL RECENT "
        b'SEEN SENTBEFORE 1-Jan-2020 SENTON "1-Jan-2020" SENTSINCE 1-Jan-2020 '
        b"SINCE 1-Jan-2020 SMALLER 9 SUBJECT x TEXT x TO x UID 1 UNANSWERED UNDELETED "
        b"UNDRAFT UNFLAGGED UNKEYWORD k UNSEEN 1,2"
    )
    cmd = parse(b"a UID SEARCH " + keys)
    assert isinstance(cmd, c.Search) and len(cmd.key.children) == 36


# ------------------------------------------------------------------ states


def test_state_table_covers_every_command_class() -> None:
    samples = [
        c.Capability("a"),
        c.Noop("a"),
        c.Logout("a"),
        c.Id("a", None),
        c.StartTls("a"),
        c.Authenticate("a", "PLAIN"),
        c.Login("a", "u", "p"),
        c.Select("a", "x"),
        c.Select("a", "x", True),
        c.Create("a", "x"),
        c.Delete("a", "x"),
        c.Rename("a", "x", "y"),
        c.Subscribe("a", "x"),
        c.Subscribe("a", "x", False),
        c.List("a", "", "*"),
        c.List("a", "", "*", True),
        c.Status("a", "x", ("MESSAGES",)),
        c.Append("a", "x", frozenset(), None, b"m"),
        c.Idle("a"),
        c.Namespace("a"),
        c.Enable("a", ()),
        c.Check("a"),
        c.Close("a"),
        c.Unselect("a"),
        c.Expunge("a"),
    ]
    for cmd in samples:
        assert c.command_word(cmd) in c.ALLOWED
    assert c.allowed(c.Login("a", "u", "p"), c.State.NOT_AUTHENTICATED)
    assert not c.allowed(c.Login("a", "u", "p"), c.State.AUTHENTICATED)
    assert not c.allowed(c.Expunge("a"), c.State.AUTHENTICATED)
    assert c.allowed(c.Select("a", "x"), c.State.SELECTED)
    assert not c.allowed(c.Enable("a", ()), c.State.SELECTED)
    assert c.command_word(c.Copy("a", SequenceSet(((1, 1),)), "x", move=True)) == "MOVE"


# ------------------------------------------------------------------ properties

_astring_text = st.text(st.characters(min_codepoint=1, exclude_categories=("Cs",)), max_size=40)


@given(user=_astring_text, password=_astring_text, split=st.integers(1, 64))
def test_login_round_trip_in_any_chunking(user: str, password: str, split: int) -> None:
    """Arguments encoded by our encoder (quoted or literal) parse back, however the
    bytes are cut into reads; synchronising literals yield continuations."""
    wire = b"t LOGIN " + encoder.astring(user) + b" " + encoder.astring(password) + b"\r\n"
    r = reader()
    got = []
    for i in range(0, len(wire), split):
        got += events(r, wire[i : i + split])
    commands = [e for e in got if isinstance(e, CommandReceived)]
    conts = [e for e in got if isinstance(e, ContinuationRequest)]
    assert commands == [CommandReceived(c.Login("t", user, password))]
    assert len(conts) == len(re.findall(rb"\{\d+\}\r\n", wire))


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_garbage_never_raises(data: bytes) -> None:
    r = reader(max_line_length=100, max_literal_size=50)
    r.authenticated()
    for ev in events(r, data):
        assert isinstance(ev, CommandReceived | ContinuationRequest | BadCommand | LiteralTooBig)


@given(
    st.lists(
        st.tuples(st.integers(1, 2**32 - 1) | st.none(), st.integers(1, 2**32 - 1) | st.none()),
        min_size=1,
        max_size=8,
    )
)
def test_sequence_set_round_trip(ranges: list[tuple[int | None, int | None]]) -> None:
    seqset = SequenceSet(tuple(ranges))
    cmd = parse(b"a FETCH " + str(seqset).encode() + b" UID")
    assert isinstance(cmd, c.Fetch) and cmd.messages == seqset


# ------------------------------------------------------------------ AST round trips

_parts = st.lists(st.integers(1, 50), max_size=3).map(tuple)
_field = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789", min_size=1, max_size=12)


@st.composite
def _sections(draw: st.DrawFn) -> Section:
    part = draw(_parts)
    texts = ["", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"] + (
        ["MIME"] if part else []
    )
    text = draw(st.sampled_from(texts))
    fields = tuple(draw(st.lists(_field, min_size=1, max_size=4))) if "FIELDS" in text else ()
    return Section(part, text, fields)


_simple = st.sampled_from(
    [
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
    ]
).map(FetchAtt)
_body = st.builds(
    lambda sec, peek, partial: FetchAtt("BODY[]", sec, peek, partial),
    _sections(),
    st.booleans(),
    st.none() | st.tuples(st.integers(0, 10**6), st.integers(1, 10**6)),
)


def _fetch_wire(att: FetchAtt) -> str:
    if att.name != "BODY[]":
        return att.name
    assert att.section is not None
    out = ("BODY.PEEK" if att.peek else "BODY") + "[" + att.section.spec() + "]"
    return out + (f"<{att.partial[0]}.{att.partial[1]}>" if att.partial else "")


@given(st.lists(_simple | _body, min_size=1, max_size=6))
def test_fetch_attributes_round_trip(atts: list[FetchAtt]) -> None:
    wire = "(" + " ".join(_fetch_wire(a) for a in atts) + ")"
    cmd = parse(b"a FETCH 1:* " + wire.encode())
    assert isinstance(cmd, c.Fetch) and list(cmd.atts) == atts


_text_value = st.text(st.characters(min_codepoint=1, exclude_categories=("Cs",)), max_size=20)
_dates = st.dates(dt.date(1970, 1, 1), dt.date(2100, 12, 31))
_seqsets = st.lists(
    st.tuples(st.integers(1, 999) | st.none(), st.integers(1, 999) | st.none()),
    min_size=1,
    max_size=3,
).map(lambda r: SequenceSet(tuple(r)))
_leaf = st.one_of(
    st.sampled_from(
        [
            "ALL",
            "ANSWERED",
            "DELETED",
            "DRAFT",
            "FLAGGED",
            "NEW",
            "OLD",
            "RECENT",
            "SEEN",
            "UNANSWERED",
            "UNDELETED",
            "UNDRAFT",
            "UNFLAGGED",
            "UNSEEN",
        ]
    ).map(SearchKey),
    st.builds(
        SearchKey,
        st.sampled_from(["BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"]),
        _text_value,
    ),
    st.builds(
        SearchKey,
        st.sampled_from(["BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"]),
        _dates,
    ),
    st.builds(SearchKey, st.sampled_from(["LARGER", "SMALLER"]), st.integers(0, 2**32 - 1)),
    st.builds(
        SearchKey,
        st.sampled_from(["KEYWORD", "UNKEYWORD"]),
        st.from_regex(r"\A[A-Za-z$][A-Za-z0-9_]{0,8}\Z"),
    ),
    st.builds(SearchKey, st.just("UID"), _seqsets),
    st.builds(SearchKey, st.just("SEQ"), _seqsets),
    st.builds(SearchKey, st.just("HEADER"), st.tuples(_field, _text_value)),
)
_keys = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.builds(lambda k: SearchKey("NOT", children=(k,)), inner),
        st.builds(lambda a, b: SearchKey("OR", children=(a, b)), inner, inner),
        st.lists(inner, min_size=1, max_size=3).map(
            lambda ks: SearchKey("AND", children=tuple(ks))
        ),
    ),
    max_leaves=8,
)


def _search_wire(k: SearchKey) -> bytes:
    if k.op == "AND":
        return b"(" + b" ".join(_search_wire(x) for x in k.children) + b")"
    if k.op in ("NOT", "OR"):
        return k.op.encode() + b" " + b" ".join(_search_wire(x) for x in k.children)
    if k.op == "SEQ":
        return str(k.value).encode()
    if k.value is None:
        return k.op.encode()
    if isinstance(k.value, dt.date):
        v = f"{k.value.day}-{k.value.strftime('%b')}-{k.value.year}".encode()
    elif isinstance(k.value, tuple):
        v = encoder.astring(k.value[0]) + b" " + encoder.string(k.value[1])
    elif isinstance(k.value, str) and k.op not in ("KEYWORD", "UNKEYWORD"):
        v = encoder.string(k.value)
    else:
        v = str(k.value).encode()
    return k.op.encode() + b" " + v


@given(st.lists(_keys, min_size=1, max_size=3))
def test_search_program_round_trip(keys: list[SearchKey]) -> None:
    wire = b" ".join(_search_wire(k) for k in keys)
    r = reader()
    got = events(r, b"a SEARCH CHARSET UTF-8 " + wire + b"\r\n")
    while got and isinstance(got[0], ContinuationRequest):
        got.pop(0)
    assert got and isinstance(got[-1], CommandReceived), got
    cmd = got[-1].command
    assert isinstance(cmd, c.Search)
    assert cmd.key == SearchKey("AND", children=tuple(keys))
