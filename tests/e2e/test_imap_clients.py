"""IMAP with the ``imapclient`` package and curl: several clients on one mailbox, IDLE,
flags and expunges seen across sessions, and the acceptance scenario of issue 6."""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from imapclient import IMAPClient

MSG = (
    b"From: Bob <bob@example.test>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= report\r\n"
    b"Date: Mon, 2 Feb 2026 10:00:00 +0000\r\n"
    b"Message-ID: <r1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"numbers attached\r\n"
    b"--b1\r\n"
    b'Content-Type: text/csv; name="n.csv"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"MSwyLDMK\r\n"
    b"--b1--\r\n"
)


def client(server: Any, tls: str = "starttls", user: str = "alice@example.test") -> IMAPClient:
    if tls == "implicit":
        c = IMAPClient(
            server.host,
            port=server.ports["imaps"],
            ssl=True,
            ssl_context=server.client_tls(),
            timeout=10,
        )
    else:
        c = IMAPClient(server.host, port=server.ports["imap"], ssl=False, timeout=10)
        if tls == "starttls":
            c.starttls(server.client_tls())
    c.login(user, "secret")
    return c


@pytest.fixture
def two(mailserver: Any) -> Iterator[tuple[IMAPClient, IMAPClient]]:
    a, b = client(mailserver), client(mailserver, tls="implicit")
    yield a, b
    for c in (a, b):
        try:
            c.logout()
        except Exception:
            pass


def test_folders_and_special_use(mailserver: Any) -> None:
    c = client(mailserver)
    folders = {name: set(flags) for flags, _sep, name in c.list_folders()}
    assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= set(folders)
    assert b"\\Sent" in folders["Sent"] and b"\\Junk" in folders["Junk"]
    assert b"\\Drafts" in folders["Drafts"] and b"\\Archive" in folders["Archive"]
    assert c.find_special_folder(b"\\Trash") == "Trash"
    c.create_folder("Projects/2026")
    assert c.folder_exists("Projects") and c.folder_exists("Projects/2026")
    c._imap._simple_command("CREATE", "Outbox2", "(USE (\\Sent))")
    assert b"\\Sent" in dict((n, f) for f, _s, n in c.list_folders("", "Outbox2"))["Outbox2"]
    assert c.namespace().personal == (("", "/"),)
    assert c.id_({"name": "pytest"})[0][:2] == (b"name", b"correo")
    c.subscribe_folder("Projects/2026")
    assert [n for _f, _s, n in c.list_sub_folders("", "Projects/%")] == ["Projects/2026"]
    assert c.folder_status("INBOX", ["MESSAGES", "UIDNEXT"])[b"MESSAGES"] == 0
    c.rename_folder("Projects", "Work")
    assert c.folder_exists("Work/2026") and not c.folder_exists("Projects/2026")
    c.delete_folder("Work/2026")
    c.logout()


def test_fetch_every_item(mailserver: Any) -> None:
    mailserver.deliver("alice@example.test", MSG)
    c = client(mailserver)
    c.select_folder("INBOX")
    (uid,) = c.search("ALL")
    r = c.fetch(
        [uid],
        [
            "UID",
            "FLAGS",
            "INTERNALDATE",
            "RFC822.SIZE",
            "ENVELOPE",
            "BODY",
            "BODYSTRUCTURE",
            "BODY.PEEK[HEADER]",
            "BODY.PEEK[1]",
            "BODY.PEEK[2.MIME]",
            "BODY.PEEK[TEXT]<0.10>",
            "RFC822.HEADER",
        ],
    )[uid]
    env = r[b"ENVELOPE"]
    assert env.subject == b"=?utf-8?q?caf=C3=A9?= report"
    assert env.from_[0].mailbox == b"bob" and env.from_[0].host == b"example.test"
    assert env.message_id == b"<r1@example.test>"
    assert r[b"RFC822.SIZE"] >= len(MSG)
    assert r[b"BODY[1]"] == b"numbers attached"
    assert r[b"BODY[2.MIME]"].startswith(b"Content-Type: text/csv")
    assert r[b"BODY[TEXT]<0>"] == b"--b1\r\nCont"
    assert r[b"BODY[HEADER]"].endswith(b"\r\n\r\n") and r[b"BODY[HEADER]"] == r[b"RFC822.HEADER"]
    bs = r[b"BODYSTRUCTURE"]
    assert bs.is_multipart and bs[1].lower() == b"mixed"
    assert b"\\Seen" not in r[b"FLAGS"]
    r = c.fetch([uid], ["BODY[2]"])[uid]
    assert r[b"BODY[2]"] == b"MSwyLDMK"
    assert b"\\Seen" in c.get_flags([uid])[uid]
    c.logout()


