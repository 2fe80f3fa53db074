"""IMAP end to end with the stdlib ``imaplib``: login, folders, APPEND, FETCH, SEARCH,
STORE, COPY/MOVE, EXPUNGE, STARTTLS and implicit TLS, against a real server."""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

MSG = (
    b"From: Bob <bob@example.test>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: hello word\r\n"
    b"Date: Mon, 2 Feb 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"The quick brown fox.\r\n"
)


def msg(n: int, body: str = "plain text") -> bytes:
    return (
        f"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: message {n}\r\n"
        f"Message-ID: <{n}@example.test>\r\n\r\n{body} {n}\r\n"
    ).encode()


@pytest.fixture
def imap(mailserver: Any) -> Iterator[imaplib.IMAP4]:
    client = imaplib.IMAP4(mailserver.host, mailserver.ports["imap"], timeout=10)
    client.login("alice@example.test", "secret")
    yield client
    try:
        client.logout()
    except (imaplib.IMAP4.error, OSError):
        pass


def test_greeting_capabilities_and_login(mailserver: Any) -> None:
    c = imaplib.IMAP4(mailserver.host, mailserver.ports["imap"], timeout=10)
    caps = set(c.capabilities)
    assert {
        "IMAP4REV1",
        "STARTTLS",
        "AUTH=PLAIN",
        "AUTH=LOGIN",
        "SASL-IR",
        "LITERAL+",
        "IDLE",
        "UIDPLUS",
        "MOVE",
        "SPECIAL-USE",
        "NAMESPACE",
        "ID",
        "ENABLE",
        "UNSELECT",
        "CHILDREN",
    } <= caps
    assert "LOGINDISABLED" not in caps  # loopback listener, plaintext_on_loopback
    typ, data = c.login("alice@example.test", "secret")
    assert typ == "OK" and b"CAPABILITY" in data[0]
    typ, data = c.capability()
    after = set(data[0].decode().upper().split())
    assert "STARTTLS" not in after and "AUTH=PLAIN" not in after and "IDLE" in after
    c.logout()


def test_wrong_password_and_state_errors(mailserver: Any) -> None:
    c = imaplib.IMAP4(mailserver.host, mailserver.ports["imap"], timeout=10)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login("alice@example.test", "wrong")
    c.logout()
    s = raw(mailserver)
    s.sendall(b"a SELECT INBOX\r\n")
    assert read_until(s, b"\r\n").startswith(b"a BAD")
    s.sendall(b"b LOGIN alice@example.test secret\r\nc FETCH 1 FLAGS\r\n")
    assert b"c BAD" in read_until(s, b"c BAD FETCH not allowed in the authenticated state\r\n")
    s.close()


def test_authenticate_plain_with_sasl_ir(mailserver: Any) -> None:
    c = imaplib.IMAP4(mailserver.host, mailserver.ports["imap"], timeout=10)
    typ, _ = c.authenticate("PLAIN", lambda _: b"\0alice@example.test\0secret")
    assert typ == "OK" and c.state == "AUTH"
    c.logout()


def test_list_special_use_and_hierarchy(imap: imaplib.IMAP4) -> None:
    typ, data = imap.list()
    assert typ == "OK"
    lines = {line.decode().rsplit(" ", 1)[1].strip('"'): line.decode() for line in data}
    assert set(lines) >= {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    assert "\\Sent" in lines["Sent"] and "\\Trash" in lines["Trash"]
    assert "\\HasNoChildren" in lines["INBOX"]
    assert imap.create("Projects/2026")[0] == "OK"
    typ, data = imap.list('""', "Projects*")
    got = [d.decode() for d in data]
    assert any(g.endswith('"Projects"') or g.endswith(" Projects") for g in got)
    assert any("\\HasChildren" in g for g in got)
    typ, data = imap.list('""', "%")
    assert not any("2026" in d.decode() for d in data)
    # creating an existing mailbox
    typ, data = imap.create("Projects")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0]
    # unicode names go over the wire in modified UTF-7
    assert imap.create('"&AMk-t&AOk-"')[0] == "OK"  # Été
    typ, data = imap.list('""', "*t&AOk-")
    assert typ == "OK" and data[0] is not None and b"&AMk-t&AOk-" in data[0]
    # delete a parent: it stays \Noselect
    assert imap.delete("Projects")[0] == "OK"
    typ, data = imap.list('""', "Projects")
    assert b"\\Noselect" in data[0]
    typ, data = imap.select("Projects")
    assert typ == "NO"
    assert imap.rename("Projects/2026", "Work")[0] == "OK"
    typ, data = imap.select("nosuch")
    assert typ == "NO" and b"NONEXISTENT" in data[0]


