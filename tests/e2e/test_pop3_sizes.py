"""RETR and TOP byte for byte on both sides of every size threshold of the send path:
inline bodies (in the database), file bodies read and written whole (up to
``WHOLE_REPLY``), and bodies streamed in ``STREAM_CHUNK`` pieces, with dot-leading lines
placed on the chunk boundaries, with and without a per-recipient prefix, pipelined in one
write, over plain TCP and POP3S (RFC 1939 §3 byte-stuffing, §5 RETR, §7 TOP)."""

from __future__ import annotations

import os
import re
import socket
import ssl
from typing import Any

import pytest

from correo.pop3.session import STREAM_CHUNK, WHOLE_REPLY

USER, PASSWORD = "alice@example.test", "secret"
PREFIX = b"Return-Path: <bob@example.test>\r\nDelivered-To: alice@example.test\r\n"


def message(size: int, *, dot_every: int = 5, final_crlf: bool = True) -> bytes:
    """Exactly ``size`` octets: a header, then lines with a dot-leading line every
    ``dot_every`` lines, and at the multiples of STREAM_CHUNK alternately a dot-leading
    line and a dot inside a line."""
    head = b"From: bob@example.test\r\nSubject: size %d\r\n\r\n" % size
    out = bytearray(head)
    n = 0
    while len(out) < size:
        line = b"." if n % dot_every == 0 else b""
        line += b"line %d of %d, a.b.c " % (n, size) + b"x" * (n % 50)
        out += line + b"\r\n"
        n += 1
    for k, boundary in enumerate(range(STREAM_CHUNK, size, STREAM_CHUNK)):
        if boundary - 2 > len(head):  # a dot-leading line there, or a dot inside a line
            out[boundary - 2 : boundary + 2] = b"\r\n.." if k % 2 == 0 else b"xy.z"
    data = bytes(out[:size])
    if not final_crlf:
        data = data[:-2] + b"zz"
    assert len(data) == size
    return data


def reference_stuff(data: bytes) -> bytes:
    """RFC 1939 §3 the obvious way, line by line, plus the terminator."""
    lines = data.split(b"\n")
    stuffed = b"\n".join(b"." + ln if ln.startswith(b".") else ln for ln in lines)
    return stuffed + (b".\r\n" if data.endswith(b"\n") or not data else b"\r\n.\r\n")


def top_reference(data: bytes, n: int) -> bytes:
    """RFC 1939 §7: the header, the blank line, then ``n`` body lines."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = re.findall(rb"[^\n]*\n|[^\n]+$", body)
    return head + b"\r\n\r\n" + b"".join(lines[:n])


SIZES = [  # (message size, with PREFIX, last line without CRLF)
    (100, False, False),  # inline body (in the database)
    (100, True, True),
    (65536, False, False),
    (WHOLE_REPLY - len(PREFIX), True, False),  # exactly WHOLE_REPLY as sent
    (WHOLE_REPLY, False, True),
    (WHOLE_REPLY + 1, False, False),  # the first streamed size
    (WHOLE_REPLY + 1 - len(PREFIX), True, False),
    (3 * STREAM_CHUNK + 17, True, True),
]


class Reader:
    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.buf = b""

    def until(self, end: bytes) -> bytes:
        while end not in self.buf:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError(self.buf[-200:])
            self.buf += data
        out, _, self.buf = self.buf.partition(end)
        return out + end

    def reply(self, multiline: bool) -> bytes:
        status = self.until(b"\r\n")
        if not multiline or not status.startswith(b"+OK"):
            return status
        if self.buf.startswith(b".\r\n"):
            self.buf = self.buf[3:]
            return status + b".\r\n"
        return status + self.until(b"\r\n.\r\n")


@pytest.fixture
def loaded(mailserver: Any) -> tuple[Any, list[bytes]]:
    """The messages of SIZES delivered in order; returns the octets RETR must send."""
    from correo.mail.message import prepare
    from correo.store.base import LocalDelivery

    ms = mailserver
    wire: list[bytes] = []

    async def load() -> None:
        acct = await ms.store.get_account(USER)
        for size, with_prefix, crlf_less in SIZES:
            data = message(size, final_crlf=not crlf_less)
            prefix = PREFIX if with_prefix else b""
            incoming = prepare(data)
            await ms.store.deliver(incoming, [LocalDelivery(acct.id, prefix=prefix)])
            wire.append(prefix + incoming.data)

    ms.run(load())
    return ms, wire


@pytest.fixture(params=["batched", "one-by-one"])
def batches(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Sessions open bodies with ``SqliteStore.open_bodies``, or, as with a store that
    lacks it, with ``get_messages`` + ``open_body``."""
    from correo.store.sqlite import SqliteStore

    if request.param == "one-by-one":
        monkeypatch.delattr(SqliteStore, "open_bodies")
    return str(request.param)


