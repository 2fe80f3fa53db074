"""The SMTP hot path's shortcuts give the answers of the plain code they stand in for.

Each fast path (one regex for a whole domain, a jumping long-line scan, a common-form
date parser, cached reply bytes, reused directory rows...) is checked here against a
straightforward reference implementation, over generated inputs, so a later edit that
makes a shortcut disagree with the RFC behaviour fails a test.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from correo import config
from correo.auth.service import Authenticator
from correo.context import Context
from correo.mail import address, headers, message
from correo.mail.address import AddressError
from correo.smtp import data, delivery, replies, session
from correo.smtp.commands import Hello, Rcpt
from correo.smtp.policy import Client, Counters, Policy, Recipient
from correo.store.base import Account
from correo.store.sqlite import SqliteStore

# --------------------------------------------------------------------------- long lines


def longest_line(text: bytes) -> int:
    """The reference: split at CRLF and measure every piece (RFC 5321 §4.5.3.1.6)."""
    return max(map(len, text.split(b"\r\n")))


_LINE = st.one_of(
    st.binary(max_size=8).map(lambda b: b.replace(b"\n", b"")),
    st.integers(min_value=990, max_value=1010).map(lambda n: b"x" * n),
    st.integers(min_value=995, max_value=1002).map(lambda n: b"y" * (n - 1) + b"\r"),
)


@given(st.lists(_LINE, max_size=12), st.booleans())
@example([b"x" * 998], True)
@example([b"x" * 999], True)
@example([b"x" * 998], False)
@example([b"x" * 999], False)
@example([b"a", b"x" * 997 + b"\r"], True)
def test_has_long_line_matches_splitting(lines: list[bytes], terminated: bool) -> None:
    text = b"\r\n".join(lines) + (b"\r\n" if terminated and lines else b"")
    assert data._has_long_line(text) == (longest_line(text) > data.MAX_TEXT_LINE)


def reference_lines(seg: bytes) -> tuple[bytes, bool, bool]:
    """DataReader._lines without its fast path: unstuff, CRLF, flag NUL and long lines."""
    out, long_line, nul = [], False, False
    for raw in seg.split(b"\n")[:-1]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if line[:1] == b"." and len(line) > 1:
            line = line[1:]
        long_line |= len(line) > data.MAX_TEXT_LINE
        nul |= b"\0" in line
        out.append(line + b"\r\n")
    return b"".join(out), long_line, nul


_TEXT_LINE = st.one_of(
    st.sampled_from([b"", b".", b"..x", b".x", b"a.b", b"\0", b"x\r", b"\r"]),
    st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"")),
    st.integers(min_value=997, max_value=1001).map(lambda n: b"z" * n),
)


@given(st.lists(st.tuples(_TEXT_LINE, st.sampled_from([b"\r\n", b"\n"])), min_size=1))
def test_data_lines_fast_path_agrees_with_the_general_one(
    lines: list[tuple[bytes, bytes]],
) -> None:
    seg = b"".join(text + end for text, end in lines)
    if b"\r\n.\r\n" in b"\r\n" + seg:
        return  # the reader never hands _lines an end-of-data marker
    reader = data.DataReader(0)
    reader._lines(seg)
    text, long_line, nul = reference_lines(seg)
    assert (b"".join(reader.parts), reader.long_line, reader.nul) == (text, long_line, nul)


@given(st.binary(max_size=40).map(lambda b: b * 60))
def test_finish_chunked_long_lines_as_before(raw: bytes) -> None:
    result = data.finish_chunked(raw)
    if b"\0" in raw:
        assert result == replies.R554_NUL_IN_MESSAGE
        return
    normal = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
    expected = replies.R554_LONG_LINE if longest_line(normal) > 998 else normal
    assert result == expected


# --------------------------------------------------------------------------- dates

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@st.composite
def common_dates(draw: st.DrawFn) -> str:
    day = draw(st.sampled_from(["", *(d + ", " for d in _DAYS)]))
    dd = draw(st.integers(0, 99))
    month = draw(st.sampled_from(headers._MONTHS))
    year = draw(st.sampled_from(["0000", "0069", "0068", "1970", "2026", "9998"]))
    hh, mm, ss = (draw(st.integers(0, 99)) for _ in range(3))
    zone = draw(st.sampled_from(["+0000", "-0000", "+0530", "-0800", "+0099", "-1259"]))
    tail = draw(st.sampled_from(["", " (UTC)", " (CET) extra", " \udcff junk"]))
    width = draw(st.sampled_from(["{:d}", "{:02d}"]))
    return f"{day}{width.format(dd)} {month} {year} {hh:02d}:{mm:02d}:{ss:02d} {zone}{tail}"


def reference_date(value: str) -> int | None:
    """parse_date as it was: email.utils for every input."""
    try:
        parsed = email.utils.parsedate_tz(headers.readable(value))
        return None if parsed is None else int(email.utils.mktime_tz(parsed))
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


@given(common_dates())
@example("Fri, 27 Nov 2026 09:27:46 +0000 (UTC)")
def test_common_date_form_parses_as_email_utils_does(value: str) -> None:
    assert headers._parse_common_date(value) is not None
    assert headers.parse_date(value) == reference_date(value)


@given(st.text(max_size=40))
@example("Fri, 27 Nov 2026 09:27:46+0000")
@example("fri, 27 nov 2026 09:27:46 +0000")
@example("27 Nov 26 09:27 GMT")
def test_other_dates_still_go_to_email_utils(value: str) -> None:
    assert headers.parse_date(value) == (reference_date(value) if value else None)


# --------------------------------------------------------------------------- paths


def reference_domain(domain: str, smtputf8: bool) -> str | None:
    """normalize_domain's label-by-label check, for plain (non-literal) domains."""
    if not domain.isascii() and not smtputf8:
        return None
    rx = address._LABEL_UTF8_RE if smtputf8 else address._LABEL_RE
    for label in domain.split("."):
        if not label or not rx.match(label) or len(label.encode("utf-8")) > 63:
            return None
    return domain.lower()


