"""FETCH rendering (RFC 3501 §6.4.5, §7.4.2): section addressing, header subsetting,
partials, prefix lines, and every data item from a real SQLite store."""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from correo.config import Settings, StorageSettings
from correo.imap.fetch import FetchError, fetch_items, flag_atoms, format_internaldate
from correo.imap.mimetext import (
    TextDecoder,
    TransferDecoder,
    decode_header_value,
    header_fields,
    select_fields,
    transfer_decode,
)
from correo.imap.spec import Atom, BodyLiteral, FetchAtt, Section
from correo.mail.message import bodystructure, envelope_structure, parse, prepare
from correo.store import open_store
from correo.store.base import IncomingMessage, LocalDelivery, Store, StoredMessage


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


# The RFC 3501 §6.4.5 example shape: mixed(text, octet-stream, rfc822(mixed(text, octet)),
# mixed(gif, rfc822(text))), with a preamble, an epilogue and a folded header.
COMPLEX = crlf(
    """From: Alice <alice@example.test>
To: bob@example.test
Subject: =?utf-8?q?caf=C3=A9?= news
X-Folded: first
 second
Date: Tue, 7 Jul 2026 10:00:00 +0200
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

preamble
--outer
Content-Type: text/plain; charset=utf-8

part one
--outer
Content-Type: application/octet-stream
Content-Transfer-Encoding: base64

AAEC
--outer
Content-Type: message/rfc822

From: Carol <carol@example.test>
Subject: inner
Content-Type: multipart/mixed; boundary=inner

--inner
Content-Type: text/plain

inner one
--inner
Content-Type: application/octet-stream

xx
--inner--
--outer
Content-Type: multipart/mixed; boundary=four

--four
Content-Type: image/gif
Content-Transfer-Encoding: base64

R0lG
--four
Content-Type: message/rfc822

Subject: deep

deep body
--four--
--outer--
epilogue
"""
)

INNER_MESSAGE = crlf(
    """From: Carol <carol@example.test>
Subject: inner
Content-Type: multipart/mixed; boundary=inner

--inner
Content-Type: text/plain

inner one
--inner
Content-Type: application/octet-stream

xx
--inner--"""
)


# --------------------------------------------------------------------------- HEADER.FIELDS

FOLDED = crlf(
    """Received: from a
\tby b; Tue, 7 Jul 2026 10:00:00 +0200
Subject: a long
 folded subject
From: x@example.test
subject: second
X-Empty:
To: y@example.test

body
"""
)


def test_header_fields_keep_original_lines_and_blank_line() -> None:
    head = FOLDED[: FOLDED.index(b"\r\n\r\n") + 4]
    assert select_fields(head, ["SUBJECT", "TO"], exclude=False) == (
        b"Subject: a long\r\n folded subject\r\nsubject: second\r\nTo: y@example.test\r\n\r\n"
    )
    assert select_fields(head, ["Subject", "Received", "X-EMPTY"], exclude=True) == (
        b"From: x@example.test\r\nTo: y@example.test\r\n\r\n"
    )
    assert select_fields(head, ["x-empty"], exclude=False) == b"X-Empty:\r\n\r\n"
    assert select_fields(head, ["Nope"], exclude=False) == b"\r\n"


def test_header_fields_match_names_exactly() -> None:
    head = crlf("Subject-Extra: 1\nSubject : 2\nSubject: 3\n\n")
    assert select_fields(head, ["SUBJECT"], exclude=False) == b"Subject : 2\r\nSubject: 3\r\n\r\n"


def test_header_field_values_are_unfolded() -> None:
    fields = header_fields(FOLDED)
    assert [f.name for f in fields] == [
        b"Received",
        b"Subject",
        b"From",
        b"subject",
        b"X-Empty",
        b"To",
    ]
    assert fields[1].value == b"a long folded subject"
    assert fields[0].value == b"from a\tby b; Tue, 7 Jul 2026 10:00:00 +0200"


