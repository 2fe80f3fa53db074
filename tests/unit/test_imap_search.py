"""SEARCH evaluation (RFC 3501 §6.4.4): every key on the session view, header keys,
charset- and transfer-decoded BODY/TEXT, NOT/OR nesting, and the staged evaluation
against a real SQLite store."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from correo.config import Settings
from correo.imap import textsearch
from correo.imap.search import Candidate, SearchError, compile_key, search, sent_date
from correo.imap.spec import SearchKey, SequenceSet
from correo.imap.textsearch import Finder, scan_message, segments
from correo.mail.message import parse, prepare
from correo.store import open_store
from correo.store.base import (
    Body,
    FlagMode,
    IncomingMessage,
    LocalDelivery,
    MessageInfo,
    Store,
    StoredMessage,
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def K(op: str, value: object = None, *children: SearchKey) -> SearchKey:
    return SearchKey(op, value, tuple(children))  # type: ignore[arg-type]


DAY = 86400
T0 = dt.datetime(2026, 7, 7, 23, 30, tzinfo=dt.UTC).timestamp()

INFOS = [
    MessageInfo(uid=3, modseq=10, flags=frozenset({"\\Seen"}), internaldate=T0, size=100),
    MessageInfo(
        uid=5, modseq=11, flags=frozenset({"\\Answered", "$Work"}), internaldate=T0 + DAY, size=2000
    ),
    MessageInfo(
        uid=8,
        modseq=12,
        flags=frozenset({"\\Deleted", "\\Flagged", "\\Draft"}),
        internaldate=T0 - DAY,
        size=500,
    ),
    MessageInfo(uid=9, modseq=20, flags=frozenset(), internaldate=T0 + 2 * DAY, size=50),
]
RECENT = frozenset({8, 9})


def cheap(key: SearchKey) -> list[int]:
    prog = compile_key(key, last_seq=len(INFOS), last_uid=INFOS[-1].uid)
    out = []
    for i, info in enumerate(INFOS):
        r = prog.pred(Candidate(info, i + 1, info.uid in RECENT))
        assert r is not None, "a cheap key must be decided from the view alone"
        if r:
            out.append(info.uid)
    return out


@pytest.mark.parametrize(
    ("key", "uids"),
    [
        (K("ALL"), [3, 5, 8, 9]),
        (K("ANSWERED"), [5]),
        (K("UNANSWERED"), [3, 8, 9]),
        (K("DELETED"), [8]),
        (K("UNDELETED"), [3, 5, 9]),
        (K("DRAFT"), [8]),
        (K("UNDRAFT"), [3, 5, 9]),
        (K("FLAGGED"), [8]),
        (K("UNFLAGGED"), [3, 5, 9]),
        (K("SEEN"), [3]),
        (K("UNSEEN"), [5, 8, 9]),
        (K("RECENT"), [8, 9]),
        (K("OLD"), [3, 5]),
        (K("NEW"), [8, 9]),
        (K("KEYWORD", "$work"), [5]),
        (K("UNKEYWORD", "$WORK"), [3, 8, 9]),
        (K("LARGER", 100), [5, 8]),
        (K("SMALLER", 100), [9]),
        (K("BEFORE", dt.date(2026, 7, 7)), [8]),
        (K("ON", dt.date(2026, 7, 7)), [3]),
        (K("SINCE", dt.date(2026, 7, 8)), [5, 9]),
        (K("UID", SequenceSet(((5, 8),))), [5, 8]),
        (K("UID", SequenceSet(((None, 6),))), [8, 9]),  # 9:6 == 6:9
        (K("UID", SequenceSet(((100, None),))), [9]),  # n:* with n > max still holds max
        (K("SEQ", SequenceSet(((1, 1), (None, None)))), [3, 9]),
        (K("SEQ", SequenceSet(((2, 3),))), [5, 8]),
        (K("MODSEQ", 12), [8, 9]),
        (K("NOT", None, K("SEEN")), [5, 8, 9]),
        (K("OR", None, K("SEEN"), K("DELETED")), [3, 8]),
        (K("AND", None, K("UNSEEN"), K("LARGER", 60)), [5, 8]),
        (K("NOT", None, K("OR", None, K("SEEN"), K("NOT", None, K("RECENT")))), [8, 9]),
        (K("OR", None, K("AND", None, K("RECENT"), K("SMALLER", 100)), K("ANSWERED")), [5, 9]),
    ],
)
def test_cheap_keys(key: SearchKey, uids: list[int]) -> None:
    assert cheap(key) == uids


def test_header_keys_are_undecided_without_metadata() -> None:
    prog = compile_key(K("OR", None, K("SEEN"), K("FROM", "x")), last_seq=4, last_uid=9)
    assert prog.needs_headers and not prog.needs_text
    assert prog.pred(Candidate(INFOS[0], 1, False)) is True  # decided by SEEN alone
    assert prog.pred(Candidate(INFOS[1], 2, False)) is None
    prog = compile_key(K("AND", None, K("SEEN"), K("TEXT", "x")), last_seq=4, last_uid=9)
    assert prog.text_needles == {"x"}
    assert prog.pred(Candidate(INFOS[1], 2, False)) is False  # UNSEEN: no body read


def test_bad_keys_are_refused() -> None:
    with pytest.raises(SearchError):
        compile_key(K("FUZZY", "x"), last_seq=1, last_uid=1)
    with pytest.raises(SearchError):
        compile_key(K("OR", None, K("ALL")), last_seq=1, last_uid=1)
    with pytest.raises(SearchError):
        compile_key(K("LARGER", "big"), last_seq=1, last_uid=1)


def test_sent_date_ignores_time_and_zone() -> None:
    assert sent_date("Tue, 7 Jul 2026 23:30:00 -1200") == dt.date(2026, 7, 7)
    assert sent_date("7 Jul 2026 00:10 +1400") == dt.date(2026, 7, 7)
    assert sent_date("garbage") is None


# --------------------------------------------------------------------------- text search


class BytesReader:
    """The scanner's reader over bytes in memory, streaming in small odd-sized chunks."""

    def __init__(self, data: bytes, chunk: int = 7) -> None:
        self.data = data
        self.chunk = chunk

    async def read(self, start: int, end: int) -> bytes:
        return self.data[start:end]

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        for i in range(start, end, self.chunk):
            yield self.data[i : min(end, i + self.chunk)]


