"""SMTP with real clients: swaks (MX delivery, STARTTLS + AUTH on submission, implicit TLS
on submissions, relay refusal, size limit, PIPELINING) and curl ``smtp://``.

RFC 5321 (SMTP), RFC 3207 (STARTTLS), RFC 4954 (AUTH), RFC 8314 (implicit TLS),
RFC 2920 (PIPELINING), RFC 1870 (SIZE), RFC 6409 (submission), RFC 3848 (``with``).
"""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_real_clients import (
    PASSWORD,
    TRICKY,
    USER,
    curl,
    curl_tls,
    describe,
    messages,
    need,
    need_swaks_tls,
    run,
    swaks_send,
    texts,
    trace_prefix,
)

from correo.store.queue import queue_store_for

BOB = "bob@example.test"

NO_PLAINTEXT = "[auth]\nplaintext_on_loopback = false\n"
"""Treat the loopback listeners like any other: no AUTH before TLS."""


def swaks(ms: Any, service: str, *args: str) -> Any:
    return run(
        [need("swaks"), "--server", ms.host, "--port", str(ms.ports[service]),
         "--helo", "client.test", "--timeout", "20", *args]
    )  # fmt: skip


def data_file(tmp_path: Path, data: bytes, name: str = "msg.eml") -> str:
    """A swaks ``--data @file`` argument sending exactly ``data`` (see ``swaks_send``)."""
    path = tmp_path / name
    path.write_bytes(data + b".\r\n")
    return f"@{path}"


def message(subject: str, to: str = USER, body: bytes = b"hello\r\n") -> bytes:
    return (
        f"From: alice@example.test\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@client.test>\r\nDate: Fri, 27 Nov 2026 08:00:00 +0000\r\n\r\n"
    ).encode() + body


def test_swaks_mx_delivery_lands_in_inbox(mailserver: Any, tmp_path: Path) -> None:
    """Plain SMTP on the MX port (no TLS, no AUTH) to a local user: stored in her INBOX with
    Return-Path, Delivered-To and a Received field (RFC 5321 §4.4), ``with ESMTP``."""
    ms = mailserver
    out = swaks_send(ms, message("mx"), tmp_path)
    assert b"250-PIPELINING" in out and b"250-8BITMIME" in out
    assert b"AUTH" not in out  # RFC 4954 on submission only
    ((_, flags, text),) = messages(ms, ms.alice)
    head = trace_prefix(text, message("mx"))
    assert head.startswith(b"Return-Path: <carol@elsewhere.test>\r\nDelivered-To: " + USER.encode())
    assert b"\twith ESMTP id " in head
    assert "\\Seen" not in flags
    assert texts(ms, ms.bob) == []