_NAMES = st.sampled_from(["Subject", "SUBJECT", "From", "X-A", "x-a", "To", "Received"])
_VALUES = st.lists(st.text("abc :;\t", min_size=0, max_size=8), min_size=1, max_size=3)


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=8), st.sets(_NAMES), st.booleans())
def test_header_fields_partition_the_header(
    fields: list[tuple[str, list[str]]], names: set[str], blank: bool
) -> None:
    """FIELDS and FIELDS.NOT of the same names split the header's fields between them,
    each keeping header order and the original bytes."""
    raw = [f"{n}: {vals[0]}\r\n" + "".join(f" {v}\r\n" for v in vals[1:]) for n, vals in fields]
    header = "".join(raw).encode() + (b"\r\n" if blank else b"")
    picked = select_fields(header, names, exclude=False)
    rest = select_fields(header, names, exclude=True)
    tail = b"\r\n" if blank else b""
    assert picked.endswith(tail) and rest.endswith(tail)
    lower = {n.lower() for n in names}
    assert (
        picked
        == "".join(r for r, (n, _) in zip(raw, fields, strict=True) if n.lower() in lower).encode()
        + tail
    )
    assert (
        rest
        == "".join(
            r for r, (n, _) in zip(raw, fields, strict=True) if n.lower() not in lower
        ).encode()
        + tail
    )


# --------------------------------------------------------------------------- decoding


def test_encoded_words() -> None:
    assert decode_header_value(b"=?utf-8?q?caf=C3=A9?= news") == "café news"
    assert decode_header_value("=?ISO-8859-1?B?Y2Fm6Q==?= =?utf-8?q?_ol=C3=A9?=") == "café olé"
    assert decode_header_value(b"a\r\n b") == "a b"
    assert decode_header_value("caf\u00e9".encode()) == "café"
    assert decode_header_value(b"caf\xe9") == "café"  # raw Latin-1 octets


def test_transfer_decoding() -> None:
    assert transfer_decode(b"aGVs\r\nbG8=\r\n", "base64") == b"hello"
    assert (
        transfer_decode(b"caf=C3=A9 =\r\nsoft\r\n", "Quoted-Printable") == b"caf\xc3\xa9 soft\r\n"
    )
    assert transfer_decode(b"raw=41", "8bit") == b"raw=41"
    assert transfer_decode(b"aGVsbG8", "base64") == b"hello"  # missing padding
    assert transfer_decode(b"aGVs*bG8=\r\n", "base64") == b"hello"  # junk ignored


@given(st.binary(max_size=600), st.integers(1, 97))
def test_incremental_base64_matches_whole(data: bytes, step: int) -> None:
    encoded = base64.encodebytes(data)
    dec = TransferDecoder("base64")
    out = b"".join(dec.feed(encoded[i : i + step]) for i in range(0, len(encoded), step))
    assert out + dec.feed(b"", final=True) == data


@given(st.binary(max_size=600), st.integers(1, 97))
def test_incremental_qp_matches_whole(data: bytes, step: int) -> None:
    encoded = binascii.b2a_qp(data).replace(b"\n", b"\r\n")
    dec = TransferDecoder("quoted-printable")
    out = b"".join(dec.feed(encoded[i : i + step]) for i in range(0, len(encoded), step))
    assert out + dec.feed(b"", final=True) == binascii.a2b_qp(encoded)


@given(st.text(max_size=300), st.integers(1, 50))
def test_chunked_text_decoding(text: str, step: int) -> None:
    raw = base64.encodebytes(text.encode("utf-16"))
    pieces = [raw[i : i + step] for i in range(0, len(raw), step)]
    dec = TextDecoder("base64", "utf-16")
    assert "".join(dec.feed(p) for p in pieces) + dec.feed(b"", final=True) == text


# --------------------------------------------------------------------------- simple items


def test_internaldate_format() -> None:
    assert format_internaldate(837571465) == "17-Jul-1996 02:44:25 +0000"
    assert format_internaldate(1783476000.9) == " 8-Jul-2026 02:00:00 +0000"


def test_flags_order() -> None:
    flags = frozenset({"$Junk", "\\Seen", "\\Answered", "custom"})
    assert flag_atoms(flags) == [Atom("\\Answered"), Atom("\\Seen"), Atom("$Junk"), Atom("custom")]
    assert flag_atoms(frozenset(), recent=True) == [Atom("\\Recent")]


# --------------------------------------------------------------------------- from a real store

PREFIX = b"Return-Path: <alice@example.test>\r\nDelivered-To: bob@example.test\r\n"
WHOLE = PREFIX + COMPLEX
HEAD = WHOLE[: WHOLE.index(b"\r\n\r\n") + 4]


