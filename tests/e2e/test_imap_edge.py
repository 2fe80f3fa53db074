"""IMAP edge cases over real sockets: timers, internal errors, names, UTF-8 downgrade."""

from __future__ import annotations

import imaplib
import logging
import socket
import time
from typing import Any

import pytest

from correo.store.base import TemporaryStoreError

MSG = b"From: bob@example.test\r\nSubject: plain\r\n\r\nbody\r\n"


def login(server: Any) -> imaplib.IMAP4:
    c = imaplib.IMAP4(server.host, server.ports["imap"], timeout=10)
    c.login("alice@example.test", "secret")
    return c


def test_login_timeout_before_auth_not_after(make_mailserver: Any) -> None:
    server = make_mailserver("[limits]\nlogin_timeout = 1\n")
    s = socket.create_connection((server.host, server.ports["imap"]), timeout=10)
    s.recv(4096)
    time.sleep(1.6)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    assert data == b"* BYE Autologout; idle for too long\r\n"
    c = login(server)
    time.sleep(1.6)  # RFC 9051 §5.4: at least 30 minutes once authenticated
    assert c.noop()[0] == "OK"
    c.logout()


def test_internal_error_is_serverbug_logged_with_session_id(
    mailserver: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(account_id: int) -> list[str]:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(mailserver.store, "list_subscriptions", broken)
    c = login(mailserver)
    with caplog.at_level(logging.ERROR):
        typ, data = c.lsub()
    assert typ == "NO" and data[0].startswith(b"[SERVERBUG]")
    assert c.noop()[0] == "OK"  # the session goes on
    record = next(r for r in caplog.records if "LSUB failed" in r.getMessage())
    assert record.getMessage().startswith("[") and record.exc_info is not None
    c.logout()


def test_temporary_store_error_is_unavailable(
    mailserver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def busy(*args: object) -> None:
        raise TemporaryStoreError("database is locked")

    monkeypatch.setattr(mailserver.store, "set_subscribed", busy)
    c = login(mailserver)
    typ, data = c.subscribe("INBOX")
    assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]")
    c.logout()


def test_mailbox_names(mailserver: Any) -> None:
    c = login(mailserver)
    assert c.select("inbox")[0] == "OK"
    assert c.select("InBoX")[0] == "OK"
    assert c.create("Trailing/")[0] == "OK"
    assert c.list('""', "Trailing*")[1] == [b'(\\HasNoChildren) "/" Trailing']
    for bad in ("a//b", "a/./b", "a/../b", "/lead"):
        typ, data = c.create(f'"{bad}"')
        assert typ == "NO", bad
    typ, data = c.create("INBOX")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0]
    typ, data = c.delete("INBOX")
    assert typ == "NO"
    typ, data = c.delete("NoSuch")
    assert typ == "NO" and b"NONEXISTENT" in data[0]
    typ, data = c._simple_command("CREATE", "Bad", "(USE (\\Frob))")
    assert typ == "NO" and b"USEATTR" in data[0]
    c.logout()


def test_rename_inbox_moves_its_messages(mailserver: Any) -> None:
    mailserver.deliver("alice@example.test", MSG)
    c = login(mailserver)
    assert c.rename("INBOX", "Old")[0] == "OK"
    assert c.select("INBOX")[1] == [b"0"]
    assert c.select("Old")[1] == [b"1"]
    c.logout()


def test_utf8_headers_are_downgraded_for_non_utf8_clients(mailserver: Any) -> None:
    raw8 = ("From: Jösé <jose@example.test>\r\nSubject: café olé\r\n\r\nbody\r\n").encode()
    mailserver.deliver("alice@example.test", raw8)
    c = login(mailserver)
    c.select("INBOX")
    _typ, data = c.fetch("1", "(ENVELOPE)")
    line = data[0] if isinstance(data[0], bytes) else b"".join(data[0])
    assert line.isascii() and b"=?utf-8?" in line.lower()
    _typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert "café".encode() in data[0][1]  # raw header bytes are served as stored
    c.logout()


def test_idle_done_and_other_lines(mailserver: Any) -> None:
    s = socket.create_connection((mailserver.host, mailserver.ports["imap"]), timeout=10)
    s.recv(4096)
    s.sendall(b"a LOGIN alice@example.test secret\r\nb IDLE\r\n")
    buf = b""
    while b"+ idling" not in buf:
        buf += s.recv(4096)
    s.sendall(b"FROB\r\n")
    while b"b BAD" not in buf:
        buf += s.recv(4096)
    s.sendall(b"c IDLE\r\n")
    while b"+ idling\r\n" not in buf.split(b"b BAD", 1)[1]:
        buf += s.recv(4096)
    s.sendall(b"done\r\n")
    while b"c OK" not in buf:
        buf += s.recv(4096)
    s.close()


