"""IMAP over whole mailboxes against a real server: SELECT answered from the store's
compact view (RFC 3501 §6.3.1), FETCH of metadata over many messages rendered by the
fast path (§6.4.5) byte for byte as the general path renders one message, and SEARCH
TEXT/BODY (§6.4.4) with the in-memory body reads and the raw-octet quick miss."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CORPUS = sorted((Path(__file__).parent.parent / "unit" / "corpus").glob("*.eml"))
ITEMS = "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)"


class Raw:
    """A bare IMAP connection that returns each command's response octets."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=20)
        self.buf = b""
        self.n = 0
        self._line()  # greeting

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self.sock.recv(65536)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def cmd(self, text: str) -> bytes:
        self.n += 1
        tag = b"T%d" % self.n
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        out = b""
        while True:
            line = self._line()
            out += line
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                out += self._exact(int(m.group(1)))
                continue
            if line.startswith(tag + b" "):
                assert line.startswith(tag + b" OK"), line
                return out

    def close(self) -> None:
        self.sock.close()


def responses(out: bytes) -> list[bytes]:
    """The untagged ``* n FETCH`` responses (literals kept inside), tagged line cut."""
    body = out[: out.rstrip(b"\r\n").rfind(b"\r\n")]
    return [b"* " + r for r in re.split(rb"(?:^|\r\n)\* ", body) if b" FETCH " in r[:20]]


def messages() -> list[bytes]:
    out = [p.read_bytes() for p in CORPUS]
    for n in range(40):
        body = "alpha bravo word" if n % 7 == 0 else "alpha bravo"
        out.append(
            f"From: Sender {n} <s{n}@example.net>\r\nTo: alice@example.test\r\n"
            f'Subject: m{n} "q" \\ x\r\nDate: Mon, 2 Feb 2026 10:00:{n % 60:02d} +0000\r\n'
            f"\r\n{body}\r\n".encode()
        )
    out.append(
        b"Subject: =?utf-8?b?d29yZA==?=\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"d29yZCBpbiBiYXNlNjQ=\r\n"
    )
    return out


FAST_PATHS = ("mailbox_view", "message_rows", "blob_metas", "message_texts")


@pytest.fixture(params=["fast-paths", "store-without-fast-paths"])
def raw(
    mailserver: Any, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Raw]:
    if request.param != "fast-paths":  # as a backend lacking ImapFastPaths (PostgreSQL)
        for name in FAST_PATHS:
            monkeypatch.delattr(type(mailserver.store), name)
    for data in messages():
        mailserver.deliver("alice@example.test", data)
    c = Raw(mailserver.host, mailserver.ports["imap"])
    c.cmd("LOGIN alice@example.test secret")
    yield c
    c.close()


def test_select_reports_what_the_rows_say(mailserver: Any, raw: Raw) -> None:
    n = len(messages())
    raw.cmd("SELECT INBOX")
    raw.cmd("STORE 1:3 +FLAGS (\\Seen $Work)")
    raw.cmd("STORE 5 +FLAGS (\\Seen)")
    raw.cmd("STORE 2 +FLAGS (\\Deleted)")
    raw.cmd("EXPUNGE")
    raw.cmd("UNSELECT")
    out = raw.cmd("EXAMINE INBOX")
    assert b"* %d EXISTS\r\n" % (n - 1) in out
    assert b"* 0 RECENT\r\n" in out  # the first SELECT claimed them
    assert b"[UNSEEN 3]" in out  # 1 seen, 2 expunged, 3 (was 4) unseen
    assert b"$Work" in out.split(b"\r\n")[0]  # * FLAGS (...) lists the keyword
    mailserver.deliver("alice@example.test", messages()[-2])
    out = raw.cmd("EXAMINE INBOX")
    assert b"* %d EXISTS\r\n" % n in out and b"* 1 RECENT\r\n" in out


@pytest.mark.parametrize("uid", [False, True])
@pytest.mark.parametrize("utf8", [False, True])
def test_bulk_fetch_equals_one_by_one(raw: Raw, uid: bool, utf8: bool) -> None:
    if utf8:
        raw.cmd("ENABLE UTF8=ACCEPT")
    raw.cmd("SELECT INBOX")
    raw.cmd("STORE 2:4 +FLAGS (\\Answered $Label)")
    prefix = "UID FETCH" if uid else "FETCH"
    bulk = responses(raw.cmd(f"{prefix} 1:* {ITEMS}"))
    assert len(bulk) == len(messages())
    single = []
    for n in range(1, len(bulk) + 1):
        single += responses(raw.cmd(f"{prefix} {n} {ITEMS}"))  # UIDs equal seqs here
    assert bulk == single
    assert b"\\Recent" in bulk[0]  # this session claimed \Recent at SELECT
    again = responses(raw.cmd(f"{prefix} 1:* {ITEMS}"))  # from the envelope cache
    assert again == bulk


def test_search_text_and_body(raw: Raw) -> None:
    raw.cmd("SELECT INBOX")
    n_corpus = len(CORPUS)
    want = [n_corpus + i + 1 for i in range(40) if i % 7 == 0]
    base64_msg = len(messages())
    out = raw.cmd('SEARCH TEXT "WORD"')
    found = [int(x) for x in out.split(b"\r\n")[0].split()[2:]]
    assert [f for f in found if f > n_corpus] == [*want, base64_msg]
    out = raw.cmd('SEARCH BODY "word"')
    found = [int(x) for x in out.split(b"\r\n")[0].split()[2:]]
    assert [f for f in found if f > n_corpus] == [*want, base64_msg]
    out = raw.cmd('UID SEARCH SUBJECT "word"')
    assert out.split(b"\r\n")[0].split()[2:] == [str(base64_msg).encode()]
