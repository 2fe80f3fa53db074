"""POP3 with real clients: curl ``pop3://`` (STLS) and ``pop3s://``, fetchmail (STLS,
``keep`` versus delete, UIDL bookkeeping), getmail6 (plain and POP3S) into a Maildir, and
mpop (pipelining, AUTH PLAIN).

RFC 1939 (POP3: LIST, RETR, UIDL, TOP, DELE, UPDATE on QUIT), RFC 2595 §4 (STLS),
RFC 8314 (implicit TLS), RFC 2449 (CAPA).
"""

from __future__ import annotations

import poplib
import re
from pathlib import Path
from typing import Any

from test_real_clients import (
    PASSWORD,
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
    run,
    strip_fetchmail,
    texts,
)


def sample(n: int, body: bytes = b"") -> bytes:
    """A message as an MTA would store it, Return-Path first (getmail and fetchmail take
    the envelope sender from it and would otherwise invent one)."""
    return (
        "Return-Path: <carol@elsewhere.test>\r\nFrom: carol@elsewhere.test\r\n"
        f"To: {USER}\r\nSubject: message {n}\r\n"
        f"Message-ID: <m{n}@elsewhere.test>\r\n\r\nbody of message {n}\r\n"
    ).encode() + body


def fill(ms: Any, count: int = 3) -> list[bytes]:
    """Deliver ``count`` messages to alice (the second one large, with dot-leading lines);
    return their full texts as stored."""
    for n in range(1, count + 1):
        extra = b"".join(b".%d dotted line\r\n" % i for i in range(4000)) if n == 2 else b""
        ms.deliver(USER, sample(n, extra))
    stored = texts(ms, ms.alice)
    assert len(stored) == count
    return stored


# --------------------------------------------------------------------------- curl


def test_curl_pop3_stls_list_uidl_retr(mailserver: Any) -> None:
    """Over STLS (required): LIST gives each message's size as transmitted, UIDL unique
    ids, RETR the exact bytes (dot-stuffing undone by the client)."""
    ms = mailserver
    stored = fill(ms)
    tls, hostport = curl_tls(ms, "pop3")
    base = f"pop3://{hostport}"
    listing = curl(*tls, "--ssl-reqd", base + "/")
    assert listing.returncode == 0, describe(listing)
    assert listing.stdout == b"".join(b"%d %d\r\n" % (i, len(t)) for i, t in enumerate(stored, 1))
    uidl = curl(*tls, "--ssl-reqd", "-X", "UIDL", base + "/")
    assert uidl.returncode == 0, describe(uidl)
    lines = uidl.stdout.split(b"\r\n")[:-1]
    assert [line.split()[0] for line in lines] == [b"1", b"2", b"3"]
    assert len({line.split()[1] for line in lines}) == 3
    for n, text in enumerate(stored, 1):
        retr = curl(*tls, "--ssl-reqd", f"{base}/{n}")
        assert retr.returncode == 0, describe(retr)
        assert retr.stdout == text
    top = curl(*tls, "--ssl-reqd", "-X", "TOP 3 0", base + "/")
    assert top.returncode == 0, describe(top)
    assert top.stdout == stored[2][: stored[2].index(b"\r\n\r\n") + 4]
    assert len(texts(ms, ms.alice)) == 3  # reading deletes nothing


def test_curl_pop3s_dele(mailserver: Any) -> None:
    """POP3S: DELE then QUIT (curl ends each session with QUIT) removes exactly that
    message from the store (RFC 1939 §6 UPDATE state); the others keep their UIDLs."""
    ms = mailserver
    stored = fill(ms)
    tls, hostport = curl_tls(ms, "pop3s")
    before = curl(*tls, "-X", "UIDL", f"pop3s://{hostport}/")
    dele = curl(*tls, "-X", "DELE", "-I", f"pop3s://{hostport}/2")
    assert dele.returncode == 0, describe(dele)
    assert texts(ms, ms.alice) == [stored[0], stored[2]]
    after = curl(*tls, "-X", "UIDL", f"pop3s://{hostport}/")
    old = [line.split()[1] for line in before.stdout.split(b"\r\n")[:-1]]
    new = [line.split()[1] for line in after.stdout.split(b"\r\n")[:-1]]
    assert new == [old[0], old[2]]


def test_curl_pop3_wrong_password(mailserver: Any) -> None:
    tls, hostport = curl_tls(mailserver, "pop3s")
    proc = curl(*tls, f"pop3s://{hostport}/", password="wrong")
    assert proc.returncode == 67, describe(proc)  # CURLE_LOGIN_DENIED


# --------------------------------------------------------------------------- fetchmail


def poll(ms: Any, service: str = "pop3", extra: str = "", server: str = "") -> str:
    """A fetchmail poll statement for alice; ``server`` options go before ``user``."""
    proto = "IMAP" if service.startswith("imap") else "POP3"
    tls = "sslproto tls1.2+" if service in ("pop3", "imap") else "ssl"
    return (
        f"poll localhost via {ms.host} with proto {proto} port {ms.ports[service]} {server}\n"
        f'  user "{USER}" there with password "{PASSWORD}" is "{USER}" here\n'
        f"  {tls} {fetchmail_tls(ms)} {extra}"
    )