def test_append_select_fetch(imap: imaplib.IMAP4, mailserver: Any) -> None:
    typ, data = imap.append("INBOX", "(\\Flagged)", '"02-Feb-2026 10:00:00 +0100"', MSG)
    assert typ == "OK"
    m = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    assert m
    typ, data = imap.select("INBOX")
    assert typ == "OK" and data == [b"1"]
    assert imap.response("UIDVALIDITY")[1] == [m.group(1)]
    typ, data = imap.fetch("1", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
    line = data[0].decode()
    assert f"UID {m.group(2).decode()}" in line
    assert "\\Flagged" in line and f"RFC822.SIZE {len(MSG)}" in line
    assert '" 2-Feb-2026 09:00:00 +0000"' in line
    typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: hello word\r\n\r\n"
    typ, data = imap.fetch("1", "FLAGS")
    assert b"\\Seen" not in data[0]
    typ, data = imap.fetch("1", "(BODY[TEXT])")
    assert data[0][1] == b"The quick brown fox.\r\n"
    assert b"\\Seen" in data[1]  # FLAGS added because the fetch set \Seen
    typ, data = imap.fetch("1", "RFC822")
    assert data[0][1] == MSG
    typ, data = imap.fetch("1", "(BODY[]<4.5>)")
    assert data[0][1] == MSG[4:9]
    typ, data = imap.fetch("1", "ALL")
    assert b"ENVELOPE" in data[0] and b'"hello word"' in data[0]
    typ, data = imap.fetch("1", "(BODYSTRUCTURE)")
    assert b'("TEXT" "PLAIN"' in data[0].upper()
    with pytest.raises(imaplib.IMAP4.error, match="Invalid message sequence number"):
        imap.fetch("2", "FLAGS")


def test_append_to_missing_mailbox_says_trycreate(imap: imaplib.IMAP4) -> None:
    typ, data = imap.append("Nope", None, None, MSG)
    assert typ == "NO" and b"TRYCREATE" in data[0]


def test_search_store_copy_move_expunge(imap: imaplib.IMAP4, mailserver: Any) -> None:
    for n in range(1, 6):
        mailserver.deliver("alice@example.test", msg(n, "word" if n % 2 else "other"))
    imap.select("INBOX")
    assert imap.search(None, "ALL") == ("OK", [b"1 2 3 4 5"])
    assert imap.search(None, "BODY", "word") == ("OK", [b"1 3 5"])
    assert imap.search(None, "OR", "SUBJECT", '"message 2"', "SUBJECT", '"message 4"') == (
        "OK",
        [b"2 4"],
    )
    assert imap.search(None, "NOT", "2:4") == ("OK", [b"1 5"])
    assert imap.search("UTF-8", "SUBJECT", "message") == ("OK", [b"1 2 3 4 5"])
    typ, data = imap.search("KOI8-R", "ALL")
    assert typ == "NO" and b"BADCHARSET" in data[0]
    typ, data = imap.uid("SEARCH", "UID", "1:*")
    uids = data[0].split()
    assert len(uids) == 5
    typ, data = imap.store("2", "+FLAGS", "(\\Flagged custom)")
    assert typ == "OK" and b"\\Flagged" in data[0] and b"custom" in data[0]
    assert imap.search(None, "FLAGGED") == ("OK", [b"2"])
    assert imap.search(None, "KEYWORD", "custom") == ("OK", [b"2"])
    typ, data = imap.store("2", "-FLAGS.SILENT", "(custom)")
    assert typ == "OK" and data == [None]
    typ, data = imap.copy("1:2", "Archive")
    assert typ == "OK" and b"COPYUID" in data[0]
    typ, data = imap._simple_command("MOVE", "3", "Trash")
    assert typ == "OK"
    assert b"COPYUID" in imap.untagged_responses.pop("OK", [b""])[-1]
    assert imap.untagged_responses.pop("EXPUNGE") == [b"3"]
    assert imap.search(None, "ALL") == ("OK", [b"1 2 3 4"])
    imap.store("1,3", "+FLAGS", "\\Deleted")
    typ, data = imap.expunge()
    assert typ == "OK" and data == [b"1", b"2"]
    assert imap.search(None, "ALL") == ("OK", [b"1 2"])
    typ, data = imap.status("Archive", "(MESSAGES UIDNEXT UNSEEN)")
    assert typ == "OK" and b"MESSAGES 2" in data[0]
    typ, data = imap.status("Trash", "(MESSAGES)")
    assert b"MESSAGES 1" in data[0]
    # UID EXPUNGE only removes the named UIDs
    typ, data = imap.uid("SEARCH", "ALL")
    _a, b = data[0].split()
    imap.store("1:2", "+FLAGS", "\\Deleted")
    typ, data = imap.uid("EXPUNGE", b.decode())
    assert typ == "OK" and imap.untagged_responses.pop("EXPUNGE") == [b"2"]
    assert imap.search(None, "ALL") == ("OK", [b"1"])
    assert imap.close()[0] == "OK"  # expunges the remaining \Deleted message silently
    typ, data = imap.select("INBOX")
    assert data == [b"0"]


def test_examine_is_read_only(imap: imaplib.IMAP4, mailserver: Any) -> None:
    mailserver.deliver("alice@example.test", MSG)
    typ, data = imap.select("INBOX", readonly=True)
    assert typ == "OK"
    typ, data = imap.fetch("1", "(BODY[])")
    typ, data = imap.fetch("1", "FLAGS")
    assert b"\\Seen" not in data[0]
    typ, data = imap.store("1", "+FLAGS", "\\Flagged")
    assert typ == "NO"


def test_recent_goes_to_one_session(mailserver: Any) -> None:
    mailserver.deliver("alice@example.test", MSG)
    a = imaplib.IMAP4(mailserver.host, mailserver.ports["imap"], timeout=10)
    b = imaplib.IMAP4(mailserver.host, mailserver.ports["imap"], timeout=10)
    a.login("alice@example.test", "secret")
    b.login("alice@example.test", "secret")
    a.select("INBOX")
    assert a.response("RECENT")[1] == [b"1"]
    b.select("INBOX")
    assert b.response("RECENT")[1] == [b"0"]
    assert a.search(None, "RECENT") == ("OK", [b"1"])
    assert b.search(None, "RECENT") == ("OK", [b""])
    a.logout()
    b.logout()


def test_starttls_then_login(mailserver: Any) -> None:
    c = imaplib.IMAP4(mailserver.host, mailserver.ports["imap"], timeout=10)
    c.starttls(mailserver.client_tls())
    assert "STARTTLS" not in c.capabilities
    c.login("alice@example.test", "secret")
    assert c.select("INBOX")[0] == "OK"
    c.logout()


def test_implicit_tls(mailserver: Any) -> None:
    c = imaplib.IMAP4_SSL(
        mailserver.host, mailserver.ports["imaps"], ssl_context=mailserver.client_tls(), timeout=10
    )
    assert "STARTTLS" not in c.capabilities
    c.login("alice@example.test", "secret")
    c.logout()


def test_logindisabled_without_tls_on_non_loopback_rules(make_mailserver: Any) -> None:
    server = make_mailserver("[auth]\nplaintext_on_loopback = false\n")
    c = imaplib.IMAP4(server.host, server.ports["imap"], timeout=10)
    assert "LOGINDISABLED" in c.capabilities and "AUTH=PLAIN" not in c.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        c.login("alice@example.test", "secret")
    c.starttls(server.client_tls())
    assert "LOGINDISABLED" not in c.capabilities and "AUTH=PLAIN" in c.capabilities
    c.login("alice@example.test", "secret")
    c.logout()


def raw(server: Any) -> socket.socket:
    s = socket.create_connection((server.host, server.ports["imap"]), timeout=10)
    assert s.recv(4096).startswith(b"* OK")
    return s


def read_until(s: socket.socket, end: bytes) -> bytes:
    buf = b""
    while not buf.endswith(end):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def test_starttls_discards_pipelined_commands(mailserver: Any) -> None:
    s = raw(mailserver)
    s.sendall(b"a STARTTLS\r\nb LOGIN alice@example.test secret\r\n")
    assert read_until(s, b"\r\n").startswith(b"a OK")
    tls = mailserver.client_tls().wrap_socket(s, server_hostname="localhost")
    tls.sendall(b"c NOOP\r\n")
    reply = read_until(tls, b"\r\n")
    assert reply.startswith(b"c OK"), reply  # "b LOGIN" was never executed
    tls.sendall(b"d SELECT INBOX\r\n")
    assert b"d BAD" in read_until(tls, b"\r\n")
    tls.close()


def test_literal_limits_and_bad_input(make_mailserver: Any) -> None:
    server = make_mailserver("[limits]\nmax_message_size = 2000\nmax_errors = 5\n")
    s = raw(server)
    s.sendall(b"a LOGIN alice@example.test secret\r\n")
    assert b"a OK" in read_until(s, b"\r\n")
    s.sendall(b"b APPEND INBOX {5000}\r\n")
    assert read_until(s, b"\r\n").startswith(b"b NO [TOOBIG]")
    s.sendall(b"c APPEND INBOX {3000+}\r\n" + b"x" * 3000 + b"\r\nd NOOP\r\n")
    reply = read_until(s, b"d OK NOOP completed\r\n")
    assert reply.startswith(b"c NO [TOOBIG]"), reply
    s.sendall(b"e APPEND INBOX {10}\r\n")
    assert read_until(s, b"\r\n").startswith(b"+ ")
    s.sendall(b"Subject: x\r\nf NOOP\r\n")
    assert b"e OK [APPENDUID" in read_until(s, b"f OK NOOP completed\r\n")
    s.sendall(b"g FETCH\r\n")
    assert read_until(s, b"\r\n").startswith(b"g BAD")
    s.sendall(b"h SEARCH " + b"(" * 100 + b"ALL" + b")" * 100 + b"\r\n")
    assert read_until(s, b"\r\n").startswith(b"h BAD")
    s.sendall(b"i SELECT INBOX\r\n")
    read_until(s, b"i OK [READ-WRITE] SELECT completed\r\n")
    s.sendall(b"j FROB\r\n")  # the fifth error
    reply = read_until(s, b"never")
    assert reply.startswith(b"j BAD") and b"* BYE" in reply
    s.close()


def test_disconnect_mid_append_leaves_nothing(mailserver: Any) -> None:
    s = raw(mailserver)
    s.sendall(b"a LOGIN alice@example.test secret\r\n")
    read_until(s, b"\r\n")
    s.sendall(b"b APPEND INBOX {100+}\r\nSubject: half\r\n")
    s.close()
    c = imaplib.IMAP4(mailserver.host, mailserver.ports["imap"], timeout=10)
    c.login("alice@example.test", "secret")
    assert c.select("INBOX")[1] == [b"0"]
    c.logout()


def test_tls_certificate_is_checked_by_client(mailserver: Any) -> None:
    ctx = ssl.create_default_context()
    with pytest.raises(ssl.SSLError):
        imaplib.IMAP4_SSL(mailserver.host, mailserver.ports["imaps"], ssl_context=ctx, timeout=10)


def test_large_flag_resync_matches_full_fetch(imap: imaplib.IMAP4, mailserver: Any) -> None:
    """``FETCH 1:* (UID FLAGS ...)`` over many messages takes the compact path; it must
    answer exactly what the metadata path answers."""

    async def fill() -> None:
        from correo.mail.message import prepare

        box = await mailserver.store.get_mailbox(mailserver.alice.id, "INBOX")
        for n in range(450):
            await mailserver.store.append(box.id, prepare(msg(n)), frozenset({f"$k{n % 3}"}))

    mailserver.run(fill())
    imap.select("INBOX")
    imap.store("7", "+FLAGS", "\\Flagged")
    typ, cheap = imap.fetch("1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
    typ2, full = imap.fetch("1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
    assert typ == typ2 == "OK" and len(cheap) == len(full) == 450
    for a, b in zip(cheap, full, strict=True):
        assert b.startswith(a[:-1])  # same items, ENVELOPE appended in the second
    assert b"\\Flagged" in cheap[6] and b"$k0" in cheap[0]