@pytest.mark.parametrize("service", ["pop3", "pop3s"])
def test_pipelined_retr_and_top_every_size(
    loaded: tuple[Any, list[bytes]], service: str, batches: str
) -> None:
    ms, wire = loaded
    sock: socket.socket | ssl.SSLSocket = socket.create_connection(
        (ms.host, ms.ports[service]), timeout=20
    )
    if service == "pop3s":
        sock = ms.client_tls().wrap_socket(sock, server_hostname="localhost")
    with sock:
        r = Reader(sock)
        assert r.reply(False).startswith(b"+OK")
        n = len(wire)
        commands = [b"USER " + USER.encode(), b"PASS " + PASSWORD.encode()]
        commands += [b"RETR %d" % i for i in range(1, n + 1)]
        commands += [b"TOP %d 3" % i for i in range(1, n + 1)]
        commands += [b"RETR %d" % n, b"QUIT"]
        sock.sendall(b"".join(c + b"\r\n" for c in commands))  # all in one write
        assert r.reply(False) == b"+OK send PASS\r\n"
        assert r.reply(False).startswith(b"+OK maildrop has %d messages" % n)
        for data in wire:
            got = r.reply(True)
            assert got == b"+OK %d octets\r\n" % len(data) + reference_stuff(data)
        for data in wire:
            got = r.reply(True)
            expected = top_reference(data, 3)
            assert got == b"+OK top of message follows\r\n" + reference_stuff(expected)
        assert r.reply(True) == b"+OK %d octets\r\n" % len(wire[-1]) + reference_stuff(wire[-1])
        assert r.reply(False).startswith(b"+OK")


def test_sizes_straddle_the_thresholds(loaded: tuple[Any, list[bytes]]) -> None:
    sizes = {len(data) for data in loaded[1]}
    assert {WHOLE_REPLY, WHOLE_REPLY + 1} <= sizes
    assert max(sizes) > 3 * STREAM_CHUNK


def test_expunged_after_its_body_was_opened_ahead(mailserver: Any, batches: str) -> None:
    """RETR 1 opens (or looks up) the next messages too; message 2 (a file body) is then
    expunged over IMAP and its file removed with its last reference: RETR 2 says so and
    the session goes on (RFC 1939 §5: numbers do not shift)."""
    from correo.store.base import FlagMode

    ms = mailserver
    big = [message(40_000 + k) for k in range(3)]
    for data in big:
        ms.deliver(USER, data)
    sock = socket.create_connection((ms.host, ms.ports["pop3"]), timeout=20)
    with sock:
        r = Reader(sock)
        assert r.reply(False).startswith(b"+OK")
        sock.sendall(b"USER %s\r\nPASS %s\r\nRETR 1\r\n" % (USER.encode(), PASSWORD.encode()))
        assert r.reply(False).startswith(b"+OK") and r.reply(False).startswith(b"+OK")
        assert r.reply(True).endswith(reference_stuff(big[0]))

        async def expunge_second() -> str:
            acct = await ms.store.get_account(USER)
            box = await ms.store.get_mailbox(acct.id, "INBOX")
            uid = (await ms.store.message_infos(box.id))[1].uid
            (stored,) = await ms.store.get_messages(box.id, [uid])
            await ms.store.set_flags(box.id, [uid], frozenset({"\\Deleted"}), FlagMode.ADD)
            await ms.store.expunge(box.id, [uid])
            return str(ms.store.blobs.path(stored.blob_id))

        path = ms.run(expunge_second())
        assert not os.path.exists(path)
        sock.sendall(b"RETR 2\r\nRETR 3\r\nQUIT\r\n")
        assert r.reply(True) == b"-ERR message 2 was removed by another session\r\n"
        assert r.reply(True).endswith(reference_stuff(big[2]))
        assert r.reply(False).startswith(b"+OK")