def test_fetchmail_pop3_stls_keep_and_uidl(mailserver: Any, tmp_path: Path) -> None:
    """fetchmail over STLS with ``keep`` and ``uidl``: the first run hands every message to
    the MDA unchanged, the server keeps them; a second run fetches nothing; after one more
    delivery, the third run fetches exactly the new message (RFC 1939 §7 UIDL)."""
    ms = mailserver
    stored = fill(ms)
    rc = poll(ms, extra="keep", server="uidl")
    proc, got = fetchmail(tmp_path, rc)
    assert proc.returncode == 0, describe(proc)
    assert b"STLS" in proc.stderr + proc.stdout
    assert sorted(strip_fetchmail(m) for m in got) == sorted(as_fetched(t) for t in stored)
    assert texts(ms, ms.alice) == stored

    proc, got = fetchmail(tmp_path, rc)
    assert proc.returncode == 1, describe(proc)  # fetchmail: no new mail
    assert got == []

    ms.deliver(USER, sample(4))
    proc, got = fetchmail(tmp_path, rc)
    assert proc.returncode == 0, describe(proc)
    (new,) = texts(ms, ms.alice)[3:]
    assert [strip_fetchmail(m) for m in got] == [as_fetched(new)]
    assert len(texts(ms, ms.alice)) == 4


def test_fetchmail_pop3_default_deletes(mailserver: Any, tmp_path: Path) -> None:
    """fetchmail's default (no ``keep``): everything delivered to the MDA, then deleted on
    the server at QUIT; a second run finds an empty maildrop."""
    ms = mailserver
    stored = fill(ms)
    proc, got = fetchmail(tmp_path, poll(ms))
    assert proc.returncode == 0, describe(proc)
    assert sorted(strip_fetchmail(m) for m in got) == sorted(as_fetched(t) for t in stored)
    assert texts(ms, ms.alice) == []
    proc, got = fetchmail(tmp_path, poll(ms))
    assert proc.returncode == 1, describe(proc)
    assert got == []


def test_fetchmail_pop3s_fetchall_keep(mailserver: Any, tmp_path: Path) -> None:
    """POP3S (implicit TLS) with ``fetchall keep``: messages seen in an earlier run are
    fetched again, and nothing is deleted."""
    ms = mailserver
    stored = fill(ms, 2)
    for _ in range(2):
        proc, got = fetchmail(tmp_path, poll(ms, "pop3s", extra="keep fetchall"))
        assert proc.returncode == 0, describe(proc)
        assert sorted(strip_fetchmail(m) for m in got) == sorted(as_fetched(t) for t in stored)
    assert texts(ms, ms.alice) == stored


# --------------------------------------------------------------------------- getmail6


def test_getmail_pop3_to_maildir(mailserver: Any, tmp_path: Path) -> None:
    """getmail6 over POP3 (plaintext allowed on loopback), keeping mail on the server and
    remembering what it has seen by UIDL (``read_all = false``)."""
    ms = mailserver
    stored = fill(ms)
    retriever = (
        f"type = SimplePOP3Retriever\nserver = {ms.host}\nport = {ms.ports['pop3']}\n"
        f"username = {USER}\npassword = {PASSWORD}\n"
    )
    options = "read_all = false\ndelete = false\n"
    proc, got = getmail(tmp_path, retriever, options)
    assert proc.returncode == 0, describe(proc)
    assert got == [as_fetched(t) for t in stored]
    assert texts(ms, ms.alice) == stored
    proc, got = getmail(tmp_path, retriever, options)
    assert proc.returncode == 0, describe(proc)
    assert got == []


def test_getmail_pop3s_delete(mailserver: Any, tmp_path: Path) -> None:
    """getmail6 over POP3S, certificate verified, ``delete = true``: the maildrop empties."""
    ms = mailserver
    stored = fill(ms)
    retriever = (
        f"type = SimplePOP3SSLRetriever\nserver = {ms.host}\nport = {ms.ports['pop3s']}\n"
        f"username = {USER}\npassword = {PASSWORD}\n"
        f"ca_certs = {ms.cafile}\nssl_cert_hostname = localhost\n"
    )
    proc, got = getmail(tmp_path, retriever, "read_all = true\ndelete = true\n")
    assert proc.returncode == 0, describe(proc)
    assert got == [as_fetched(t) for t in stored]
    assert texts(ms, ms.alice) == []


def test_getmail_pop3s_bad_certificate_name_refused(mailserver: Any, tmp_path: Path) -> None:
    """The check is real: a certificate for "localhost" does not pass for another name."""
    ms = mailserver
    fill(ms, 1)
    retriever = (
        f"type = SimplePOP3SSLRetriever\nserver = {ms.host}\nport = {ms.ports['pop3s']}\n"
        f"username = {USER}\npassword = {PASSWORD}\n"
        f"ca_certs = {ms.cafile}\nssl_cert_hostname = mx.elsewhere.test\n"
    )
    proc, got = getmail(tmp_path, retriever, "read_all = true\ndelete = true\n")
    assert got == []
    assert b"mx.elsewhere.test" in proc.stdout + proc.stderr, describe(proc)
    assert len(messages(ms, ms.alice)) == 1