TEXT_MSG = crlf(
    """From: =?iso-8859-1?q?Andr=E9?= <andre@example.test>
Subject: =?utf-8?b?UmVuw6kgc2F5cyDOlM6xIGjDqWxsbw==?=
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Caf=E9 cr=E8me br=FBl=
=E9e ist sehr gut
--b
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: base64

PHA+U3RyYcOfZSB1bmQgR3LDvMOfZTwvcD4=
--b
Content-Type: application/octet-stream
Content-Transfer-Encoding: base64

aGlkZGVuIGF0dGFjaG1lbnQgd29yZA==
--b
Content-Type: message/rfc822

Subject: forwarded topic
Content-Type: text/plain; charset=koi8-r
Content-Transfer-Encoding: 8bit

"""
).replace(b"\r\n--b\r\n", b"\r\n--b\r\n")
TEXT_MSG += "Привет мир".encode("koi8-r") + b"\r\n--b--\r\n"


async def found(
    data: bytes, needles: list[str], *, stream: bool = False
) -> tuple[set[str], set[str]]:
    if stream:
        textsearch.STREAM_THRESHOLD = 5
    try:
        return await scan_message(BytesReader(data), segments(parse(data).body), needles, needles)
    finally:
        textsearch.STREAM_THRESHOLD = 1 << 20


@pytest.mark.parametrize("stream", [False, True])
async def test_body_and_text_are_decoded(stream: bool) -> None:
    needles = [
        "BRÛLÉE",  # QP soft line break inside the word, latin-1, case-folded
        "straße und",  # base64 UTF-8 in an HTML part
        "STRASSE",  # casefold: ß == ss
        "hidden attachment",  # inside an application/octet-stream: not searched
        "forwarded topic",  # encapsulated message header: in the body
        "привет МИР",  # koi8-r 8bit
        "andré",  # encoded-word in the top-level From: TEXT only
        "δα HÉLLO",  # UTF-8 B encoded subject
        "boundary=b",  # top-level Content-Type field: TEXT only
        "text/html",  # a MIME part header: TEXT only
    ]
    body, text = await found(TEXT_MSG, needles, stream=stream)
    assert body == {"BRÛLÉE", "straße und", "STRASSE", "forwarded topic", "привет МИР"}
    assert text == body | {"andré", "δα HÉLLO", "boundary=b", "text/html"}