def test_flags_and_expunges_seen_by_the_other_client(
    two: tuple[IMAPClient, IMAPClient], mailserver: Any
) -> None:
    a, b = two
    for n in range(3):
        mailserver.deliver("alice@example.test", MSG.replace(b"r1@", b"r%d@" % (n + 10)))
    a.select_folder("INBOX")
    b.select_folder("INBOX")
    uids = a.search("ALL")
    a.add_flags(uids[0], [b"\\Flagged"])
    resp = b.noop()[1]
    assert (1, b"FETCH", (b"UID", uids[0], b"FLAGS", (b"\\Flagged",))) in resp or any(
        r[1] == b"FETCH" and b"\\Flagged" in r[2][-1] for r in resp
    ), resp
    a.delete_messages(uids[1])
    a.expunge()
    resp = b.noop()[1]
    assert (2, b"EXPUNGE") in resp
    # b's FETCH must not shift numbers under it (RFC 3501 §7.4.1) ...
    a.delete_messages(uids[0])
    a.expunge()
    b.use_uid = False
    fetched = b.fetch([1, 2], ["UID"])
    b.use_uid = True
    assert fetched[2][b"UID"] == uids[2]  # still number 2: no EXPUNGE was sent
    # ... the expunge is reported by a command that allows it
    assert (1, b"EXPUNGE") in b.noop()[1]
    assert b.search("ALL") == [uids[2]]
    assert a.search("ALL") == [uids[2]]


def test_idle_sees_delivery_within_a_second(
    two: tuple[IMAPClient, IMAPClient], mailserver: Any
) -> None:
    a, b = two
    a.select_folder("INBOX")
    a.idle()
    t0 = time.monotonic()
    mailserver.deliver("alice@example.test", MSG)
    got = a.idle_check(timeout=5)
    elapsed = time.monotonic() - t0
    a.idle_done()
    assert (1, b"EXISTS") in got and elapsed < 1.0
    # flag changes and expunges by another client arrive during IDLE too
    b.select_folder("INBOX")
    a.idle()
    b.add_flags(b.search("ALL"), [b"\\Seen"])
    got = a.idle_check(timeout=5)
    assert any(r[1] == b"FETCH" for r in got), got
    b.delete_messages(b.search("ALL"))
    b.expunge()
    got = []
    deadline = time.monotonic() + 5
    while (1, b"EXPUNGE") not in got and time.monotonic() < deadline:
        got += a.idle_check(timeout=1)
    a.idle_done()
    assert (1, b"EXPUNGE") in got


def test_idle_sees_delivery_over_smtp(mailserver: Any) -> None:
    a = client(mailserver)
    a.select_folder("INBOX")
    a.idle()
    with smtplib.SMTP(mailserver.host, mailserver.ports["smtp"], timeout=10) as s:
        s.sendmail("bob@elsewhere.test", ["alice@example.test"], MSG)
    got = a.idle_check(timeout=5)
    a.idle_done()
    assert (1, b"EXISTS") in got
    a.logout()


