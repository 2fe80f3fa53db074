"""mbsync (isync 1.4) against correo: a two-way sync of alice's folders with a local
Maildir, over IMAPS and STARTTLS, in bulk, with POP3 deleting under it, a recreated
mailbox and a size limit.

RFC 3501 (IMAP4rev1: UID FETCH/STORE, APPEND with a date, EXPUNGE, LIST, §2.3.1.1
UIDVALIDITY, §5.1.3 modified UTF-7 names), RFC 4315 (UIDPLUS: APPENDUID), RFC 2920-style
command pipelining on the client side.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from test_real_clients import (
    PASSWORD,
    USER,
    as_fetched,
    describe,
    fetchmail,
    messages,
    need,
    run,
    texts,
)
from test_real_clients_imap import fill, mailbox_id, poll, sample

from correo.mail.message import prepare
from correo.store.base import FlagMode


def mbsync_config(ms: Any, local: Path) -> str:
    """A channel syncing every folder both ways, with creation, deletion and expunge. The
    certificate is verified against ``CertificateFile`` (isync trusts a server certificate
    listed there whatever the host name, here 127.0.0.1)."""
    return (
        f"IMAPAccount alice\nHost {ms.host}\nPort {ms.ports['imaps']}\nUser {USER}\n"
        f"Pass {PASSWORD}\nSSLType IMAPS\nCertificateFile {ms.cafile}\nTimeout 20\n\n"
        "IMAPStore remote\nAccount alice\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel alice\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\n"
        "Remove Both\nExpunge Both\nSyncState *\nCopyArrivalDate yes\n"
    )


def without_tuid(text: bytes) -> bytes:
    """isync 1.4 adds an ``X-TUID:`` field to every message it copies (to find it again
    if the target returned no UID), even when APPENDUID (RFC 4315) gave one."""
    return re.sub(rb"(?m)^X-TUID: [^\r\n]*\r?\n", b"", text, count=1)


def mbsync(config: Path) -> subprocess.CompletedProcess[bytes]:
    proc = run([need("mbsync"), "-c", config, "-V", "-a"])
    assert proc.returncode == 0, describe(proc)
    return proc


def maildir(folder: Path) -> dict[str, tuple[str, bytes]]:
    """Message-ID -> (Maildir flags, text) of the messages in a local folder."""
    out = {}
    for p in [*(folder / "new").iterdir(), *(folder / "cur").iterdir()]:
        text = p.read_bytes()
        m = re.search(rb"^Message-ID: (<[^>]+>)", text, re.MULTILINE | re.IGNORECASE)
        assert m, text[:300]
        out[m.group(1).decode()] = (p.name.partition(":2,")[2], text)
    return out


def set_local_flags(folder: Path, message_id: str, flags: str) -> None:
    for p in [*(folder / "new").iterdir(), *(folder / "cur").iterdir()]:
        if f"Message-ID: {message_id}".encode() in p.read_bytes():
            p.rename(folder / "cur" / (p.name.partition(":2,")[0] + ":2," + flags))
            return
    raise AssertionError(message_id)


def test_mbsync_two_way(mailserver: Any, tmp_path: Path) -> None:
    """mbsync mirrors the server: folders and messages down (bytes intact, line ends
    converted), a local flag change up (STORE), a local new message and folder up
    (CREATE, APPEND with UIDPLUS), a server-side expunge down, a local delete up."""
    ms = mailserver
    stored = fill(ms, ["one", "two", "three"])
    ms.run(ms.store.create_mailbox(ms.alice.id, "Projects/2026"))
    ms.run(ms.store.create_mailbox(ms.alice.id, "Boîte reçue"))
    old = sample(9, "archived").replace(b"<i9@", b"<old@")
    ms.run(ms.store.append(mailbox_id(ms, "Archive"), prepare(old), internaldate=1_600_000_000))
    local = tmp_path / "Mail"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(mbsync_config(ms, local))

    mbsync(config)
    # isync 1.4 keeps IMAP's modified UTF-7 names (RFC 3501 §5.1.3) as local folder names
    names = ("INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive", "Projects/2026")
    for name in (*names, "Bo&AO4-te re&AOc-ue"):
        assert (local / name / "cur").is_dir(), name
    inbox = maildir(local / "INBOX")
    assert sorted(inbox) == ["<i1@elsewhere.test>", "<i2@elsewhere.test>", "<i3@elsewhere.test>"]
    for n, text in enumerate(stored, 1):
        assert without_tuid(inbox[f"<i{n}@elsewhere.test>"][1]) == as_fetched(text)
    # CopyArrivalDate: the INTERNALDATE became the local file's mtime
    (archived,) = [*(local / "Archive" / "new").iterdir(), *(local / "Archive" / "cur").iterdir()]
    assert archived.stat().st_mtime == 1_600_000_000

    # local flag change -> server
    set_local_flags(local / "INBOX", "<i2@elsewhere.test>", "FS")
    # local new folders and a message -> server
    new_folder = local / "Projects" / "2027"
    for sub in ("cur", "new", "tmp"):
        (new_folder / sub).mkdir(parents=True)
        (local / "Caf&AOk-" / sub).mkdir(parents=True)
    note = b"From: alice@example.test\nSubject: plan\nMessage-ID: <plan@example.test>\n\nplan\n"
    (new_folder / "new" / "1000.note.local").write_bytes(note)
    os.utime(new_folder / "new" / "1000.note.local", (1_700_000_123, 1_700_000_123))
    mbsync(config)
    # CopyArrivalDate: the file's mtime became the APPEND date-time (RFC 3501 §6.3.11)
    infos = ms.run(ms.store.message_infos(mailbox_id(ms, "Projects/2027")))
    assert [i.internaldate for i in infos] == [1_700_000_123]
    assert ms.run(ms.store.get_mailbox(ms.alice.id, "Café")) is not None
    flags = {uid: f for uid, f, _ in messages(ms, ms.alice)}
    assert flags[2] >= {"\\Flagged", "\\Seen"} and "\\Flagged" not in flags[1] | flags[3]
    (uploaded,) = texts(ms, ms.alice, "Projects/2027")
    assert without_tuid(uploaded) == note.replace(b"\n", b"\r\n")

    # server-side delete -> local copy goes
    ms.run(ms.store.set_flags(mailbox_id(ms, "INBOX"), [1], frozenset({"\\Deleted"}), FlagMode.ADD))
    ms.run(ms.store.expunge(mailbox_id(ms, "INBOX")))
    # local delete (mark trashed) -> expunged on the server
    set_local_flags(local / "INBOX", "<i3@elsewhere.test>", "ST")
    mbsync(config)
    assert sorted(maildir(local / "INBOX")) == ["<i2@elsewhere.test>"]
    assert texts(ms, ms.alice) == [stored[1]]

    # nothing left to do: a further sync changes nothing on either side
    before = (texts(ms, ms.alice), maildir(local / "INBOX"))
    mbsync(config)
    assert (texts(ms, ms.alice), maildir(local / "INBOX")) == before


def test_mbsync_starttls_bulk(mailserver: Any, tmp_path: Path) -> None:
    """mbsync over STARTTLS with 250 messages: the pipelined UID FETCHes bring every
    message down; 100 local flag changes and 50 local deletions go up as pipelined UID
    STOREs and one EXPUNGE; the server ends with exactly the expected state."""
    ms = mailserver
    for n in range(250):
        ms.deliver(USER, sample(n) + b"padding line\r\n" * (n % 40))
    local = tmp_path / "Mail"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    text = mbsync_config(ms, local).replace(f"Port {ms.ports['imaps']}", f"Port {ms.ports['imap']}")
    config.write_text(text.replace("SSLType IMAPS", "SSLType STARTTLS"))
    mbsync(config)
    inbox = maildir(local / "INBOX")
    assert len(inbox) == 250
    for n in range(250):
        assert f"<i{n}@elsewhere.test>" in inbox
    for n in range(100):
        set_local_flags(local / "INBOX", f"<i{n}@elsewhere.test>", "FS")
    for n in range(100, 150):
        set_local_flags(local / "INBOX", f"<i{n}@elsewhere.test>", "ST")
    mbsync(config)
    state = messages(ms, ms.alice)
    assert len(state) == 200
    flagged = [
        m.group(1).decode()
        for _, flags, text in state
        if "\\Flagged" in flags and (m := re.search(rb"Message-ID: <i(\d+)@", text))
    ]
    assert sorted(flagged, key=int) == [str(n) for n in range(100)]
    assert sum("\\Seen" in flags for _, flags, _ in state) == 100
    assert len(maildir(local / "INBOX")) == 200


def test_mbsync_sees_pop3_deletion(mailserver: Any, tmp_path: Path) -> None:
    """One mailbox, two protocols: messages fetchmail deletes over POP3 (RFC 1939 §6) are
    expunged for IMAP too, and mbsync removes its local copies on the next sync."""
    ms = mailserver
    fill(ms, ["one", "two", "three"])
    local = tmp_path / "Mail"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(mbsync_config(ms, local))
    mbsync(config)
    assert len(maildir(local / "INBOX")) == 3
    rc = poll(ms, "imaps").replace("proto IMAP", "proto POP3")
    rc = rc.replace(f"port {ms.ports['imaps']}", f"port {ms.ports['pop3s']}")
    proc, got = fetchmail(tmp_path, rc)
    assert proc.returncode == 0, describe(proc)
    assert len(got) == 3
    mbsync(config)
    assert maildir(local / "INBOX") == {}


def test_mbsync_detects_recreated_mailbox(mailserver: Any, tmp_path: Path) -> None:
    """A mailbox deleted and created again under the same name gets a new UIDVALIDITY
    (RFC 3501 §2.3.1.1), so mbsync refuses to mix up the old and the new UIDs."""
    ms = mailserver
    ms.run(ms.store.create_mailbox(ms.alice.id, "Lists"))
    ms.run(ms.store.append(mailbox_id(ms, "Lists"), prepare(sample(1, "old list mail"))))
    local = tmp_path / "Mail"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(mbsync_config(ms, local).replace("Patterns *", "Patterns Lists"))
    mbsync(config)
    assert len(maildir(local / "Lists")) == 1
    ms.run(ms.store.delete_mailbox(ms.alice.id, "Lists"))
    ms.run(ms.store.create_mailbox(ms.alice.id, "Lists"))
    ms.run(ms.store.append(mailbox_id(ms, "Lists"), prepare(sample(2, "new list mail"))))
    proc = run([need("mbsync"), "-c", config, "-a"])
    assert proc.returncode != 0, describe(proc)
    assert b"UIDVALIDITY" in proc.stdout + proc.stderr, describe(proc)


def test_mbsync_max_size(mailserver: Any, tmp_path: Path) -> None:
    """``MaxSize`` relies on RFC822.SIZE (RFC 3501 §7.4.2) being the real size: the big
    message comes down as a placeholder giving its size, the small ones whole; once
    flagged on the server, the real message replaces the placeholder."""
    ms = mailserver
    ms.deliver(USER, sample(1))
    ms.deliver(USER, sample(2) + (b"x" * 70 + b"\r\n") * 300)  # 21 KB
    ms.deliver(USER, sample(3))
    local = tmp_path / "Mail"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(mbsync_config(ms, local).replace("Patterns *", "Patterns INBOX\nMaxSize 10k"))
    mbsync(config)
    inbox = maildir(local / "INBOX")
    assert sorted(inbox) == ["<i1@elsewhere.test>", "<i2@elsewhere.test>", "<i3@elsewhere.test>"]
    _, placeholder = inbox["<i2@elsewhere.test>"]
    assert b"Subject: [placeholder] message 2\n" in placeholder
    assert b"Having a size of 21KiB" in placeholder  # from RFC822.SIZE
    # flagged on the server: the next sync replaces the placeholder with the real message
    ms.run(ms.store.set_flags(mailbox_id(ms, "INBOX"), [2], frozenset({"\\Flagged"}), FlagMode.ADD))
    mbsync(config)
    flags, full = maildir(local / "INBOX")["<i2@elsewhere.test>"]
    assert without_tuid(full) == as_fetched(texts(ms, ms.alice)[1]) and "F" in flags
