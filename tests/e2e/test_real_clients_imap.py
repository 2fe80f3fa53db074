"""IMAP with real clients: curl ``imap://`` (STARTTLS) and ``imaps://`` (LIST, FETCH of
sections, APPEND, SEARCH, STORE, CREATE, STATUS), fetchmail over IMAP (including IDLE),
getmail6 into a Maildir. mbsync has its own module, ``test_real_clients_mbsync``.

RFC 3501 (IMAP4rev1), RFC 2595 §3.1 / RFC 3501 §6.2.1 (STARTTLS), RFC 8314 (implicit TLS),
RFC 2177 (IDLE), RFC 5092 (IMAP URLs, as curl uses them), RFC 6154 (SPECIAL-USE),
RFC 6855/6857 (UTF-8 and its downgrade).
"""

from __future__ import annotations

import email.header
import os
import re
import select
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Any

from test_real_clients import (
    PASSWORD,
    TRICKY,
    USER,
    as_fetched,
    curl,
    curl_tls,
    describe,
    fetchmail,
    fetchmail_tls,
    getmail,
    messages,
    need,
    strip_fetchmail,
    texts,
    trace_prefix,
)

from correo.mail.message import prepare
from correo.store.base import FlagMode


def sample(n: int, subject: str | None = None) -> bytes:
    return (
        f"Return-Path: <carol@elsewhere.test>\r\nFrom: carol@elsewhere.test\r\nTo: {USER}\r\n"
        f"Subject: {subject or f'message {n}'}\r\nMessage-ID: <i{n}@elsewhere.test>\r\n"
        f"\r\nbody of message {n}\r\n"
    ).encode()


def fill(ms: Any, subjects: list[str]) -> list[bytes]:
    for n, subject in enumerate(subjects, 1):
        ms.deliver(USER, sample(n, subject))
    return texts(ms, ms.alice)


def mailbox_id(ms: Any, name: str) -> int:
    box = ms.run(ms.store.get_mailbox(ms.alice.id, name))
    assert box is not None, name
    return int(box.id)


# --------------------------------------------------------------------------- curl


def test_curl_imap_starttls_list_fetch_search(mailserver: Any) -> None:
    """STARTTLS required: LIST shows the special-use folders (RFC 6154), FETCH by UID gives
    the exact bytes, UID SEARCH and the URL search find the right messages."""
    ms = mailserver
    stored = fill(ms, ["quarterly report", "lunch?", "report draft"])
    tls, hostport = curl_tls(ms, "imap")
    base = f"imap://{hostport}"
    listing = curl(*tls, "--ssl-reqd", base + "/")
    assert listing.returncode == 0, describe(listing)
    lines = listing.stdout.decode().splitlines()
    assert '* LIST (\\HasNoChildren) "/" INBOX' in lines
    for name, use in [("Sent", "Sent"), ("Drafts", "Drafts"), ("Trash", "Trash")]:
        assert any(re.fullmatch(rf'\* LIST \(.*\\{use}.*\) "/" {name}', li) for li in lines)
    for uid, text in enumerate(stored, 1):
        got = curl(*tls, "--ssl-reqd", f"{base}/INBOX;UID={uid}")
        assert got.returncode == 0, describe(got)
        assert got.stdout == text
    search = curl(*tls, "--ssl-reqd", "-X", "UID SEARCH SUBJECT report", base + "/INBOX")
    assert search.returncode == 0, describe(search)
    assert search.stdout == b"* SEARCH 1 3\r\n"
    search = curl(
        *tls, "--ssl-reqd", base + "/INBOX?OR%20SUBJECT%20lunch%20BODY%20%22message%203%22"
    )
    assert search.returncode == 0, describe(search)
    assert search.stdout == b"* SEARCH 2 3\r\n"
    # FETCH by URL marks \Seen (curl fetches BODY[], not BODY.PEEK[]; RFC 3501 §6.4.5)
    assert all("\\Seen" in flags for _, flags, _ in messages(ms, ms.alice))