_DOMAIN = st.lists(
    st.one_of(
        st.text(alphabet="aZ09-._\u00e9", max_size=6),
        st.integers(61, 65).map(lambda n: "a" * n),
        st.sampled_from(["-a", "a-", "a--b", "", "A1"]),
    ),
    min_size=1,
    max_size=5,
).map(".".join)


@given(_DOMAIN, st.booleans())
@example("a" * 63 + ".test", False)
@example("a" * 64 + ".test", False)
@example("example.test.", False)
def test_domain_fast_path_matches_label_check(domain: str, smtputf8: bool) -> None:
    if not domain or domain.startswith("[") or len(domain.encode()) > address.MAX_DOMAIN:
        return
    try:
        got: str | None = address.normalize_domain(domain, smtputf8=smtputf8)
    except AddressError:
        got = None
    assert got == reference_domain(domain, smtputf8)


def reference_path_end(text: str) -> int | None:
    i, n, quoted = 1, len(text), False
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            return i
        i += 1
    return None


@given(st.text(alphabet='<>"\\a@ ', max_size=14).map(lambda s: "<" + s))
def test_path_end_fast_path_matches_the_scan(text: str) -> None:
    try:
        got: int | None = address._path_end(text)
    except AddressError:
        got = None
    assert got == reference_path_end(text)


# --------------------------------------------------------------------------- replies


def test_reply_bytes_are_cached_but_not_part_of_the_value() -> None:
    r = replies.reply(250, "2.1.5", "first", "second")
    plain = b"250-first\r\n250 second\r\n"
    full = b"250-2.1.5 first\r\n250 2.1.5 second\r\n"
    assert r.render(False) == plain
    assert r.render() == full
    assert r.render() is r.render()  # made once
    assert r.render(False) == plain
    fresh = replies.Reply(250, "2.1.5", ("first", "second"))
    assert fresh == r and hash(fresh) == hash(r)
    assert repr(fresh) == repr(r) == "Reply(code=250, enhanced='2.1.5', lines=('first', 'second'))"
    assert replies.Reply(354, "", ("go",)).render() == b"354 go\r\n"
    assert replies.Reply(250, "2.0.0", ()).render() == b""


def test_received_date_is_formatdate_of_the_second() -> None:
    now = time.time()
    assert delivery._received_date(now) == email.utils.formatdate(int(now), localtime=False)
    later = now + 3601.5
    assert delivery._received_date(later) == email.utils.formatdate(int(later), localtime=False)


