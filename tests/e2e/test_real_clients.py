"""correo against real third-party mail clients run as subprocesses: swaks, curl, msmtp,
Postfix's smtp-source (``test_real_clients_smtp``), fetchmail, getmail6, mpop
(``test_real_clients_pop3``, ``test_real_clients_imap``) and mbsync/isync
(``test_real_clients_mbsync``).

This module holds the helpers those modules share and the cross-protocol checks: a message
sent with swaks over SMTP (RFC 5321 §4.5.2 dot-stuffing on the way in) comes back byte for
byte over POP3 (RFC 1939 §3 byte-stuffing on the way out) and IMAP (RFC 3501 §6.4.5
BODY[]), with only trace lines (Return-Path, Delivered-To, Received, RFC 5321 §4.4)
prepended; SASL mechanisms on all three protocols; login lock-out across protocols. Every
client gets a bounded timeout; a test whose client is not installed is skipped, naming the
Debian package to install.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from correo.store.base import Account

USER = "alice@example.test"
PASSWORD = "secret"

PACKAGES = {
    "swaks": "swaks",
    "curl": "curl",
    "fetchmail": "fetchmail",
    "getmail": "getmail6",
    "mbsync": "isync",
    "msmtp": "msmtp",
    "mpop": "mpop",
}
"""Client binary -> the Debian package that provides it."""

CLIENT_TIMEOUT = 60
"""Seconds any single client run may take; all of them finish in one or two here."""


def need(binary: str) -> str:
    """The path of ``binary``, or skip the test naming the package that provides it."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed (Debian package {PACKAGES.get(binary, binary)})")
    return path