def test_curl_imaps_append_store_create(mailserver: Any, tmp_path: Path) -> None:
    """Implicit TLS: APPEND (curl sets \\Seen), STORE +FLAGS, CREATE a nested folder (the
    parent appears, RFC 3501 §6.3.3), STATUS, and all of it visible in the store."""
    ms = mailserver
    path = tmp_path / "draft.eml"
    path.write_bytes(TRICKY)
    tls, hostport = curl_tls(ms, "imaps")
    base = f"imaps://{hostport}"
    up = curl(*tls, "-T", str(path), f"{base}/Drafts")
    assert up.returncode == 0, describe(up)
    ((uid, flags, text),) = messages(ms, ms.alice, "Drafts")
    assert text == TRICKY and flags == {"\\Seen"}
    store = curl(*tls, "-X", f"UID STORE {uid} +FLAGS (\\Flagged $Important)", f"{base}/Drafts")
    assert store.returncode == 0, describe(store)
    assert re.search(rb"FLAGS \(([^)]*)\)", store.stdout), describe(store)
    ((_, flags, _),) = messages(ms, ms.alice, "Drafts")
    assert flags == {"\\Seen", "\\Flagged", "$Important"}
    create = curl(*tls, "-X", "CREATE Projects/2026", base + "/")
    assert create.returncode == 0, describe(create)
    listing = curl(*tls, "-X", 'LIST "" "Projects*"', base + "/")
    assert listing.stdout.decode().splitlines() == [
        '* LIST (\\HasChildren) "/" Projects',
        '* LIST (\\HasNoChildren) "/" Projects/2026',
    ]
    status = curl(*tls, "-X", "STATUS Drafts (MESSAGES UNSEEN)", base + "/")
    assert status.stdout == b"* STATUS Drafts (MESSAGES 1 UNSEEN 0)\r\n", describe(status)


def test_curl_imap_wrong_password(mailserver: Any) -> None:
    tls, hostport = curl_tls(mailserver, "imaps")
    proc = curl(*tls, f"imaps://{hostport}/", password="wrong")
    assert proc.returncode == 67, describe(proc)  # CURLE_LOGIN_DENIED


def test_curl_imap_url_parts_and_uidvalidity(mailserver: Any) -> None:
    """RFC 5092 IMAP URLs as curl implements them: SECTION (HEADER.FIELDS, TEXT), PARTIAL,
    MAILINDEX, and a UIDVALIDITY that must match the one SELECT reports."""
    ms = mailserver
    stored = fill(ms, ["first", "second"])
    tls, hostport = curl_tls(ms, "imaps")
    base = f"imaps://{hostport}/INBOX"
    got = curl(*tls, f"{base};UID=2;SECTION=HEADER.FIELDS%20(SUBJECT%20MESSAGE-ID)")
    assert got.stdout == b"Subject: second\r\nMessage-ID: <i2@elsewhere.test>\r\n\r\n", describe(
        got
    )
    got = curl(*tls, f"{base};UID=1;SECTION=TEXT;PARTIAL=5.10")
    assert got.stdout == b"body of message 1\r\n"[5:15], describe(got)
    got = curl(*tls, f"{base};MAILINDEX=2")
    assert got.stdout == stored[1], describe(got)
    uidvalidity = ms.run(ms.store.get_mailbox(ms.alice.id, "INBOX")).uidvalidity
    got = curl(*tls, f"{base};UIDVALIDITY={uidvalidity};UID=1")
    assert got.returncode == 0 and got.stdout == stored[0], describe(got)
    got = curl(*tls, f"{base};UIDVALIDITY={uidvalidity + 1};UID=1")
    assert got.returncode == 78, describe(got)  # curl: "Mailbox UIDVALIDITY has changed"