def test_authenticate_login_mechanism_and_cancel(mailserver: Any) -> None:
    s = socket.create_connection((mailserver.host, mailserver.ports["imap"]), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a AUTHENTICATE LOGIN\r\n")
    assert f.readline() == b"+ VXNlcm5hbWU6\r\n"
    s.sendall(b"*\r\n")
    assert f.readline().startswith(b"a BAD")
    s.sendall(b"b AUTHENTICATE LOGIN\r\n")
    f.readline()
    s.sendall(b"YWxpY2VAZXhhbXBsZS50ZXN0\r\n")
    assert f.readline() == b"+ UGFzc3dvcmQ6\r\n"
    s.sendall(b"c2VjcmV0\r\n")
    assert f.readline().startswith(b"b OK [CAPABILITY IMAP4rev1")
    s.close()


def test_utf8_accept(mailserver: Any) -> None:
    """RFC 6855: after ENABLE UTF8=ACCEPT, names and headers travel as raw UTF-8."""
    raw8 = "From: Jösé <jose@example.test>\r\nSubject: café olé\r\n\r\nbody\r\n".encode()
    s = socket.create_connection((mailserver.host, mailserver.ports["imap"]), timeout=10)
    f = s.makefile("rb")
    assert b"UTF8=ACCEPT" in f.readline()

    def cmd(line: bytes) -> list[bytes]:
        tag = line.split(b" ", 1)[0]
        s.sendall(line + b"\r\n")
        out = []
        while not (ln := f.readline()).startswith(tag + b" "):
            out.append(ln)
        out.append(ln)
        return out

    cmd(b"a LOGIN alice@example.test secret")
    # before ENABLE: 8-bit header fields are refused (RFC 6855 §4)
    assert cmd(b"b APPEND INBOX {%d+}\r\n" % len(raw8) + raw8)[-1].startswith(b"b NO")
    assert cmd(b"c ENABLE UTF8=ACCEPT")[0] == b"* ENABLED UTF8=ACCEPT\r\n"
    assert cmd('d CREATE "Été"'.encode())[-1].startswith(b"d OK")
    listed = cmd(b'e LIST "" *')
    assert '* LIST (\\HasNoChildren) "/" "Été"\r\n'.encode() in listed
    reply = cmd(b"f APPEND INBOX UTF8 (~{%d+}\r\n" % len(raw8) + raw8 + b")")
    assert reply[-1].startswith(b"f OK [APPENDUID")
    cmd(b"g SELECT INBOX")
    env = b"".join(cmd(b"h FETCH 1 ENVELOPE"))
    assert "café olé".encode() in env and b"=?" not in env
    assert cmd(b"i SEARCH CHARSET UTF-8 ALL")[-1].startswith(b"i BAD")
    assert cmd('j SEARCH SUBJECT "olé"'.encode())[0] == b"* SEARCH 1\r\n"
    s.close()
    # a client that did not enable UTF-8 sees the same mailbox in modified UTF-7
    c = login(mailserver)
    assert any(b"&AMk-t&AOk-" in line for line in c.list()[1])
    c.logout()


NASTY = [
    b"a LOGIN {5}\r\n",  # then the client never sends the literal
    b'a SELECT "INBOX\r\n',
    b"a FETCH 1:* (BODY[" + b"1." * 500 + b"])\r\n",
    b"a SEARCH " + b"NOT " * 5000 + b"ALL\r\n",
    b"a STORE 1 +FLAGS (" + b"x " * 5000 + b")\r\n",
    b"\r\n\r\n\r\n",
    b"\x00\xff\xfe garbage \x1b[31m\r\n",
    b"a UID FETCH 4294967296 FLAGS\r\n",
    b"a FETCH 99999999999999999999 FLAGS\r\n",
    b"a APPEND INBOX {99999999999999999999}\r\n",
    b"a APPEND INBOX (\\Seen \r\n",
    b'a LIST "" {3+}\r\n*%*\r\n',
    b"a ID (" + b'"k" "v" ' * 40 + b")\r\n",
    b"a RENAME INBOX INBOX\r\n",
    b"a CREATE {6+}\r\nfoo\r\nb\r\n",
]


@pytest.mark.parametrize("data", NASTY, ids=range(len(NASTY)))
def test_nasty_input_never_crashes_the_session(
    mailserver: Any, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    s = socket.create_connection((mailserver.host, mailserver.ports["imap"]), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"l LOGIN alice@example.test secret\r\ns SELECT INBOX\r\n")
    while not f.readline().startswith(b"s OK"):
        pass
    with caplog.at_level(logging.INFO):
        s.sendall(data)
        s.sendall(b"\r\nz1 NOOP\r\nz2 NOOP\r\n")
        reply = b""
        while b"z2 OK" not in reply and b"* BYE" not in reply:
            line = f.readline()
            if not line:
                break
            reply += line
    s.close()
    assert b"z2 OK" in reply or b"* BYE" in reply, reply[-300:]
    assert not any(
        "crashed" in r.getMessage() or r.levelno >= logging.ERROR for r in caplog.records
    )


def test_passwords_never_reach_the_log(mailserver: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        c = imaplib.IMAP4(mailserver.host, mailserver.ports["imap"], timeout=10)
        c.login("alice@example.test", "secret")
        c.logout()
        c = imaplib.IMAP4(mailserver.host, mailserver.ports["imap"], timeout=10)
        c.authenticate("PLAIN", lambda _: b"\0alice@example.test\0secret")
        c.logout()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "C: Login" in text  # debug tracing was on
    assert "secret" not in text and "AGFsaWNl" not in text