async def test_single_part_and_empty_needle() -> None:
    msg = crlf("Subject: s\nContent-Transfer-Encoding: base64\n\nSGVsbG8gV29ybGQ=\n")
    body, text = await found(msg, ["world", "", "SGVsbG8"])
    assert body == {"world", ""}
    assert text == {"world", ""}


def test_finder_needles_that_fold_alike() -> None:
    f = Finder(["Straße", "STRASSE", "strasse", "other"])
    f.search("in der strasse")
    assert f.found == {"Straße", "STRASSE", "strasse"}
    assert not f.done


def test_finder_spans_pieces() -> None:
    f = Finder(["needle", "x"])
    f.feed("…ne")
    f.feed("ed")
    assert not f.found
    f.feed("LE!")
    assert f.found == {"needle"}
    f.end_stream()
    f.feed("")
    assert not f.done


# --------------------------------------------------------------------------- from a real store

PREFIX = b"Return-Path: <alice@example.test>\r\nDelivered-To: bob+lists@example.test\r\n"
M1 = crlf(
    """From: Alice Liddell <alice@example.test>
To: Bob <bob@example.test>
Subject: =?utf-8?q?caf=C3=A9?= news
Date: Tue, 7 Jul 2026 23:30:00 -1200
X-Folded: part one
 part two

Hello world, see you at the café.
"""
)
M3 = crlf(
    """From: carol@example.test
To: carol@example.test, Dave <dave@example.test>
Cc: Dave <dave@example.test>
Bcc: eve@example.test
Subject: Meeting
Date: 1 Jan 2025 09:00:00 +0000
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

UXVhcnRlcmx5IHJlcG9ydCBhdHRhY2hlZCDinJM=
"""
)
BIG_LINE = b"filler filler filler filler filler filler filler filler filler filler=\r\n"
M4 = (
    crlf("From: big@example.test\nSubject: big\nContent-Transfer-Encoding: quoted-printable\n\n")
    + BIG_LINE * 20000
    + b"needle at the v=C3=A9ry end\r\n"
)


@pytest.fixture
async def mailbox(tmp_path: Path) -> AsyncIterator[tuple[Store, int]]:
    settings = Settings(path=tmp_path / "correo.toml", data_dir=tmp_path / "data")
    store = await open_store(settings)
    await store.add_domain("example.test")
    account = await store.add_account("bob@example.test", "x")
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    try:
        for data, prefix, flags in [
            (M1, PREFIX, frozenset({"\\Seen"})),
            (TEXT_MSG, b"", frozenset({"\\Flagged", "Work"})),
            (M3, b"", frozenset()),
            (M4, b"", frozenset({"\\Seen"})),
        ]:
            await store.deliver(
                prepare(data), [LocalDelivery(account.id, "INBOX", prefix=prefix, flags=flags)]
            )
        yield store, inbox.id
    finally:
        await store.close()