MIME = (
    b"From: carol@elsewhere.test\r\nTo: alice@example.test\r\nSubject: parts\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XX"\r\n\r\n'
    b"preamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"caf\xc3\xa9 first part\r\n"
    b"--XX\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=YY\r\n\r\n"
    b"--YY\r\nContent-Type: text/plain\r\n\r\ninner plain\r\n"
    b"--YY\r\nContent-Type: text/html\r\n\r\n<p>inner html</p>\r\n--YY--\r\n"
    b"\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nAAECAwQFBgcICQ==\r\n--XX--\r\nepilogue\r\n"
)
"""Nested MIME: text, a message/rfc822 holding multipart/alternative, base64 binary."""


def test_curl_imap_mime_sections(mailserver: Any) -> None:
    """BODY[section] for nested parts (RFC 3501 §6.4.5): part text, MIME headers, parts
    inside an encapsulated message, and BODYSTRUCTURE naming them consistently."""
    ms = mailserver
    ms.deliver(USER, MIME)
    tls, hostport = curl_tls(ms, "imaps")
    base = f"imaps://{hostport}/INBOX;UID=1;SECTION="
    expected = {
        "1": b"caf\xc3\xa9 first part",
        "1.MIME": b"Content-Type: text/plain; charset=utf-8\r\n\r\n",
        "2.HEADER": b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=YY\r\n\r\n",
        "2.1": b"inner plain",
        "2.2": b"<p>inner html</p>",
        "2.2.MIME": b"Content-Type: text/html\r\n\r\n",
        "3": b"AAECAwQFBgcICQ==",
        "3.MIME": b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n",
    }
    for section, want in expected.items():
        got = curl(*tls, base + section)
        assert got.returncode == 0, describe(got)
        assert got.stdout == want, section
    bs = curl(*tls, "-X", "UID FETCH 1 (BODYSTRUCTURE)", f"imaps://{hostport}/INBOX")
    assert bs.returncode == 0, describe(bs)
    # checked by hand against RFC 3501 §7.4.2: sizes and line counts of the part bodies
    # (the CRLF before a boundary belongs to the boundary), default 7BIT, the envelope of
    # the encapsulated message, extension data in order
    assert bs.stdout == (
        b'* 1 FETCH (UID 1 BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT"'
        b' 16 1 NIL NIL NIL NIL) ("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 175'
        b' (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' (("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 11 1 NIL NIL NIL NIL)'
        b' ("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 17 1 NIL NIL NIL NIL)'
        b' "ALTERNATIVE" ("BOUNDARY" "YY") NIL NIL NIL) 12 NIL NIL NIL NIL)'
        b' ("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 16 NIL NIL NIL NIL)'
        b' "MIXED" ("BOUNDARY" "XX") NIL NIL NIL))\r\n'
    )


def test_curl_smtputf8_round_trip(mailserver: Any, tmp_path: Path) -> None:
    """curl sends SMTPUTF8 (RFC 6531) for a UTF-8 sender; IMAP finds the message with a
    UTF-8 SEARCH and serves ENVELOPE with encoded words to a client that did not ENABLE
    UTF8=ACCEPT (RFC 6855 §3, RFC 6857 downgrade), while BODY[] keeps the raw bytes."""
    ms = mailserver
    data = (
        "From: José <josé@elsewhere.test>\r\nTo: alice@example.test\r\nSubject: olá\r\n\r\nçava\r\n"
    )
    path = tmp_path / "u.eml"
    path.write_bytes(data.encode())
    tls, hostport = curl_tls(ms, "smtp")
    sent = curl(*tls, "-v", "--mail-from", "josé@elsewhere.test", "--mail-rcpt", USER,
                "-T", str(path), f"smtp://{hostport}/client.test")  # fmt: skip
    assert sent.returncode == 0, describe(sent)
    assert b"SMTPUTF8" in sent.stderr.partition(b"> MAIL FROM")[2].partition(b"\n")[0]
    ((uid, _, text),) = messages(ms, ms.alice)
    trace_prefix(text, data.encode())
    tls, hostport = curl_tls(ms, "imaps")
    found = curl(*tls, "-X", 'UID SEARCH CHARSET UTF-8 SUBJECT "olá"', f"imaps://{hostport}/INBOX")
    assert found.stdout == b"* SEARCH %d\r\n" % uid, describe(found)
    env = curl(*tls, "-X", f"UID FETCH {uid} (ENVELOPE)", f"imaps://{hostport}/INBOX")
    assert env.returncode == 0, describe(env)
    assert all(b < 0x80 for b in env.stdout), env.stdout
    subject = re.search(rb'ENVELOPE \(NIL "([^"]*)"', env.stdout)
    assert subject, env.stdout
    decoded = email.header.make_header(email.header.decode_header(subject.group(1).decode()))
    assert str(decoded) == "olá"
    body = curl(*tls, f"imaps://{hostport}/INBOX;UID={uid}")
    assert body.stdout == text


# --------------------------------------------------------------------------- fetchmail


def poll(ms: Any, service: str = "imap", extra: str = "") -> str:
    tls = "sslproto tls1.2+" if service == "imap" else "ssl"
    return (
        f"poll localhost via {ms.host} with proto IMAP port {ms.ports[service]}\n"
        f'  user "{USER}" there with password "{PASSWORD}" is "{USER}" here\n'
        f"  {tls} {fetchmail_tls(ms)} {extra}"
    )


def test_fetchmail_imap_starttls_keep_marks_seen(mailserver: Any, tmp_path: Path) -> None:
    """fetchmail over IMAP+STARTTLS with ``keep``: every unseen message handed over intact
    and flagged \\Seen on the server; the next run finds nothing new (it fetches unseen
    messages: RFC 3501 §6.4.4 SEARCH UNSEEN)."""
    ms = mailserver
    stored = fill(ms, ["one", "two", "three"])
    ms.run(ms.store.set_flags(mailbox_id(ms, "INBOX"), [2], frozenset({"\\Seen"}), FlagMode.ADD))
    proc, got = fetchmail(tmp_path, poll(ms, extra="keep"))
    assert proc.returncode == 0, describe(proc)
    assert b"STARTTLS" in proc.stdout + proc.stderr
    assert sorted(strip_fetchmail(m) for m in got) == sorted(
        as_fetched(t) for t in (stored[0], stored[2])
    )
    assert [("\\Seen" in f) for _, f, _ in messages(ms, ms.alice)] == [True, True, True]
    proc, got = fetchmail(tmp_path, poll(ms, extra="keep"))
    assert proc.returncode == 1, describe(proc)  # no new mail
    assert got == []


def test_fetchmail_imaps_deletes_and_expunges(mailserver: Any, tmp_path: Path) -> None:
    """fetchmail over IMAPS without ``keep``: downloaded, then \\Deleted and expunged."""
    ms = mailserver
    stored = fill(ms, ["one", "two"])
    proc, got = fetchmail(tmp_path, poll(ms, "imaps", extra="fetchall"))
    assert proc.returncode == 0, describe(proc)
    assert sorted(strip_fetchmail(m) for m in got) == sorted(as_fetched(t) for t in stored)
    assert texts(ms, ms.alice) == []


def test_fetchmail_imap_idle_sees_smtp_delivery(mailserver: Any, tmp_path: Path) -> None:
    """fetchmail in daemon mode with ``idle`` (RFC 2177) picks up a message delivered over
    SMTP while it idles, within seconds, without polling again."""
    binary = need("fetchmail")
    ms = mailserver
    home = tmp_path / "idle"
    out = home / "out"
    out.mkdir(parents=True)
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no syslog\n" + poll(ms, extra="keep idle") + "\n"
        f"  mda \"/bin/sh -c 'cat > $(mktemp {out}/msg.XXXXXXXX)'\"\n"
    )
    rc.chmod(0o600)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "FETCHMAILHOME": str(home)}
    proc = subprocess.Popen(
        [binary, "-f", str(rc), "--nodetach", "-d", "300", "-v", "--pidfile", str(home / "pid"),
         "--idfile", str(home / "ids")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        log = b""
        # wait until fetchmail idles (after its first, empty, poll)
        deadline = time.monotonic() + 20
        assert proc.stdout is not None
        while b"IMAP< + " not in log and (left := deadline - time.monotonic()) > 0:
            if select.select([proc.stdout], [], [], left)[0]:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break  # fetchmail exited
                log += chunk
        assert b"IDLE" in log, log.decode(errors="replace")
        with smtplib.SMTP(ms.host, ms.ports["smtp"], timeout=10) as smtp:
            smtp.sendmail("carol@elsewhere.test", [USER], sample(7, "while idling"))
        deadline = time.monotonic() + 10
        while not list(out.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        (delivered,) = [p.read_bytes() for p in out.iterdir()]
        assert b"Subject: while idling\n" in delivered
        assert strip_fetchmail(delivered) == as_fetched(texts(ms, ms.alice)[0])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


# --------------------------------------------------------------------------- getmail6


def retriever(ms: Any, mailboxes: str = '("INBOX",)', extra: str = "") -> str:
    return (
        f"type = SimpleIMAPSSLRetriever\nserver = {ms.host}\nport = {ms.ports['imaps']}\n"
        f"username = {USER}\npassword = {PASSWORD}\nmailboxes = {mailboxes}\n"
        f"ca_certs = {ms.cafile}\nssl_cert_hostname = localhost\nrecord_mailbox = false\n"
        f"{extra}"
    )


def test_getmail_imaps_peek_then_delete(mailserver: Any, tmp_path: Path) -> None:
    """getmail6 over IMAPS from two folders: with ``use_peek`` and ``delete = false`` the
    messages stay unseen on the server and are fetched once; with ``delete = true`` they
    are removed from the server."""
    ms = mailserver
    inbox = fill(ms, ["one", "two"])
    archived = b"Return-Path: <dave@elsewhere.test>\r\nSubject: old\r\n\r\nold\r\n"
    ms.run(ms.store.append(mailbox_id(ms, "Archive"), prepare(archived)))
    both = retriever(ms, '("INBOX", "Archive")')
    proc, got = getmail(tmp_path, both, "read_all = false\ndelete = false\n")
    assert proc.returncode == 0, describe(proc)
    assert got == [as_fetched(t) for t in [*inbox, archived]]
    assert all("\\Seen" not in f for _, f, _ in messages(ms, ms.alice))
    proc, got = getmail(tmp_path, both, "read_all = false\ndelete = false\n")
    assert proc.returncode == 0, describe(proc)
    assert got == []
    proc, got = getmail(tmp_path, both, "read_all = true\ndelete = true\n")
    assert proc.returncode == 0, describe(proc)
    assert len(got) == 3
    assert texts(ms, ms.alice) == [] and texts(ms, ms.alice, "Archive") == []


def test_getmail_move_on_delete(mailserver: Any, tmp_path: Path) -> None:
    """getmail6 with ``move_on_delete = Trash``: each message retrieved is COPYed to Trash
    and removed from INBOX; ``use_peek = false`` leaves it \\Seen."""
    ms = mailserver
    stored = fill(ms, ["one", "two"])
    conf = retriever(ms, extra="move_on_delete = Trash\nuse_peek = false\n")
    proc, got = getmail(tmp_path, conf, "read_all = true\ndelete = true\n")
    assert proc.returncode == 0, describe(proc)
    assert got == [as_fetched(t) for t in stored]
    assert texts(ms, ms.alice) == []
    trash = messages(ms, ms.alice, "Trash")
    assert [t for _, _, t in trash] == stored
    assert all("\\Seen" in f and "\\Deleted" not in f for _, f, _ in trash)