def test_append_copy_move_uidplus(mailserver: Any) -> None:
    c = client(mailserver)
    resp = c.append("INBOX", MSG, flags=[b"\\Seen", b"$Label1"])
    assert b"APPENDUID" in resp
    c.select_folder("INBOX")
    (uid,) = c.search("ALL")
    assert set(c.get_flags([uid])[uid]) - {b"\\Recent"} == {b"\\Seen", b"$Label1"}
    c.copy([uid], "Archive")
    c.move([uid], "Trash")
    assert c.search("ALL") == []
    assert c.folder_status("Trash", ["MESSAGES"])[b"MESSAGES"] == 1
    assert c.folder_status("Archive", ["MESSAGES"])[b"MESSAGES"] == 1
    c.select_folder("Trash")
    assert c.search(["KEYWORD", "$Label1"]) != []
    c.unselect_folder()
    c.logout()


def test_quota_on_append_and_copy(mailserver: Any) -> None:
    mailserver.add_user("small@example.test", "secret", quota=len(MSG) + 100)
    c = client(mailserver, user="small@example.test")
    c.append("INBOX", MSG)
    with pytest.raises(Exception, match="OVERQUOTA"):
        c.append("INBOX", MSG)
    c.select_folder("INBOX")
    with pytest.raises(Exception, match="OVERQUOTA"):
        c.copy(c.search("ALL"), "Archive")
    c.logout()


def test_acceptance_scenario(mailserver: Any) -> None:
    """Issue 6 acceptance, as a new user would try it."""
    with smtplib.SMTP(mailserver.host, mailserver.ports["smtp"], timeout=10) as s:
        for n in range(3):
            s.sendmail(
                "carol@elsewhere.test", ["alice@example.test"], MSG.replace(b"r1@", b"acc%d@" % n)
            )
    a = client(mailserver, tls="starttls")
    b = client(mailserver, tls="implicit")
    names = {name: flags for flags, _s, name in a.list_folders()}
    for name, use in (
        ("Sent", b"\\Sent"),
        ("Drafts", b"\\Drafts"),
        ("Trash", b"\\Trash"),
        ("Junk", b"\\Junk"),
        ("Archive", b"\\Archive"),
    ):
        assert use in names[name]
    assert "INBOX" in names
    a.create_folder("Projects/2026")
    a.select_folder("INBOX")
    b.select_folder("INBOX")
    uids = a.search("ALL")
    assert len(uids) == 3
    a.move([uids[0]], "Projects/2026")
    a.add_flags([uids[1]], [b"\\Flagged"])
    resp = b.noop()[1]
    assert (1, b"EXPUNGE") in resp
    assert b.search("FLAGGED") == [uids[1]]
    b.select_folder("Projects/2026")
    assert len(b.search("ALL")) == 1
    b.select_folder("INBOX")
    a.add_flags([uids[2]], [b"\\Deleted"])
    a.expunge()
    assert (2, b"EXPUNGE") in b.noop()[1]
    assert b.search("ALL") == [uids[1]]
    inbox = mailserver.run(mailserver.store.get_mailbox(mailserver.alice.id, "INBOX"))
    infos = mailserver.run(mailserver.store.message_infos(inbox.id))
    assert [i.uid for i in infos] == [uids[1]]
    b.idle()
    mailserver.deliver("alice@example.test", MSG)
    got = b.idle_check(timeout=1)
    b.idle_done()
    assert any(r[1] == b"EXISTS" for r in got)
    a.logout()
    b.logout()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl(mailserver: Any) -> None:
    mailserver.deliver("alice@example.test", MSG)
    base = f"imap://{mailserver.host}:{mailserver.ports['imap']}"
    out = subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "10",
            "-u",
            "alice@example.test:secret",
            f"{base}/INBOX;UID=1",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert out.replace(b"\r\n", b"\n") == MSG.replace(b"\r\n", b"\n")
    out = subprocess.run(
        ["curl", "-s", "--max-time", "10", "-u", "alice@example.test:secret", f"{base}/"],
        capture_output=True,
        check=True,
    ).stdout
    assert b"INBOX" in out and b"Sent" in out
    out = subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "10",
            "-u",
            "alice@example.test:secret",
            "--ssl-reqd",
            "-k",
            f"{base}/INBOX",
            "-X",
            "SEARCH ALL",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert b"* SEARCH 1" in out