class CountingStore:
    """The real store, counting the calls SEARCH makes to it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.loaded: list[int] = []
        self.opened: list[int] = []

    async def get_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[StoredMessage]:
        self.loaded.extend(uids)
        return await self.store.get_messages(mailbox_id, uids)

    async def open_body(self, msg: StoredMessage) -> Body:
        self.opened.append(msg.uid)
        return await self.store.open_body(msg)


async def run(
    mailbox: tuple[Store, int], key: SearchKey, recent: frozenset[int] = frozenset()
) -> list[int]:
    store, mailbox_id = mailbox
    infos = await store.message_infos(mailbox_id)
    return await search(store, mailbox_id, infos, key, recent=recent)


@pytest.mark.parametrize(
    ("key", "uids"),
    [
        (K("FROM", "ALICE liddell"), [1]),
        (K("FROM", "andré"), [2]),  # encoded word in From:
        (K("FROM", "example.test"), [1, 2, 3, 4]),
        (K("SUBJECT", "CAFÉ"), [1]),
        (K("SUBJECT", "ren"), [2]),
        (K("TO", "dave@"), [3]),
        (K("CC", "dave"), [3]),
        (K("BCC", "eve"), [3]),
        (K("HEADER", ("Delivered-To", "+LISTS")), [1]),  # prefix lines are header fields
        (K("HEADER", ("x-folded", "one part")), [1]),  # unfolded value
        (K("HEADER", ("Date", "")), [1, 3]),  # empty value: the field exists
        (K("HEADER", ("X-Missing", "")), []),
        (K("SENTON", dt.date(2026, 7, 7)), [1]),  # the written date, not UTC's 8 Jul
        (K("SENTBEFORE", dt.date(2026, 7, 7)), [3]),
        (K("SENTSINCE", dt.date(2025, 1, 2)), [1]),
        (K("BODY", "HELLO WORLD"), [1]),
        (K("BODY", "café"), [1, 2]),
        (K("BODY", "news"), []),  # only in the Subject:
        (K("TEXT", "news"), [1]),
        (K("TEXT", "alice@"), [1]),
        (K("BODY", "report attached ✓"), [3]),  # base64 UTF-8
        (K("BODY", "brûlée"), [2]),  # quoted-printable latin-1 across a soft break
        (K("BODY", "привет"), [2]),  # koi8-r
        (K("BODY", "attachment word"), []),  # application/octet-stream is not text
        (K("BODY", "needle at the véry end"), [4]),  # 1.4 MB part, decoded in chunks
        (K("TEXT", "filler="), []),
        (K("NOT", None, K("BODY", "café")), [3, 4]),
        (K("OR", None, K("FROM", "carol"), K("BODY", "brûlée")), [2, 3]),
        (K("AND", None, K("SEEN"), K("TEXT", "filler")), [4]),
        (
            K(
                "AND",
                None,
                K("UNSEEN"),
                K("NOT", None, K("OR", None, K("FLAGGED"), K("TO", "bob"))),
            ),
            [3],
        ),
        (K("AND", None, K("UID", SequenceSet(((2, None),))), K("TEXT", "example")), [2, 3, 4]),
        (K("AND", None, K("SEQ", SequenceSet(((None, None),))), K("SUBJECT", "big")), [4]),
        (K("OR", None, K("NEW"), K("KEYWORD", "work")), [2, 3]),
    ],
)
async def test_search_keys(mailbox: tuple[Store, int], key: SearchKey, uids: list[int]) -> None:
    assert await run(mailbox, key, recent=frozenset({3})) == uids


async def test_cheap_keys_load_nothing_and_bodies_only_for_candidates(
    mailbox: tuple[Store, int],
) -> None:
    store, mailbox_id = mailbox
    infos = await store.message_infos(mailbox_id)
    counting = CountingStore(store)
    assert await search(counting, mailbox_id, infos, K("UNSEEN")) == [2, 3]  # type: ignore[arg-type]
    assert counting.loaded == [] and counting.opened == []
    key = K("AND", None, K("UNSEEN"), K("OR", None, K("FROM", "carol"), K("BODY", "brûlée")))
    assert await search(counting, mailbox_id, infos, key) == [2, 3]  # type: ignore[arg-type]
    assert counting.loaded == [2, 3]  # unseen only
    assert counting.opened == [2]  # message 3 was decided by its From:


async def test_expunged_messages_in_the_view_do_not_match(mailbox: tuple[Store, int]) -> None:
    store, mailbox_id = mailbox
    infos = await store.message_infos(mailbox_id)
    await store.set_flags(mailbox_id, [1], frozenset({"\\Deleted"}), FlagMode.ADD)
    await store.expunge(mailbox_id)
    assert await search(store, mailbox_id, infos, K("TEXT", "example")) == [2, 3, 4]
    assert await search(store, mailbox_id, infos, K("ALL")) == [1, 2, 3, 4]  # the view's answer
    assert await search(store, mailbox_id, [], K("TEXT", "x")) == []


async def test_unusable_metadata_is_rebuilt_from_the_body(mailbox: tuple[Store, int]) -> None:
    store, mailbox_id = mailbox
    data = b"X-Copy: unparsed\r\n" + M3  # a blob of its own (metadata is per blob)
    _, uid = await store.append(mailbox_id, IncomingMessage(data, b'{"size": 3}'))
    assert uid == 5
    assert await run(mailbox, K("CC", "dave")) == [3, 5]
    assert await run(mailbox, K("BODY", "quarterly REPORT")) == [3, 5]