def test_prepare_of_crlf_text_is_the_same_with_the_shortcut() -> None:
    text = (
        b"Received: x\r\n\tby y\r\nSubject: t\r\nDate: Fri, 27 Nov 2026 09:27:46 +0000\r\n\r\nb\r\n"
    )
    assert message.prepare(text, crlf=True) == message.prepare(text)
    bare = b"Subject: t\n\nbody\n"
    assert message.prepare(bare).data == b"Subject: t\r\n\r\nbody\r\n"


def test_meta_json_with_any_mapping_of_headers() -> None:
    meta = message.parse(b"Subject: a\r\nSubject: b\r\nTo: c@d.test\r\n\r\nx\r\n")
    proxied = message.MessageMeta(
        size=meta.size,
        header_end=meta.header_end,
        envelope=meta.envelope,
        body=meta.body,
        headers=types.MappingProxyType(dict(meta.headers)),
        date=meta.date,
    )
    assert proxied.to_json() == meta.to_json()
    assert json.loads(meta.to_json())["hdrs"]["subject"] == ["a", "b"]


# --------------------------------------------------------------------------- session


def fake_session(service: str, tls: bool, tls_available: bool) -> session.SmtpSession:
    settings = config.loads('hostname = "mx.example.test"\n')
    unused_store: Any = types.SimpleNamespace()  # _hello and client never reach the store
    ctx = Context(settings, store=unused_store, auth=Authenticator(settings), tls=None)
    conn: Any = types.SimpleNamespace(
        service=types.SimpleNamespace(name=service),
        tls=tls,
        tls_available=tls_available,
        peer_ip="192.0.2.1",
    )
    return session.SmtpSession(conn, ctx)


@pytest.mark.parametrize(
    ("service", "tls", "available", "starttls", "auth"),
    [
        ("smtp", False, True, True, False),
        ("smtp", False, False, False, False),
        ("smtp", True, True, False, False),
        ("submission", False, True, True, False),
        ("submission", True, True, False, True),
        ("submissions", True, True, False, True),
    ],
)
def test_cached_ehlo_reply_follows_the_connection(
    service: str, tls: bool, available: bool, starttls: bool, auth: bool
) -> None:
    for _ in range(2):  # the second answer comes from the cache
        reply = fake_session(service, tls, available)._hello(Hello("c.test", extended=True))
        assert ("STARTTLS" in reply.lines) is starttls
        assert ("AUTH PLAIN LOGIN" in reply.lines) is auth
        assert reply.lines[0] == "mx.example.test" and "SIZE 26214400" in reply.lines
    helo = fake_session(service, tls, available)._hello(Hello("c.test", extended=False))
    assert helo == replies.Reply(250, "", ("mx.example.test",))


def test_client_is_remade_when_the_account_changes() -> None:
    s = fake_session("submission", True, True)
    first = s.client
    assert first is s.client and first.account is None
    s.account = Account(1, "a@example.test", "x", 0, 0, False, 0.0)
    assert s.client.account is s.account and s.client == Client(
        "192.0.2.1", "submission", s.account
    )


# --------------------------------------------------------------------------- policy


class CountingStore(SqliteStore):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.by_id = 0

    async def get_account_by_id(self, account_id: int) -> Account | None:
        self.by_id += 1
        return await super().get_account_by_id(account_id)


@pytest.fixture
async def counting(tmp_path: Path) -> AsyncIterator[CountingStore]:
    s = CountingStore(tmp_path / "correo.db", tmp_path / "blobs")
    await s.open()
    await s.add_domain("example.test")
    await s.add_account("bob@example.test", "x", quota=1000)
    await s.add_alias("team@example.test", ["bob@example.test"])
    try:
        yield s
    finally:
        await s.close()


async def test_quota_uses_the_row_read_while_resolving(counting: CountingStore) -> None:
    p = Policy(config.loads(""), counting, Counters())
    mx = Client("192.0.2.1", "smtp")
    for rcpt in ("bob@example.test", "team@example.test", "bob+tag@example.test"):
        assert await p.check_recipient(mx, Rcpt(rcpt), 2000) == replies.R552_QUOTA
        assert isinstance(await p.check_recipient(mx, Rcpt(rcpt), 999), Recipient)
    assert counting.by_id == 0
    assert await p._quota(1, 2000) == replies.R552_QUOTA  # no row given: read it
    assert counting.by_id == 1