@pytest.fixture(params=[8192, 0], ids=["inline", "blobfile"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    settings = Settings(
        path=tmp_path / "correo.toml",
        data_dir=tmp_path / "data",
        storage=StorageSettings(inline_threshold=request.param),
    )
    s = await open_store(settings)
    await s.add_domain("example.test")
    await s.add_account("bob@example.test", "x")
    try:
        yield s
    finally:
        await s.close()


async def put(
    store: Store, data: bytes, prefix: bytes = b"", flags: frozenset[str] = frozenset()
) -> StoredMessage:
    account = await store.get_account("bob@example.test")
    assert account is not None
    result = await store.deliver(
        prepare(data), [LocalDelivery(account.id, "INBOX", prefix=prefix, flags=flags)]
    )
    _, mailbox_id, uid = result.delivered[0]
    [msg] = await store.get_messages(mailbox_id, [uid])
    return msg


async def body_of(
    store: Store, msg: StoredMessage, section: Section, partial: tuple[int, int] | None = None
) -> bytes:
    att = FetchAtt("BODY[]", section, peek=True, partial=partial)
    [(label, value)] = await fetch_items(store, msg, 1, [att], utf8=False)
    assert label == att.label()
    if isinstance(value, BodyLiteral):
        return await value.body.read(value.offset, value.length)
    assert isinstance(value, bytes)
    return value


@pytest.mark.parametrize(
    ("part", "kind", "expected"),
    [
        ((), "", WHOLE),
        ((), "HEADER", HEAD),
        ((), "TEXT", WHOLE[len(HEAD) :]),
        ((1,), "", b"part one"),
        ((1,), "MIME", b"Content-Type: text/plain; charset=utf-8\r\n\r\n"),
        ((2,), "", b"AAEC"),
        ((3,), "", INNER_MESSAGE),
        ((3,), "HEADER", INNER_MESSAGE[: INNER_MESSAGE.index(b"\r\n\r\n") + 4]),
        ((3,), "TEXT", INNER_MESSAGE[INNER_MESSAGE.index(b"\r\n\r\n") + 4 :]),
        ((3, 1), "", b"inner one"),
        ((3, 2), "", b"xx"),
        ((3, 2), "MIME", b"Content-Type: application/octet-stream\r\n\r\n"),
        ((4, 1), "", b"R0lG"),
        ((4, 1), "MIME", b"Content-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n\r\n"),
        ((4, 2), "", b"Subject: deep\r\n\r\ndeep body"),
        ((4, 2), "HEADER", b"Subject: deep\r\n\r\n"),
        ((4, 2), "TEXT", b"deep body"),
        ((4, 2, 1), "", b"deep body"),
        # Nonexistent sections are empty strings.
        ((5,), "", b""),
        ((1, 1), "", b""),
        ((1,), "HEADER", b""),
        ((2,), "TEXT", b""),
        ((4, 3), "", b""),
        ((3, 3), "", b""),
    ],
)
async def test_sections_of_the_rfc3501_example(
    store: Store, part: tuple[int, ...], kind: str, expected: bytes
) -> None:
    msg = await put(store, COMPLEX, PREFIX)
    assert await body_of(store, msg, Section(part, kind)) == expected


async def test_header_fields_sections(store: Store) -> None:
    msg = await put(store, COMPLEX, PREFIX)
    fields = Section((), "HEADER.FIELDS", ("DELIVERED-TO", "X-FOLDED", "SUBJECT"))
    assert await body_of(store, msg, fields) == (
        b"Delivered-To: bob@example.test\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?= news\r\n"
        b"X-Folded: first\r\n second\r\n\r\n"
    )
    assert (
        await body_of(store, msg, fields, (10, 20))
        == (b"Delivered-To: bob@example.test\r\nSubject: =?utf-8?q?caf=C3=A9?= news\r\n"[10:30])
    )
    not_fields = Section(
        (),
        "HEADER.FIELDS.NOT",
        ("RETURN-PATH", "From", "to", "date", "X-FOLDED", "SUBJECT", "CONTENT-TYPE"),
    )
    assert await body_of(store, msg, not_fields) == (
        b"Delivered-To: bob@example.test\r\nMIME-Version: 1.0\r\n\r\n"
    )
    inner = Section((3,), "HEADER.FIELDS", ("SUBJECT",))
    assert await body_of(store, msg, inner) == b"Subject: inner\r\n\r\n"
    assert await body_of(store, msg, Section((1,), "HEADER.FIELDS", ("SUBJECT",))) == b""


async def test_partials(store: Store) -> None:
    msg = await put(store, COMPLEX, PREFIX)
    assert await body_of(store, msg, Section(), (0, 10)) == WHOLE[:10]
    assert await body_of(store, msg, Section(), (5, 10**9)) == WHOLE[5:]
    assert await body_of(store, msg, Section(), (len(WHOLE), 10)) == b""
    assert await body_of(store, msg, Section((3, 1)), (6, 100)) == b"one"
    assert await body_of(store, msg, Section((3, 1)), (9, 100)) == b""
    assert await body_of(store, msg, Section((), "TEXT"), (0, 0)) == b""
    att = FetchAtt("BODY[]", Section((1,)), partial=(100, 5))
    assert await fetch_items(store, msg, 1, [att], utf8=False) == [("BODY[1]<100>", b"")]


async def test_large_sections_are_streamed(store: Store) -> None:
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
    text = line * 2000  # ~150 KB
    data = crlf("Subject: big\nContent-Type: multipart/mixed; boundary=z\n\n--z\n\nsmall\n--z\n\n")
    data += text + b"\r\n--z--\r\n"
    msg = await put(store, data, PREFIX)
    [(label, value)] = await fetch_items(
        store, msg, 1, [FetchAtt("BODY[]", Section((2,)))], utf8=False
    )
    assert label == "BODY[2]"
    assert isinstance(value, BodyLiteral) and value.length == len(text)
    assert await value.body.read(value.offset, value.length) == text
    chunks = [c async for c in value.body.chunks(value.offset, value.length, 4096)]
    assert b"".join(chunks) == text
    # a small partial of the large part is inline bytes
    [(_, part)] = await fetch_items(
        store, msg, 1, [FetchAtt("BODY[]", Section((2,)), partial=(len(line), 10))], utf8=False
    )
    assert part == text[len(line) : len(line) + 10]
    [(label, whole)] = await fetch_items(store, msg, 1, [FetchAtt("RFC822")], utf8=False)
    assert label == "RFC822" and isinstance(whole, BodyLiteral)
    assert await whole.body.read(whole.offset, whole.length) == PREFIX + data


async def test_every_simple_item(store: Store) -> None:
    msg = await put(store, COMPLEX, PREFIX, flags=frozenset({"\\Seen", "$Label1"}))
    atts = [
        FetchAtt("UID"),
        FetchAtt("FLAGS"),
        FetchAtt("RFC822.SIZE"),
        FetchAtt("INTERNALDATE"),
        FetchAtt("MODSEQ"),
        FetchAtt("RFC822.HEADER"),
        FetchAtt("RFC822.TEXT"),
        FetchAtt("ENVELOPE"),
        FetchAtt("BODY"),
        FetchAtt("BODYSTRUCTURE"),
    ]
    items = dict(await fetch_items(store, msg, 1, atts, utf8=False, recent=True))
    assert list(items) == [a.name for a in atts]
    assert items["UID"] == msg.uid
    assert items["FLAGS"] == [Atom("\\Seen"), Atom("\\Recent"), Atom("$Label1")]
    assert items["RFC822.SIZE"] == len(WHOLE) == msg.size
    assert items["INTERNALDATE"] == format_internaldate(msg.internaldate)
    assert items["MODSEQ"] == [msg.modseq]
    assert items["RFC822.HEADER"] == HEAD
    assert items["RFC822.TEXT"] == WHOLE[len(HEAD) :]
    env = items["ENVELOPE"]
    assert isinstance(env, list) and len(env) == 10
    assert env[0] == "Tue, 7 Jul 2026 10:00:00 +0200"
    assert env[1] == "=?utf-8?q?caf=C3=A9?= news"
    assert env[2] == [["Alice", None, "alice", "example.test"]]
    structure = items["BODYSTRUCTURE"]
    assert isinstance(structure, list) and structure[4] == "MIXED"
    assert structure[0][:7] == ["TEXT", "PLAIN", ["CHARSET", "utf-8"], None, None, "7BIT", 8]
    body = items["BODY"]
    assert isinstance(body, list) and body[4] == "MIXED" and len(body) == 5


async def test_single_part_message_and_prefix(store: Store) -> None:
    msg = await put(store, crlf("Subject: hi\n\nhello\nworld\n"), PREFIX)
    assert await body_of(store, msg, Section((1,))) == b"hello\r\nworld\r\n"
    assert await body_of(store, msg, Section((), "HEADER")) == PREFIX + b"Subject: hi\r\n\r\n"
    assert await body_of(store, msg, Section((2,))) == b""
    assert await body_of(store, msg, Section((1,), "MIME")) == PREFIX + b"Subject: hi\r\n\r\n"
    structure = dict(await fetch_items(store, msg, 1, [FetchAtt("BODY")], utf8=False))["BODY"]
    assert structure == ["TEXT", "PLAIN", ["CHARSET", "us-ascii"], None, None, "7BIT", 14, 2]


ENCODED = crlf(
    """Subject: =?iso-8859-1?q?r=E9sum=E9?=
Content-Type: multipart/alternative; boundary="=_b"

--=_b
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Caf=E9 cr=E8me br=FBl=
=E9e
--=_b
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: base64

PHA+U3RyYcOfZTwvcD4=
--=_b--
"""
)


async def test_encoded_parts_are_sent_as_stored(store: Store) -> None:
    """BODY[n] is the part as stored, transfer encoding and all (RFC 3501 §6.4.5)."""
    msg = await put(store, ENCODED, PREFIX)
    assert await body_of(store, msg, Section((1,))) == b"Caf=E9 cr=E8me br=FBl=\r\n=E9e"
    assert await body_of(store, msg, Section((2,))) == b"PHA+U3RyYcOfZTwvcD4="
    assert await body_of(store, msg, Section((2,), "MIME")) == (
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    items = dict(await fetch_items(store, msg, 1, [FetchAtt("BODYSTRUCTURE")], utf8=False))
    structure = items["BODYSTRUCTURE"]
    assert isinstance(structure, list)
    assert structure[0][:7] == [
        "TEXT",
        "PLAIN",
        ["CHARSET", "iso-8859-1"],
        None,
        None,
        "QUOTED-PRINTABLE",
        28,
    ]
    assert structure[1][:7] == ["TEXT", "HTML", ["CHARSET", "utf-8"], None, None, "BASE64", 20]
    assert structure[2:4] == ["ALTERNATIVE", ["BOUNDARY", "=_b"]]


async def test_header_only_message(store: Store) -> None:
    data = crlf("Subject: hi\nFrom: a@b\n")
    msg = await put(store, data)
    assert await body_of(store, msg, Section((), "HEADER")) == data
    assert await body_of(store, msg, Section((), "TEXT")) == b""
    fields = Section((), "HEADER.FIELDS", ("SUBJECT",))
    assert await body_of(store, msg, fields) == b"Subject: hi\r\n"


async def test_unknown_item_is_refused(store: Store) -> None:
    msg = await put(store, crlf("Subject: hi\n\nx\n"))
    with pytest.raises(FetchError):
        await fetch_items(store, msg, 1, [FetchAtt("X-GM-LABELS")], utf8=False)


@pytest.mark.parametrize("meta", [b'{"size": 1}', b"not json", b"[]"])
async def test_unusable_metadata_is_rebuilt_from_the_body(
    store: Store, meta: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    account = await store.get_account("bob@example.test")
    assert account is not None
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    data = b"X-Copy: unparsed\r\n" + COMPLEX  # a blob of its own (metadata is per blob)
    _, uid = await store.append(inbox.id, IncomingMessage(data, meta))
    [bad] = await store.get_messages(inbox.id, [uid])
    assert bad.meta == meta
    atts = [FetchAtt("ENVELOPE"), FetchAtt("BODYSTRUCTURE"), FetchAtt("BODY[]", Section((3, 1)))]
    parsed = parse(data)
    assert await fetch_items(store, bad, 1, atts, utf8=False) == [
        ("ENVELOPE", envelope_structure(parsed, False)),
        ("BODYSTRUCTURE", bodystructure(parsed, True, False)),
        ("BODY[3.1]", b"inner one"),
    ]
    assert "unusable metadata" in caplog.text
