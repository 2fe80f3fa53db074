"""The state x command matrix (RFC 3501 §3, §6): every command in every state, over a
real socket. Allowed → OK or NO; not allowed in that state → BAD and the session goes on.
The expectations are written from the RFCs here, not read from ``commands.ALLOWED``."""

from __future__ import annotations

import base64
import socket
from typing import Any

import pytest

NONAUTH, AUTH, SELECTED = "not authenticated", "authenticated", "selected"
ANY = {NONAUTH, AUTH, SELECTED}
AUTHED = {AUTH, SELECTED}
PLAIN = base64.b64encode(b"\0alice@example.test\0secret")
MSG = b"Subject: m\r\n\r\nbody\r\n"

MATRIX: list[tuple[bytes, set[str]]] = [
    (b"CAPABILITY", ANY),  # RFC 3501 §6.1
    (b"NOOP", ANY),
    (b"LOGOUT", ANY),
    (b"ID NIL", ANY),  # RFC 2971
    (b"STARTTLS", {NONAUTH}),  # RFC 3501 §6.2
    (b"AUTHENTICATE PLAIN " + PLAIN, {NONAUTH}),
    (b"LOGIN alice@example.test secret", {NONAUTH}),
    (b"SELECT INBOX", AUTHED),  # RFC 3501 §6.3
    (b"EXAMINE INBOX", AUTHED),
    (b"CREATE NewBox", AUTHED),
    (b"DELETE NoSuchBox", AUTHED),
    (b"RENAME NoSuchBox Other", AUTHED),
    (b"SUBSCRIBE INBOX", AUTHED),
    (b"UNSUBSCRIBE INBOX", AUTHED),
    (b'LIST "" *', AUTHED),
    (b'LSUB "" *', AUTHED),
    (b"STATUS INBOX (MESSAGES)", AUTHED),
    (b"APPEND INBOX {%d+}\r\n" % len(MSG) + MSG, AUTHED),
    (b"IDLE", AUTHED),  # RFC 2177
    (b"NAMESPACE", AUTHED),  # RFC 2342
    (b"ENABLE FOO", {AUTH}),  # RFC 5161 §3.1: authenticated state only
    (b"CHECK", {SELECTED}),  # RFC 3501 §6.4
    (b"CLOSE", {SELECTED}),
    (b"UNSELECT", {SELECTED}),  # RFC 3691
    (b"EXPUNGE", {SELECTED}),
    (b"SEARCH ALL", {SELECTED}),
    (b"FETCH 1 FLAGS", {SELECTED}),
    (b"STORE 1 +FLAGS (x)", {SELECTED}),
    (b"COPY 1 Trash", {SELECTED}),
    (b"MOVE 1 Trash", {SELECTED}),  # RFC 6851
    (b"UID FETCH 1:* FLAGS", {SELECTED}),
    (b"UID STORE 1:* +FLAGS (x)", {SELECTED}),
    (b"UID SEARCH ALL", {SELECTED}),
    (b"UID COPY 1:* Trash", {SELECTED}),
    (b"UID MOVE 1:* Trash", {SELECTED}),
    (b"UID EXPUNGE 1:*", {SELECTED}),  # RFC 4315
]


class Raw:
    def __init__(self, server: Any) -> None:
        self.s = socket.create_connection((server.host, server.ports["imap"]), timeout=10)
        self.buf = b""
        assert self.line().startswith(b"* OK")

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def command(self, tag: bytes, text: bytes) -> bytes:
        """Send; answer continuations (IDLE); return the tagged status line."""
        self.s.sendall(tag + b" " + text + b"\r\n")
        while True:
            line = self.line()
            if line.startswith(b"+ ") and text == b"IDLE":
                self.s.sendall(b"DONE\r\n")
            elif line.startswith(tag + b" "):
                return line


def into(server: Any, state: str) -> Raw:
    r = Raw(server)
    if state != NONAUTH:
        assert r.command(b"l", b"LOGIN alice@example.test secret").startswith(b"l OK")
    if state == SELECTED:
        assert r.command(b"s", b"SELECT INBOX").startswith(b"s OK")
    return r


@pytest.mark.parametrize(("text", "allowed"), MATRIX, ids=[m[0][:20].decode() for m in MATRIX])
def test_command_in_every_state(mailserver: Any, text: bytes, allowed: set[str]) -> None:
    mailserver.deliver("alice@example.test", MSG)
    for state in (NONAUTH, AUTH, SELECTED):
        r = into(mailserver, state)
        reply = r.command(b"t", text)
        status = reply.split(b" ")[1]
        if state in allowed:
            assert status in (b"OK", b"NO"), (state, reply)
        else:
            assert status == b"BAD", (state, reply)
            # the session goes on in the same state
            assert r.command(b"n", b"NOOP").startswith(b"n OK")
        r.s.close()


def test_every_command_is_in_the_matrix() -> None:
    from correo.imap.commands import ALLOWED

    words = {m[0].split(b" ")[0].decode() for m in MATRIX}
    assert set(ALLOWED) == words