def test_fetchmail_pop3_maildrop_in_use(mailserver: Any, tmp_path: Path) -> None:
    """While another session holds the maildrop, fetchmail gets ``-ERR [IN-USE]`` (RFC 2449
    §8.1.2), reports a busy lock (exit 9) and touches nothing; afterwards it works."""
    ms = mailserver
    stored = fill(ms, 2)
    holder = poplib.POP3(ms.host, ms.ports["pop3"], timeout=10)
    try:
        holder.user(USER)
        holder.pass_(PASSWORD)
        proc, got = fetchmail(tmp_path, poll(ms))
        assert proc.returncode == 9, describe(proc)  # PS_LOCKBUSY
        assert b"[IN-USE]" in proc.stdout + proc.stderr
        assert got == []
    finally:
        holder.quit()
    assert texts(ms, ms.alice) == stored
    proc, got = fetchmail(tmp_path, poll(ms))
    assert proc.returncode == 0, describe(proc)
    assert len(got) == 2 and texts(ms, ms.alice) == []


def test_fetchmail_pop3_size_limit(mailserver: Any, tmp_path: Path) -> None:
    """fetchmail's ``limit`` trusts LIST sizes (RFC 1939 §5): the large message is left on
    the server, the small ones are fetched and deleted."""
    ms = mailserver
    stored = fill(ms)
    assert len(stored[1]) > 10_000 > max(len(stored[0]), len(stored[2]))
    proc, got = fetchmail(tmp_path, poll(ms, extra="limit 10000"))
    assert proc.returncode == 0, describe(proc)
    assert sorted(strip_fetchmail(m) for m in got) == sorted(
        as_fetched(t) for t in (stored[0], stored[2])
    )
    assert texts(ms, ms.alice) == [stored[1]]


# --------------------------------------------------------------------------- mpop


def mpop(ms: Any, tmp_path: Path, settings: str) -> tuple[Any, list[bytes]]:
    """Run mpop once for alice with ``settings`` added to its account, delivering to a
    Maildir; return the run and the messages delivered by this run (mpop keeps its UIDL
    list in ``tmp_path``)."""
    binary = need("mpop")
    home = tmp_path / "mpop"
    maildir = home / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    before = set((maildir / "new").iterdir())
    rc = home / "mpoprc"
    rc.write_text(
        f"account alice\nhost {ms.host}\nuser {USER}\npassword {PASSWORD}\n"
        f"tls_trust_file {ms.cafile}\ntls_host_override localhost\ntimeout 20\n"
        f"received_header off\nuidls_file {home / 'uidls'}\ndelivery maildir {maildir}\n"
        f"{settings}\n"
    )
    rc.chmod(0o600)
    proc = run([binary, "-C", rc, "--debug", "alice"])
    new = sorted(set((maildir / "new").iterdir()) - before)
    return proc, [p.read_bytes() for p in new]


def test_mpop_stls_pipelined_keep_only_new(mailserver: Any, tmp_path: Path) -> None:
    """mpop (strict RFC 1939/2449/2595/5034 client): STLS, AUTH PLAIN, pipelined RETRs,
    ``keep`` with ``only_new`` by UIDL; a later run fetches only the new message."""
    ms = mailserver
    stored = fill(ms)
    settings = f"port {ms.ports['pop3']}\ntls on\ntls_starttls on\nkeep on\nonly_new on"
    proc, got = mpop(ms, tmp_path, settings)
    assert proc.returncode == 0, describe(proc)
    log = proc.stdout + proc.stderr
    assert b"--> STLS" in log and b"--> AUTH PLAIN" in log
    retrs = re.findall(rb"^--> RETR \d+", log, re.M)
    assert len(retrs) == 3
    assert log.index(retrs[-1]) < log.index(b"<-- +OK %d octets" % len(stored[0]))  # pipelined
    assert sorted(got) == sorted(as_fetched(t) for t in stored)
    assert texts(ms, ms.alice) == stored
    ms.deliver(USER, sample(4))
    proc, got = mpop(ms, tmp_path, settings)
    assert proc.returncode == 0, describe(proc)
    assert got == [as_fetched(texts(ms, ms.alice)[3])]


def test_mpop_pop3s_deletes(mailserver: Any, tmp_path: Path) -> None:
    """mpop over POP3S without ``keep``: all messages retrieved, then DELE + QUIT empties
    the maildrop in the store."""
    ms = mailserver
    stored = fill(ms)
    proc, got = mpop(ms, tmp_path, f"port {ms.ports['pop3s']}\ntls on\ntls_starttls off")
    assert proc.returncode == 0, describe(proc)
    assert sorted(got) == sorted(as_fetched(t) for t in stored)
    assert texts(ms, ms.alice) == []