def need_swaks_tls() -> None:
    """swaks does TLS through Perl's Net::SSLeay, only a Recommends of the swaks package."""
    need("swaks")
    probe = subprocess.run(["perl", "-MNet::SSLeay", "-e", "1"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("swaks TLS needs Net::SSLeay (Debian package libnet-ssleay-perl)")


def run(
    args: Sequence[str | Path],
    *,
    timeout: float = CLIENT_TIMEOUT,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a client with a bounded timeout; the output is kept for assertions."""
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        timeout=timeout,
        env=env,
        input=input if input is not None else b"",
    )


def describe(proc: subprocess.CompletedProcess[bytes]) -> str:
    """A failure message showing what the client said."""
    out = proc.stdout.decode("utf-8", "replace")[-4000:]
    err = proc.stderr.decode("utf-8", "replace")[-4000:]
    return f"exit {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def messages(
    ms: Any, account: Account, mailbox: str = "INBOX"
) -> list[tuple[int, set[str], bytes]]:
    """(uid, flags, full text as a client sees it) of each message in ``mailbox``."""

    async def go() -> list[tuple[int, set[str], bytes]]:
        box = await ms.store.get_mailbox(account.id, mailbox)
        assert box is not None, mailbox
        infos = await ms.store.message_infos(box.id)
        out = []
        for m in await ms.store.get_messages(box.id, [i.uid for i in infos]):
            body = await ms.store.open_body(m)
            out.append((m.uid, set(m.flags), await body.read()))
        return out

    return list(ms.run(go()))


def texts(ms: Any, account: Account, mailbox: str = "INBOX") -> list[bytes]:
    return [text for _, _, text in messages(ms, account, mailbox)]


TRACE_FIELD = re.compile(
    rb"(?:Return-Path|Delivered-To|Received|Message-ID|Date):[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*",
    re.IGNORECASE,
)
"""One trace field (RFC 5321 §4.4), or a Message-ID/Date a submission server adds
(RFC 6409 §8), with its folded continuation lines."""


def trace_prefix(fetched: bytes, sent: bytes) -> bytes:
    """Assert ``fetched`` is ``sent`` with only trace fields in front; return those fields."""
    assert fetched.endswith(sent), (fetched[-300:], sent[-300:])
    head = fetched[: len(fetched) - len(sent)]
    rest = TRACE_FIELD.sub(b"", head)
    assert rest == b"", f"not a trace field: {rest[:200]!r}"
    return head


TRICKY = (
    b"From: Carol <carol@elsewhere.test>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: =?utf-8?q?byte_identit=C3=A9?=\r\n"
    b"Message-ID: <tricky.1@elsewhere.test>\r\n"
    b"Date: Fri, 27 Nov 2026 08:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"X-Folded: first\r\n"
    b"\tsecond line of a folded field\r\n"
    b"\r\n"
    b".a line starting with a dot\r\n"
    b"..two dots\r\n"
    b". \r\n"
    b"trailing spaces and a tab   \t\r\n"
    b"8-bit text: caf\xc3\xa9, \xe2\x82\xac, \xf0\x9f\x93\xa7\r\n"
    b"\r\n"
    b"From the start of a line (mbox would quote this)\r\n" + b"x" * 990 + b"\r\n"
    b"\r\n"
    b"\r\n"
    b"last line\r\n"
)
"""A message whose bytes every hop must keep: dot-leading lines (SMTP/POP3 stuffing), a
lone ``. `` line, trailing white space, raw UTF-8 (8BITMIME, RFC 6152), a 992-octet line
(under the 1000-octet limit of RFC 5321 §4.5.3.1.6), blank lines before the end."""


def swaks_send(ms: Any, data: bytes, tmp_path: Path, rcpt: str = USER) -> bytes:
    """Send ``data`` to ``rcpt`` on the MX port with swaks; the swaks transcript."""
    swaks = need("swaks")
    path = tmp_path / "swaks-data.eml"
    # swaks ends DATA with "\r\n.\r\n" after the text, adding an empty line, unless the
    # text already ends with the terminating dot: give it one so the bytes sent are ``data``.
    path.write_bytes(data + b".\r\n")
    proc = run(
        [swaks, "--server", ms.host, "--port", str(ms.ports["smtp"]), "--helo", "client.test",
         "--from", "carol@elsewhere.test", "--to", rcpt, "--data", f"@{path}", "--timeout", "20"]
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    assert re.search(rb"<-  250 2\.0\.0 ", proc.stdout), describe(proc)
    return proc.stdout


def curl_tls(ms: Any, service: str) -> tuple[list[str], str]:
    """curl options that verify the fixture's certificate for "localhost", and the
    ``host:port`` to put in the URL."""
    port = ms.ports[service]
    opts = ["--cacert", str(ms.cafile), "--resolve", f"localhost:{port}:{ms.host}"]
    return opts, f"localhost:{port}"


def curl(
    *args: str, user: str = USER, password: str = PASSWORD
) -> subprocess.CompletedProcess[bytes]:
    return run([need("curl"), "-sS", "--max-time", "30", "-u", f"{user}:{password}", *args])


# --------------------------------------------------------------------------- byte identity


def test_swaks_to_curl_pop3_and_imap_byte_identity(mailserver: Any, tmp_path: Path) -> None:
    """What swaks sent over SMTP comes back unchanged over POP3 (STLS) and IMAP (STARTTLS
    and implicit TLS), and equals what the store holds."""
    ms = mailserver
    swaks_send(ms, TRICKY, tmp_path)
    ((uid, _, stored),) = messages(ms, ms.alice)
    head = trace_prefix(stored, TRICKY)
    assert head.startswith(b"Return-Path: <carol@elsewhere.test>\r\nDelivered-To: " + USER.encode())
    assert b"Received: from client.test ([127.0.0.1])" in head

    tls, hostport = curl_tls(ms, "pop3")
    pop = curl(*tls, "--ssl-reqd", f"pop3://{hostport}/1")
    assert pop.returncode == 0, describe(pop)
    assert pop.stdout == stored

    tls, hostport = curl_tls(ms, "imap")
    imap = curl(*tls, "--ssl-reqd", f"imap://{hostport}/INBOX;UID={uid}")
    assert imap.returncode == 0, describe(imap)
    assert imap.stdout == stored

    tls, hostport = curl_tls(ms, "imaps")
    imaps = curl(*tls, f"imaps://{hostport}/INBOX;UID={uid};SECTION=TEXT")
    assert imaps.returncode == 0, describe(imaps)
    assert imaps.stdout == TRICKY[TRICKY.index(b"\r\n\r\n") + 4 :]


def test_curl_imap_append_then_pop3_retr_byte_identity(mailserver: Any, tmp_path: Path) -> None:
    """A message APPENDed with curl (RFC 3501 §6.3.11) is stored and served over POP3
    exactly as uploaded: APPEND adds no trace fields."""
    ms = mailserver
    path = tmp_path / "append.eml"
    path.write_bytes(TRICKY)
    tls, hostport = curl_tls(ms, "imaps")
    up = curl(*tls, "-T", str(path), f"imaps://{hostport}/INBOX")
    assert up.returncode == 0, describe(up)
    assert texts(ms, ms.alice) == [TRICKY]
    tls, hostport = curl_tls(ms, "pop3s")
    pop = curl(*tls, f"pop3s://{hostport}/1")
    assert pop.returncode == 0, describe(pop)
    assert pop.stdout == TRICKY


def test_curl_append_bare_lf_is_stored_with_crlf(mailserver: Any, tmp_path: Path) -> None:
    """A Unix-style file APPENDed with curl (bare LF line ends) is stored with CRLF
    (RFC 5322 §2.1), and POP3 LIST, IMAP RFC822.SIZE and the bytes served all agree."""
    ms = mailserver
    path = tmp_path / "unix.eml"
    path.write_bytes(b"Subject: lf only\nFrom: a@b.test\n\nline one\n.dot line\nline three\n")
    tls, hostport = curl_tls(ms, "imaps")
    up = curl(*tls, "-T", str(path), f"imaps://{hostport}/INBOX")
    assert up.returncode == 0, describe(up)
    want = path.read_bytes().replace(b"\n", b"\r\n")
    assert texts(ms, ms.alice) == [want]
    size = curl(*tls, "-X", "UID FETCH 1 (RFC822.SIZE)", f"imaps://{hostport}/INBOX")
    assert size.stdout == b"* 1 FETCH (UID 1 RFC822.SIZE %d)\r\n" % len(want), describe(size)
    assert curl(*tls, f"imaps://{hostport}/INBOX;UID=1").stdout == want
    tls, hostport = curl_tls(ms, "pop3s")
    assert curl(*tls, f"pop3s://{hostport}/").stdout == b"1 %d\r\n" % len(want)
    assert curl(*tls, f"pop3s://{hostport}/1").stdout == want


def test_no_passwords_before_tls_when_plaintext_is_off(make_mailserver: Any) -> None:
    """With plaintext logins disabled, curl cannot log in without TLS: IMAP announces
    LOGINDISABLED and no AUTH= (RFC 3501 §6.2.3, §7.2.1), POP3's CAPA offers neither USER
    nor SASL (RFC 2595 §4, RFC 5034 §4); after STARTTLS/STLS the same curl call works."""
    ms = make_mailserver("[auth]\nplaintext_on_loopback = false\n")
    ms.deliver(USER, b"Subject: x\r\n\r\nx\r\n")
    imap = curl("-v", f"imap://{ms.host}:{ms.ports['imap']}/INBOX;UID=1")
    assert imap.returncode != 0 and imap.stdout == b"", describe(imap)
    caps = re.search(rb"^< \* (?:OK \[)?CAPABILITY ([^\]\r\n]*)", imap.stderr, re.M)
    assert caps, describe(imap)
    assert b"LOGINDISABLED" in caps.group(1).split() and b"AUTH=" not in caps.group(1)
    pop = curl("-v", f"pop3://{ms.host}:{ms.ports['pop3']}/1")
    assert pop.returncode != 0 and pop.stdout == b"", describe(pop)
    capa = pop.stderr.partition(b"< +OK Capability list follows")[2].partition(b"< .")[0]
    assert b"STLS" in capa and b"USER" not in capa and b"SASL" not in capa, describe(pop)
    for service in ("imap", "pop3"):
        tls, hostport = curl_tls(ms, service)
        url = f"{service}://{hostport}/" + ("INBOX;UID=1" if service == "imap" else "1")
        ok = curl(*tls, "--ssl-reqd", url)
        assert ok.stdout == b"Subject: x\r\n\r\nx\r\n", describe(ok)


@pytest.mark.parametrize("sasl_ir", [False, True], ids=["no-ir", "sasl-ir"])
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("scheme", ["imaps", "pop3s", "smtps"])
def test_curl_sasl_mechanisms(
    mailserver: Any, tmp_path: Path, scheme: str, mech: str, sasl_ir: bool
) -> None:
    """AUTHENTICATE / AUTH with PLAIN and LOGIN, with and without an initial response
    (RFC 4959 SASL-IR, RFC 5034 §4, RFC 4954 §4), on all three protocols."""
    ms = mailserver
    ms.deliver(USER, b"Subject: one\r\n\r\nbody\r\n")
    service = {"imaps": "imaps", "pop3s": "pop3s", "smtps": "submissions"}[scheme]
    tls, hostport = curl_tls(ms, service)
    opts = [*tls, "-v", "--login-options", f"AUTH={mech}", *(["--sasl-ir"] if sasl_ir else [])]
    if scheme == "smtps":
        path = tmp_path / "m.eml"
        path.write_bytes(b"Subject: two\r\n\r\nbody\r\n")
        got = curl(*opts, "--mail-from", USER, "--mail-rcpt", "bob@example.test", "-T",
                   str(path), f"smtps://{hostport}/client.test")  # fmt: skip
        assert got.returncode == 0, describe(got)
        assert len(texts(ms, ms.bob)) == 1
    else:
        url = f"{scheme}://{hostport}/" + ("INBOX;UID=1" if scheme == "imaps" else "1")
        got = curl(*opts, url)
        assert got.returncode == 0, describe(got)
        assert got.stdout == texts(ms, ms.alice)[0]
    verb = {"imaps": b"AUTHENTICATE", "pop3s": b"AUTH", "smtps": b"AUTH"}[scheme]
    first = re.search(
        rb"^> \S* ?" + verb + rb" " + mech.encode() + rb"( \S+)?\r?$", got.stderr, re.M
    )
    assert first, describe(got)
    # curl always sends an initial response to an IMAP server advertising SASL-IR (RFC 4959)
    assert bool(first.group(1)) == (sasl_ir or scheme == "imaps")


def test_login_failures_lock_out_every_protocol(make_mailserver: Any) -> None:
    """Failed logins counted per client IP across protocols: after ``max_failures`` wrong
    passwords with swaks, the next SMTP AUTH gets 454 4.7.0 (RFC 4954 §6) even with the
    right password, and IMAP and POP3 logins from that IP answer with temporary refusals
    (RFC 5530 ``[UNAVAILABLE]``, RFC 3206 ``[SYS/TEMP]``) instead of checking passwords."""
    need_swaks_tls()
    ms = make_mailserver("[auth]\nmax_failures = 3\n")
    swaks = need("swaks")
    base = [swaks, "--server", ms.host, "--port", str(ms.ports["submission"]), "-tls", "--timeout",
            "20", "--auth", "LOGIN", "--from", "bob@example.test", "--to", USER]  # fmt: skip
    for _ in range(3):
        proc = run([*base, "--auth-user", "bob@example.test", "--auth-password", "wrong"])
        assert re.search(rb"<~\* +535 5\.7\.8 ", proc.stdout), describe(proc)
    proc = run([*base, "--auth-user", "bob@example.test", "--auth-password", PASSWORD])
    assert re.search(rb"<~\* +454 4\.7\.0 ", proc.stdout), describe(proc)
    imap = curl("-v", f"imap://{ms.host}:{ms.ports['imap']}/")
    assert imap.returncode == 67 and b" NO [UNAVAILABLE]" in imap.stderr, describe(imap)
    pop = curl("-v", f"pop3://{ms.host}:{ms.ports['pop3']}/")
    assert pop.returncode == 67 and b"< -ERR [SYS/TEMP]" in pop.stderr, describe(pop)
    assert texts(ms, ms.alice) == []


# --------------------------------------------------------------------------- fetchmail

FETCHMAIL_RECEIVED = re.compile(
    rb"^Received: from [^\n]*\n(?:[ \t][^\n]*\n)*?[ \t]+by [^\n]*\(fetchmail-[^\n]*\n"
    rb"(?:[ \t][^\n]*\n)*",
    re.MULTILINE,
)
"""The Received field fetchmail adds before handing a message to the MDA."""


def fetchmail(
    tmp_path: Path, poll: str, *extra: str, name: str = "fetchmail"
) -> tuple[subprocess.CompletedProcess[bytes], list[bytes]]:
    """Run fetchmail once with ``poll`` (a poll statement without its MDA) delivering each
    message to a file of its own; return the run and the messages it delivered this time.
    State (the UIDL list) lives in ``tmp_path/name``; nothing touches the system's mail."""
    binary = need("fetchmail")
    home = tmp_path / name
    out = home / "out"
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    rc = home / "fetchmailrc"
    rc.write_text(
        f"set no syslog\n{poll}\n  mda \"/bin/sh -c 'cat > $(mktemp {out}/msg.XXXXXXXX)'\"\n"
    )
    rc.chmod(0o600)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "FETCHMAILHOME": str(home)}
    proc = run(
        [binary, "-f", rc, "--nodetach", "--pidfile", home / "pid", "--idfile", home / "ids",
         "-v", *extra],
        env=env,
    )  # fmt: skip
    got = sorted(set(out.iterdir()) - before)
    return proc, [p.read_bytes() for p in got]


def fetchmail_tls(ms: Any) -> str:
    """fetchmail options verifying the fixture's certificate for "localhost"."""
    return f'sslcertck sslcertfile "{ms.cafile}" sslcommonname "localhost"'


def as_fetched(stored: bytes) -> bytes:
    """A stored message as fetchmail hands it to an MDA: LF line ends."""
    return stored.replace(b"\r\n", b"\n")


def strip_fetchmail(delivered: bytes) -> bytes:
    """``delivered`` without the Received field fetchmail added (exactly one)."""
    stripped, n = FETCHMAIL_RECEIVED.subn(b"", delivered, count=1)
    assert n == 1, delivered[:400]
    return stripped


# --------------------------------------------------------------------------- getmail6


def getmail(
    tmp_path: Path, retriever: str, options: str = "", name: str = "getmail"
) -> tuple[subprocess.CompletedProcess[bytes], list[bytes]]:
    """Run getmail6 once with the ``[retriever]`` body given, delivering to a fresh Maildir;
    return the run and the messages delivered, in order. getmail's state (which messages it
    has seen) stays in ``tmp_path/name``. getmail refuses to write a Maildir as root, so
    under root the Maildir is made for and written by ``nobody``."""
    binary = need("getmail")
    gmdir = tmp_path / name
    gmdir.mkdir(exist_ok=True)
    owner: tuple[int, int] | None = None
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and no 'nobody' user to own getmail's Maildir")
        owner = (nobody.pw_uid, nobody.pw_gid)
    top = Path(tempfile.mkdtemp(prefix="correo-getmail-"))
    try:
        maildir = top / "Maildir"
        dirs = [maildir, *(maildir / sub for sub in ("cur", "new", "tmp"))]
        for d in dirs:
            d.mkdir()
        if owner is not None:
            top.chmod(0o755)
            for d in dirs:
                os.chown(d, *owner)
        user = "user = nobody\n" if owner is not None else ""
        (gmdir / "getmailrc").write_text(
            f"[retriever]\n{retriever}\n"
            f"[destination]\ntype = Maildir\npath = {maildir}/\n{user}\n"
            "[options]\nverbose = 2\nreceived = false\ndelivered_to = false\n"
            f"{options}\n"
        )
        proc = run([binary, "--getmaildir", gmdir, "--rcfile", "getmailrc"])
        files = [*(maildir / "new").iterdir(), *(maildir / "cur").iterdir()]
        # getmail names files <seconds>.M<microseconds>P<pid>Q<count>...: sort by count
        files.sort(key=lambda p: (p.name.split(".")[0], int(re.sub(r".*Q(\d+).*", r"\1", p.name))))
        return proc, [p.read_bytes() for p in files]
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_large_message_byte_identity(mailserver: Any, tmp_path: Path) -> None:
    """A 3 MB message with binary-ish 8-bit lines: swaks in, curl POP3S and IMAPS out,
    identical, and the sizes the servers announce match what they send (RFC 1939 §5
    LIST, RFC 3501 §7.4.2 RFC822.SIZE)."""
    ms = mailserver
    line = bytes(range(0x21, 0x7F)) + bytes(range(0xA0, 0x100))  # 190 octets
    body = b"".join(b"%06d " % i + line + b"\r\n" for i in range(15_000))
    data = b"From: carol@elsewhere.test\r\nTo: alice@example.test\r\nSubject: big\r\n\r\n" + body
    swaks_send(ms, data, tmp_path)
    ((uid, _, stored),) = messages(ms, ms.alice)
    trace_prefix(stored, data)
    tls, hostport = curl_tls(ms, "pop3s")
    listing = curl(*tls, f"pop3s://{hostport}/")
    assert listing.stdout == b"1 %d\r\n" % len(stored), describe(listing)
    pop = curl(*tls, f"pop3s://{hostport}/1")
    assert pop.returncode == 0, describe(pop)
    assert pop.stdout == stored
    tls, hostport = curl_tls(ms, "imaps")
    size = curl(*tls, "-X", f"UID FETCH {uid} (RFC822.SIZE)", f"imaps://{hostport}/INBOX")
    assert b"RFC822.SIZE %d" % len(stored) in size.stdout, describe(size)
    imap = curl(*tls, f"imaps://{hostport}/INBOX;UID={uid}")
    assert imap.returncode == 0, describe(imap)
    assert imap.stdout == stored