def test_swaks_mx_starttls(mailserver: Any, tmp_path: Path) -> None:
    """STARTTLS on the MX port as another MTA would use it (RFC 3207): the Received field
    records the TLS version and cipher and says ``with ESMTPS`` (RFC 3848)."""
    need_swaks_tls()
    ms = mailserver
    data = message("mx-tls")
    proc = swaks(
        ms, "smtp", "-tls", "--tls-verify", "--tls-ca-path", str(ms.cafile), "--tls-sni",
        "localhost", "--from", "carol@elsewhere.test", "--to", USER,
        "--data", data_file(tmp_path, data),
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    (text,) = texts(ms, ms.alice)
    head = trace_prefix(text, data)
    assert re.search(rb"\t\(using TLSv1\.[23] [A-Z0-9_-]+\)\r\n\twith ESMTPS id ", head), head


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_submission_starttls_auth(make_mailserver: Any, tmp_path: Path, mech: str) -> None:
    """Submission (RFC 6409) with STARTTLS then AUTH PLAIN / LOGIN (RFC 4954): delivered, the
    Received field says ESMTPSA (RFC 3848), and AUTH is not offered before TLS."""
    need_swaks_tls()
    ms = make_mailserver(NO_PLAINTEXT)
    data = message(f"sub-{mech}", to=BOB)
    proc = swaks(
        ms, "submission", "-tls", "--tls-verify", "--tls-ca-path", str(ms.cafile),
        "--tls-sni", "localhost", "--auth", mech, "--auth-user", USER,
        "--auth-password", PASSWORD, "--from", USER, "--to", BOB,
        "--data", data_file(tmp_path, data),
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    before_tls, _, after_tls = proc.stdout.partition(b"=== TLS started")
    assert re.search(rb"<-  250[ -]STARTTLS", before_tls) and b"AUTH" not in before_tls
    assert re.search(rb"<~  250[ -]AUTH [A-Z ]*\b" + mech.encode(), after_tls), describe(proc)
    assert b"<~  235 2.7.0" in after_tls
    (text,) = texts(ms, ms.bob)
    head = trace_prefix(text, data)
    assert b"with ESMTPSA id " in head


def test_swaks_submission_auth_before_tls_refused(make_mailserver: Any, tmp_path: Path) -> None:
    """Without TLS on a listener that does not allow plaintext, AUTH is neither advertised nor
    accepted (RFC 4954 §4; RFC 3207 §4), and MAIL needs AUTH on submission."""
    ms = make_mailserver(NO_PLAINTEXT)
    proc = swaks(
        ms, "submission", "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD,
        "--from", USER, "--to", BOB, "--data", data_file(tmp_path, message("plain")),
    )  # fmt: skip
    assert proc.returncode == 28, describe(proc)  # swaks: error in AUTH
    assert b"AUTH" not in proc.stdout.partition(b"-> EHLO")[2].partition(b"\n ->")[0]
    # Forcing the issue on the wire: swaks with --quit-after is not enough, use MAIL.
    proc = swaks(ms, "submission", "--from", USER, "--to", BOB, "--data", data_file(tmp_path, b""))
    assert proc.returncode == 23, describe(proc)  # swaks: error in MAIL
    assert re.search(rb"<\*\* +530 5\.7\.0 ", proc.stdout), describe(proc)
    assert texts(ms, ms.bob) == []


def test_swaks_submission_wrong_password(mailserver: Any, tmp_path: Path) -> None:
    """A wrong password gets 535 5.7.8 (RFC 4954 §6) and nothing is sent."""
    need_swaks_tls()
    ms = mailserver
    proc = swaks(
        ms, "submission", "-tls", "--auth", "LOGIN", "--auth-user", USER,
        "--auth-password", "wrong", "--from", USER, "--to", BOB,
        "--data", data_file(tmp_path, message("nope", to=BOB)),
    )  # fmt: skip
    assert proc.returncode == 28, describe(proc)
    assert re.search(rb"<~\* +535 5\.7\.8 ", proc.stdout), describe(proc)
    assert texts(ms, ms.bob) == []


def test_swaks_submission_sender_must_be_owned(mailserver: Any, tmp_path: Path) -> None:
    """An authenticated user may not use someone else's address as MAIL FROM (RFC 6409
    §6.1): alice cannot send as bob (553 5.7.1), but can send as herself."""
    need_swaks_tls()
    ms = mailserver
    auth = ["-tls", "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD]
    data = message("spoof", to=BOB)
    proc = swaks(ms, "submission", *auth, "--from", BOB, "--to", BOB,
                 "--data", data_file(tmp_path, data))  # fmt: skip
    assert proc.returncode == 23, describe(proc)  # swaks: error in MAIL
    assert re.search(rb"<~\* +553 5\.7\.1 ", proc.stdout), describe(proc)
    assert texts(ms, ms.bob) == []
    proc = swaks(ms, "submission", *auth, "--from", USER, "--to", BOB,
                 "--data", data_file(tmp_path, data))  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    assert len(texts(ms, ms.bob)) == 1


def test_swaks_submissions_implicit_tls(mailserver: Any, tmp_path: Path) -> None:
    """Implicit TLS on submissions (RFC 8314 §3.3), certificate verified, AUTH LOGIN."""
    need_swaks_tls()
    ms = mailserver
    data = message("implicit")
    proc = swaks(
        ms, "submissions", "--tls-on-connect", "--tls-verify", "--tls-ca-path", str(ms.cafile),
        "--tls-sni", "localhost", "--auth", "LOGIN", "--auth-user", BOB,
        "--auth-password", PASSWORD, "--from", BOB, "--to", USER,
        "--data", data_file(tmp_path, data),
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    assert b"STARTTLS" not in proc.stdout  # already encrypted: nothing to upgrade
    (text,) = texts(ms, ms.alice)
    assert b"with ESMTPSA id " in trace_prefix(text, data)


def test_swaks_no_open_relay(mailserver: Any, tmp_path: Path) -> None:
    """An unauthenticated client on the MX port cannot relay to another domain (RFC 5321
    §3.6.2, §7.1): refused at RCPT with a 5xx, nothing queued."""
    ms = mailserver
    proc = swaks(
        ms, "smtp", "--from", "spammer@elsewhere.test", "--to", "victim@elsewhere.test",
        "--data", data_file(tmp_path, message("relay", to="victim@elsewhere.test")),
    )  # fmt: skip
    assert proc.returncode == 24, describe(proc)  # swaks: no RCPT accepted
    assert re.search(rb"<\*\* +55[04] 5\.7\.\d+ ", proc.stdout), describe(proc)
    assert ms.run(queue_store_for(ms.store).list_entries()) == []


def test_swaks_unknown_local_user_refused(mailserver: Any, tmp_path: Path) -> None:
    """RCPT for a local domain user that does not exist: 550 5.1.1 (RFC 3463)."""
    proc = swaks(
        mailserver, "smtp", "--from", "carol@elsewhere.test", "--to", "nobody@example.test",
        "--data", data_file(tmp_path, message("who")),
    )  # fmt: skip
    assert proc.returncode == 24, describe(proc)
    assert re.search(rb"<\*\* +550 5\.1\.1 ", proc.stdout), describe(proc)


def test_swaks_oversize_message_refused(make_mailserver: Any, tmp_path: Path) -> None:
    """A message over ``max_message_size`` (advertised by SIZE, RFC 1870) is refused with
    552 5.3.4 after the data, and nothing is stored."""
    ms = make_mailserver('[limits]\nmax_message_size = "64K"\n')
    big = message("big", body=(b"y" * 76 + b"\r\n") * 1200)  # ~94 KB
    proc = swaks(
        ms, "smtp", "--from", "carol@elsewhere.test", "--to", USER,
        "--data", data_file(tmp_path, big), "--suppress-data",
    )  # fmt: skip
    assert b"250-SIZE 65536" in proc.stdout, describe(proc)
    assert proc.returncode == 26, describe(proc)  # swaks: mail refused after data
    assert re.search(rb"<\*\* +552 5\.3\.4 ", proc.stdout), describe(proc)
    assert texts(ms, ms.alice) == []
    small = message("small")
    proc = swaks(
        ms, "smtp", "--from", "carol@elsewhere.test", "--to", USER,
        "--data", data_file(tmp_path, small, "small.eml"),
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    (text,) = texts(ms, ms.alice)
    trace_prefix(text, small)


def test_curl_declared_size_refused_at_mail(make_mailserver: Any, tmp_path: Path) -> None:
    """curl declares the size (MAIL FROM ... SIZE=n, RFC 1870 §6): a message over the limit
    is refused at MAIL with 552 5.3.4, before any data is sent."""
    ms = make_mailserver('[limits]\nmax_message_size = "64K"\n')
    path = tmp_path / "big.eml"
    path.write_bytes(message("declared", body=b"z" * 100_000 + b"\r\n"))
    proc = curl(
        "-v", "--mail-from", "carol@elsewhere.test", "--mail-rcpt", USER, "-T", str(path),
        f"smtp://{ms.host}:{ms.ports['smtp']}/client.test",
    )  # fmt: skip
    assert proc.returncode != 0, describe(proc)
    assert re.search(rb"> MAIL FROM:<carol@elsewhere.test> SIZE=\d+", proc.stderr), describe(proc)
    assert re.search(rb"< 552 5\.3\.4 ", proc.stderr), describe(proc)
    assert b"> RCPT" not in proc.stderr and b"> DATA" not in proc.stderr
    assert texts(ms, ms.alice) == []


def test_swaks_pipelining(mailserver: Any, tmp_path: Path) -> None:
    """RFC 2920: MAIL, three RCPTs (one unknown) and DATA sent in one group; the replies
    come back in order and the message reaches the two valid recipients."""
    ms = mailserver
    data = message("pipelined")
    proc = swaks(
        ms, "smtp", "--pipeline", "--from", "carol@elsewhere.test",
        "--to", f"{USER},nobody@example.test,{BOB}", "--data", data_file(tmp_path, data),
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    out = proc.stdout.decode()
    sent = [m.start() for m in re.finditer(r"^ -> (MAIL|RCPT|DATA)", out, re.MULTILINE)]
    first_reply = out.index("<-  250 2.1.0")
    assert len(sent) == 5 and max(sent) < first_reply, out  # one group, then the replies
    replies = re.findall(r"^<(?:-|\*\*) +(\d{3}(?: \d\.\d+\.\d+)?)", out[first_reply:], re.M)
    assert replies[:6] == ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354", "250 2.0.0"]
    assert len(texts(ms, ms.alice)) == 1 and len(texts(ms, ms.bob)) == 1
    trace_prefix(texts(ms, ms.alice)[0], data)


def test_swaks_byte_identity_of_tricky_message(mailserver: Any, tmp_path: Path) -> None:
    """Dot-stuffing, raw 8-bit, long lines, trailing blanks: stored exactly as sent."""
    ms = mailserver
    swaks_send(ms, TRICKY, tmp_path)
    (text,) = texts(ms, ms.alice)
    trace_prefix(text, TRICKY)


def test_curl_smtp_submission_starttls(mailserver: Any, tmp_path: Path) -> None:
    """curl over submission: STARTTLS required (``--ssl-reqd``), certificate verified, AUTH,
    two recipients of which one is refused (``--mail-rcpt-allowfails``)."""
    ms = mailserver
    data = message("curl", to=BOB)
    path = tmp_path / "curl.eml"
    path.write_bytes(data)
    tls, hostport = curl_tls(ms, "submission")
    proc = curl(
        *tls, "--ssl-reqd", "--mail-from", USER, "--mail-rcpt", BOB,
        "--mail-rcpt", "ghost@example.test", "--mail-rcpt-allowfails", "-T", str(path),
        f"smtp://{hostport}/client.test",
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    (text,) = texts(ms, ms.bob)
    assert b"with ESMTPSA id " in trace_prefix(text, data)


def test_curl_smtps_wrong_password(mailserver: Any, tmp_path: Path) -> None:
    """curl over implicit TLS with a wrong password: login denied (curl exit 67)."""
    ms = mailserver
    path = tmp_path / "curl.eml"
    path.write_bytes(message("curl-bad"))
    tls, hostport = curl_tls(ms, "submissions")
    proc = curl(
        *tls, "--mail-from", USER, "--mail-rcpt", USER, "-T", str(path),
        f"smtps://{hostport}/client.test", password="wrong",
    )  # fmt: skip
    assert proc.returncode == 67, describe(proc)  # CURLE_LOGIN_DENIED
    assert texts(ms, ms.alice) == []


def test_swaks_submission_relayed_to_remote_correo(make_mailserver: Any, tmp_path: Path) -> None:
    """The whole path between two correo servers: swaks submits (STARTTLS + AUTH) to A for
    a user of remote.test; A queues it and relays it over SMTP to B (routed by
    ``[relay.routes]``); B stores it in the user's INBOX; curl reads it back from B over
    IMAPS, byte for byte behind the trace fields both hops added."""
    need_swaks_tls()
    remote = make_mailserver("")
    remote.run(remote.store.add_domain("remote.test"))
    dave = remote.add_user("dave@remote.test", PASSWORD)
    ms = make_mailserver(
        f'[relay.routes]\n"remote.test" = "{remote.host}:{remote.ports["smtp"]}"\n'
    )
    data = message("relayed", to="dave@remote.test")
    proc = swaks(
        ms, "submission", "-tls", "--auth", "PLAIN", "--auth-user", USER,
        "--auth-password", PASSWORD, "--from", USER, "--to", "dave@remote.test",
        "--data", data_file(tmp_path, data),
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    deadline = time.monotonic() + 20
    while not texts(remote, dave) and time.monotonic() < deadline:
        time.sleep(0.1)
    (text,) = texts(remote, dave)
    head = trace_prefix(text, data)
    assert head.startswith(b"Return-Path: <alice@example.test>\r\nDelivered-To: dave@remote.test")
    assert head.count(b"Received: from ") == 2 and b"with ESMTPSA id " in head
    assert texts(ms, ms.alice) == []  # no bounce
    tls, hostport = curl_tls(remote, "imaps")
    got = curl(*tls, f"imaps://{hostport}/INBOX;UID=1", user="dave@remote.test")
    assert got.returncode == 0, describe(got)
    assert got.stdout == text


def test_swaks_concurrent_clients(mailserver: Any, tmp_path: Path) -> None:
    """Twelve swaks processes at once, pipelining, half to alice and half to bob: every
    message is stored once, in the right INBOX, intact."""
    ms = mailserver
    procs = []
    sent: dict[str, list[bytes]] = {USER: [], BOB: []}
    for n in range(12):
        rcpt = USER if n % 2 else BOB
        data = message(f"concurrent-{n}", to=rcpt, body=b"line\r\n" * (n * 500))
        sent[rcpt].append(data)
        args = [need("swaks"), "--server", ms.host, "--port", str(ms.ports["smtp"]),
                "--helo", "client.test", "--timeout", "30", "--pipeline",
                "--from", "carol@elsewhere.test", "--to", rcpt,
                "--data", data_file(tmp_path, data, f"{n}.eml")]  # fmt: skip
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        for p in procs:
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0, out.decode(errors="replace")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=10)
    for account, rcpt in ((ms.alice, USER), (ms.bob, BOB)):
        got = texts(ms, account)
        assert len(got) == 6
        bodies = sorted(t[t.index(b"From: alice@example.test\r\n") :] for t in got)
        assert bodies == sorted(sent[rcpt])


def test_swaks_helo_only_client(mailserver: Any, tmp_path: Path) -> None:
    """A client that speaks plain RFC 821 SMTP (HELO, no extensions) still delivers, and
    the Received field says ``with SMTP`` (RFC 3848)."""
    ms = mailserver
    data = message("helo")
    proc = swaks(
        ms, "smtp", "--protocol", "SMTP", "--from", "carol@elsewhere.test", "--to", USER,
        "--data", data_file(tmp_path, data),
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    assert b"-> HELO client.test" in proc.stdout
    (text,) = texts(ms, ms.alice)
    assert b"\twith SMTP id " in trace_prefix(text, data)


# --------------------------------------------------------------------------- msmtp


def msmtp(ms: Any, tmp_path: Path, service: str, data: bytes, *args: str) -> Any:
    """Send ``data`` as alice with msmtp (a strict RFC 6409 submission client that
    pipelines) on ``service``; its headers are left alone so the bytes can be compared."""
    binary = need("msmtp")
    rc = tmp_path / "msmtprc"
    starttls = "on" if service == "submission" else "off"
    rc.write_text(
        f"account alice\nhost {ms.host}\nport {ms.ports[service]}\nfrom {USER}\nauth on\n"
        f"user {USER}\npassword {PASSWORD}\ntls on\ntls_starttls {starttls}\n"
        f"tls_trust_file {ms.cafile}\ntls_host_override localhost\ntimeout 20\n"
        "set_from_header off\nset_date_header off\nset_msgid_header off\n"
        "remove_bcc_headers off\n"
    )
    rc.chmod(0o600)
    return run([binary, "-C", rc, "-a", "alice", "--debug", *args], input=data)


def test_msmtp_submission_pipelined(mailserver: Any, tmp_path: Path) -> None:
    """msmtp over STARTTLS: AUTH, then MAIL, two RCPTs and DATA in one pipelined group
    (RFC 2920) with DSN parameters (RFC 3461 RET/NOTIFY); both copies byte-identical."""
    ms = mailserver
    data = message("msmtp", to=BOB)
    proc = msmtp(
        ms, tmp_path, "submission", data, "--dsn-notify=failure,delay", "--dsn-return=hdrs",
        BOB, USER,
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    log = (proc.stdout + proc.stderr).decode(errors="replace")
    assert "--> STARTTLS" in log and "--> AUTH " in log
    assert "--> MAIL FROM:<alice@example.test> RET=HDRS" in log
    group = log.index("--> MAIL FROM")
    assert log.index("--> DATA", group) < log.index("<-- 250 2.1.0", group), log
    for account in (ms.alice, ms.bob):
        (text,) = texts(ms, account)
        assert b"with ESMTPSA id " in trace_prefix(text, data)


def test_msmtp_submissions_implicit_tls(mailserver: Any, tmp_path: Path) -> None:
    ms = mailserver
    data = message("msmtp-465", to=BOB)
    proc = msmtp(ms, tmp_path, "submissions", data, BOB)
    assert proc.returncode == 0, describe(proc)
    assert b"STARTTLS" not in proc.stdout + proc.stderr
    (text,) = texts(ms, ms.bob)
    trace_prefix(text, data)


def test_msmtp_notify_success_local_delivery_dsn(mailserver: Any, tmp_path: Path) -> None:
    """RFC 3461 §5.2.3 (a): a message delivered to a local mailbox for a recipient whose
    RCPT carried NOTIFY=SUCCESS MUST produce a "delivered" DSN to the envelope sender."""
    ms = mailserver
    data = message("want-receipt", to=BOB)
    proc = msmtp(ms, tmp_path, "submission", data, "--dsn-notify=success", BOB)
    assert proc.returncode == 0, describe(proc)
    assert b"--> RCPT TO:<bob@example.test> NOTIFY=SUCCESS\r\n" in proc.stdout
    assert len(texts(ms, ms.bob)) == 1
    deadline = time.monotonic() + 5
    while not texts(ms, ms.alice) and time.monotonic() < deadline:
        time.sleep(0.1)
    (report,) = texts(ms, ms.alice)
    parsed = email.message_from_bytes(report)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert re.search(rb"(?mi)^Action: delivered\r?$", report)
    assert re.search(rb"(?mi)^Final-Recipient: rfc822; ?bob@example.test\r?$", report)


def test_swaks_postmaster(make_mailserver: Any, tmp_path: Path) -> None:
    """RFC 5321 §4.5.1: ``postmaster@domain`` and a bare ``<Postmaster>`` (any case) are
    accepted without a domain check and reach the configured mailboxes."""
    ms = make_mailserver(f'[smtp]\npostmaster = "{USER}"\n')
    ms.run(ms.store.add_alias("postmaster@example.test", [BOB]))
    for rcpt, account in (("Postmaster", ms.alice), ("POSTMASTER@example.test", ms.bob)):
        data = message(f"to-{rcpt}", to=rcpt)
        proc = swaks(
            ms, "smtp", "--from", "carol@elsewhere.test", "--to", rcpt,
            "--data", data_file(tmp_path, data),
        )  # fmt: skip
        assert proc.returncode == 0, describe(proc)
        (text,) = texts(ms, account)
        trace_prefix(text, data)


def test_postfix_smtp_source_many_transactions(mailserver: Any) -> None:
    """Postfix's smtp-source: five parallel sessions, several transactions per connection
    (``-d``), 100 messages; every one stored once, whole."""
    binary = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not Path(binary).exists():
        pytest.skip("smtp-source not installed (Debian package postfix)")
    ms = mailserver
    proc = run(
        [binary, "-d", "-s", "5", "-m", "100", "-l", "2000", "-f", "carol@elsewhere.test",
         "-t", BOB, "-M", "client.test", f"{ms.host}:{ms.ports['smtp']}"]
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    got = texts(ms, ms.bob)
    assert len(got) == 100
    for text in got:
        assert text.startswith(b"Return-Path: <carol@elsewhere.test>\r\n")
        assert text.endswith(b"\r\n") and len(text) > 2000
