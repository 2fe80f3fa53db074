"""SMTP end to end with the stdlib client over real sockets: MX receiving, submission,
AUTH, STARTTLS, SMTPUTF8, DSN parameters, policy replies and what lands in the store."""

from __future__ import annotations

import email
import email.policy
import logging
import shutil
import smtplib
import subprocess
from typing import Any

import pytest

from correo.store.base import Account

SMTP_ONLY = "[listen]\npop3 = []\npop3s = []\nimap = []\nimaps = []\n"
"""Only the SMTP listeners: these tests do not depend on the other protocols."""


@pytest.fixture(params=["main-process", "workers"])
def mailserver(make_mailserver: Any, request: pytest.FixtureRequest) -> Any:
    """The shared fixture's server, SMTP listeners only; each test runs with the MX port
    served by the main process and by worker processes (``[smtp] workers``)."""
    workers = "[smtp]\nworkers = 2\n" if request.param == "workers" else ""
    return make_mailserver(SMTP_ONLY + workers)


@pytest.fixture
def make_smtp_server(make_mailserver: Any) -> Any:
    return lambda extra="": make_mailserver(SMTP_ONLY + extra)


MSG = b"From: x@elsewhere.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nhello\r\n"


def inbox(ms: Any, account: Account) -> list[bytes]:
    """Full texts (prefix + body) of the messages in the account's INBOX."""

    async def go() -> list[bytes]:
        box = await ms.store.get_mailbox(account.id, "INBOX")
        infos = await ms.store.message_infos(box.id)
        msgs = await ms.store.get_messages(box.id, [i.uid for i in infos])
        out = []
        for m in msgs:
            body = await ms.store.open_body(m)
            out.append(await body.read())
        return out

    return ms.run(go())


def smtp(ms: Any, service: str = "smtp") -> smtplib.SMTP:
    return smtplib.SMTP(ms.host, ms.ports[service], local_hostname="client.test", timeout=10)


def test_mx_delivers_to_local_inbox(mailserver: Any) -> None:
    with smtp(mailserver) as s:
        code, ehlo = s.ehlo()
        assert code == 250
        for kw in (
            b"PIPELINING",
            b"SIZE",
            b"8BITMIME",
            b"SMTPUTF8",
            b"ENHANCEDSTATUSCODES",
            b"CHUNKING",
            b"DSN",
            b"STARTTLS",
        ):
            assert kw in ehlo
        assert b"AUTH" not in ehlo  # AUTH on submission only
        refused = s.sendmail("x@elsewhere.test", ["alice@example.test"], MSG)
        assert refused == {}
    (text,) = inbox(mailserver, mailserver.alice)
    assert text.startswith(
        b"Return-Path: <x@elsewhere.test>\r\nDelivered-To: alice@example.test\r\nReceived: from "
        b"client.test ([127.0.0.1])\r\n\tby mx.example.test (correo)\r\n\twith ESMTP id "
    )
    assert text.endswith(MSG)
    assert b"\tfor <alice@example.test>;" in text


def test_one_body_for_many_recipients_and_dedup(mailserver: Any) -> None:
    with smtp(mailserver) as s:
        s.sendmail(
            "x@elsewhere.test",
            ["alice@example.test", "bob@example.test", "Alice+tag@EXAMPLE.test"],
            MSG,
        )
    (a,) = inbox(mailserver, mailserver.alice)
    (b,) = inbox(mailserver, mailserver.bob)
    assert a.split(b"Received:", 1)[1] == b.split(b"Received:", 1)[1]
    assert b"Delivered-To: bob@example.test\r\n" in b
    assert b"\tfor <" not in a  # several recipients: no Bcc disclosure


def test_unknown_user_and_open_relay_refused(mailserver: Any) -> None:
    with smtp(mailserver) as s:
        s.ehlo()
        s.mail("x@elsewhere.test")
        assert s.rcpt("nobody@example.test") == (550, b"5.1.1 No such user here")
        assert s.rcpt("bob@elsewhere.test") == (554, b"5.7.1 Relay access denied")
        assert s.rcpt("bob%elsewhere.test@example.test")[0] == 550
        assert s.rcpt("alice@example.test")[0] == 250


def test_postmaster_always_accepted(make_smtp_server: Any) -> None:
    ms = make_smtp_server('[smtp]\npostmaster = "bob@example.test"\n')
    with smtp(ms) as s:
        s.sendmail("", ["Postmaster", "postmaster@example.test"], MSG)
    assert len(inbox(ms, ms.bob)) == 1


def test_postmaster_unconfigured_is_temporary(mailserver: Any) -> None:
    with smtp(mailserver) as s:
        s.ehlo()
        s.mail("")
        assert s.rcpt("Postmaster")[0] == 451


def test_alias_and_catch_all(mailserver: Any) -> None:
    mailserver.run(
        mailserver.store.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
    )
    mailserver.run(mailserver.store.add_alias("@example.test", ["bob@example.test"]))
    with smtp(mailserver) as s:
        s.sendmail("x@elsewhere.test", ["team@example.test"], MSG)
        s.sendmail("x@elsewhere.test", ["whoever@example.test"], MSG)
    assert len(inbox(mailserver, mailserver.alice)) == 1
    assert len(inbox(mailserver, mailserver.bob)) == 2


def test_size_limit(make_smtp_server: Any) -> None:
    ms = make_smtp_server("[limits]\nmax_message_size = 2000\n")
    with smtp(ms) as s:
        s.ehlo()
        assert s.esmtp_features["size"] == "2000"
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            s.sendmail("x@elsewhere.test", ["alice@example.test"], MSG + b"x" * 3000)
        assert info.value.smtp_code == 552
        assert info.value.smtp_error.startswith(b"5.3.4")
        # without SIZE declared: refused at the end of data
        s.rset()
        s.mail("x@elsewhere.test")
        s.rcpt("alice@example.test")
        code, text = s.data(MSG + b"x" * 3000)
        assert (code, text[:5]) == (552, b"5.3.4")
    assert inbox(ms, ms.alice) == []


def test_quota(mailserver: Any) -> None:
    mailserver.add_user("full@example.test", "secret", quota=1000)
    mailserver.deliver("full@example.test", b"Subject: x\r\n\r\n" + b"y" * 900)
    mailserver.add_user("small@example.test", "secret", quota=400)
    with smtp(mailserver) as s:
        s.ehlo()
        s.mail("x@elsewhere.test", ["SIZE=500"])
        assert s.rcpt("full@example.test") == (452, b"4.2.2 Mailbox full")
        assert s.rcpt("small@example.test") == (552, b"5.2.2 Message exceeds the mailbox quota")


def test_submission_requires_tls_then_auth(make_smtp_server: Any) -> None:
    ms = make_smtp_server("")  # even on loopback: no AUTH before TLS on submission
    with smtp(ms, "submission") as s:
        s.ehlo()
        assert not s.has_extn("auth")
        assert s.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=")[0] == 538
        assert s.docmd("MAIL", "FROM:<alice@example.test>") == (
            530,
            b"5.7.0 Authentication required",
        )
        s.starttls(context=ms.client_tls())
        s.ehlo()
        assert s.has_extn("auth") and "PLAIN" in s.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("alice@example.test", "wrong")
        s.login("alice@example.test", "secret")
        assert s.sendmail("alice@example.test", ["bob@example.test"], MSG) == {}
    (text,) = inbox(ms, ms.bob)
    head = text.split(b"\r\n\r\n", 1)[0]
    assert b"with ESMTPSA id" in head and b"(using TLSv1." in head
    assert b"\r\nMessage-ID: <" in head and b"\r\nDate: " in head  # RFC 6409 §8


def test_login_mechanism_and_sender_ownership(mailserver: Any) -> None:
    mailserver.run(mailserver.store.add_alias("sales@example.test", ["alice@example.test"]))
    with smtp(mailserver, "submission") as s:
        s.ehlo()
        s.starttls(context=mailserver.client_tls())
        s.ehlo()
        s.user, s.password = "alice@example.test", "secret"
        assert s.auth("LOGIN", s.auth_login, initial_response_ok=False)[0] == 235
        assert s.mail("bob@example.test") == (
            553,
            b"5.7.1 Sender address not owned by the authenticated user",
        )
        assert s.mail("sales@example.test")[0] == 250
        s.rset()
        assert s.mail("alice+lists@example.test")[0] == 250
        assert s.rcpt("someone@remote.test")[0] == 250  # authenticated: relayed via queue
        assert s.data(MSG)[0] == 250


def test_submissions_implicit_tls(mailserver: Any) -> None:
    with smtplib.SMTP_SSL(
        mailserver.host,
        mailserver.ports["submissions"],
        context=mailserver.client_tls(),
        timeout=10,
    ) as s:
        s.login("bob@example.test", "secret")
        s.sendmail("bob@example.test", ["alice@example.test"], MSG)
    (text,) = inbox(mailserver, mailserver.alice)
    assert b"with ESMTPSA" in text


def test_smtputf8_and_dsn_parameters(mailserver: Any) -> None:
    mailserver.add_user("jöran@example.test", "secret")
    with smtp(mailserver) as s:
        s.ehlo()
        code, _ = s.mail(
            "sëndér@elsewhere.test", ["SMTPUTF8", "BODY=8BITMIME", "RET=HDRS", "ENVID=abc+2Bdef"]
        )
        assert code == 250
        assert (
            s.rcpt(
                "jöran@example.test", ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;j+F6ran@example.test"]
            )[0]
            == 250
        )
        code, _ = s.data("Subject: grüße\r\n\r\nçà\r\n".encode())
        assert code == 250
        s.rset()
        s.send("MAIL FROM:<sëndér@elsewhere.test>\r\n".encode())
        assert s.getreply()[0] == 553  # UTF-8 needs SMTPUTF8
        assert s.docmd("MAIL", "FROM:<a@b.test> BODY=BINARYMIME")[0] == 555


def test_auth_rate_limit_and_no_password_in_logs(
    make_smtp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ms = make_smtp_server("[auth]\nmax_failures = 3\n")
    caplog.set_level(logging.DEBUG)
    with smtp(ms, "submission") as s:
        s.ehlo()
        s.starttls(context=ms.client_tls())
        s.ehlo()
        s.user = "alice@example.test"
        for _ in range(3):
            s.password = "hunter2-wrong"
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                s.auth("PLAIN", s.auth_plain)
            assert info.value.smtp_code == 535
        s.password = "secret"
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            s.auth("PLAIN", s.auth_plain)
        assert info.value.smtp_code == 454  # cooling off, even with the right password
    with smtp(ms, "submission") as s:
        s.ehlo()
        s.starttls(context=ms.client_tls())
        s.ehlo()
        assert s.docmd("AUTH", "PLAIN")[0] == 334
        assert s.docmd("*") == (501, b"5.7.0 Authentication cancelled")
        assert s.docmd("AUTH", "PLAIN !!!!")[0] == 501
    text = caplog.text
    # the password is "secret"; the config key [relay] srs_secret may be named in warnings
    assert "hunter2" not in text and "secret" not in text.replace("srs_secret", "")
    import base64

    for pw in (b"hunter2-wrong", b"secret"):
        assert base64.b64encode(b"\0alice@example.test\0" + pw).decode() not in text
        assert base64.b64encode(pw).decode() not in text


def test_bdat_with_smtplib_socket(mailserver: Any) -> None:
    with smtp(mailserver) as s:
        s.ehlo()
        s.mail("x@elsewhere.test")
        s.rcpt("alice@example.test")
        s.send(b"BDAT %d\r\n" % 10 + MSG[:10])
        assert s.getreply() == (250, b"2.0.0 10 octets received")
        rest = MSG[10:]
        s.send(b"BDAT %d LAST\r\n" % len(rest) + rest)
        code, text = s.getreply()
        assert code == 250, text
    (text,) = inbox(mailserver, mailserver.alice)
    assert text.endswith(MSG)


def test_loop_detection(mailserver: Any) -> None:
    hops = b"Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n" * 101
    with smtp(mailserver) as s:
        s.ehlo()
        s.mail("x@elsewhere.test")
        s.rcpt("alice@example.test")
        assert s.data(hops + MSG) == (554, b"5.4.6 Too many Received: headers, mail loop suspected")
    assert inbox(mailserver, mailserver.alice) == []


def test_trusted_network_may_relay(make_smtp_server: Any) -> None:
    ms = make_smtp_server('[smtp]\ntrusted_networks = ["127.0.0.0/8"]\n')
    with smtp(ms) as s:
        s.ehlo()
        assert s.mail("x@example.test", ["RET=HDRS", "ENVID=id+2B1"])[0] == 250
        assert s.rcpt("far@remote.test", ["NOTIFY=FAILURE", "ORCPT=rfc822;far@remote.test"]) == (
            250,
            b"2.1.5 Recipient OK",
        )
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.data(MSG)[0] == 250
    import sqlite3

    with sqlite3.connect(ms.settings.db_path) as db:
        rows = db.execute(
            "SELECT m.sender, m.envid, m.ret, r.address, r.orcpt, r.notify, r.state"
            " FROM queue_messages m JOIN queue_recipients r ON r.queue_id = m.id"
        ).fetchall()
    assert rows == [
        (
            "x@example.test",
            "id+1",
            "HDRS",
            "far@remote.test",
            "rfc822;far@remote.test",
            "FAILURE",
            "pending",
        )
    ]
    assert len(inbox(ms, ms.alice)) == 1  # same transaction: local copy too


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_smtp(mailserver: Any, tmp_path: Any) -> None:
    msg = tmp_path / "m.eml"
    msg.write_bytes(MSG)
    done = subprocess.run(
        [
            "curl",
            "-sS",
            f"smtp://{mailserver.host}:{mailserver.ports['smtp']}/client.test",
            "--mail-from",
            "x@elsewhere.test",
            "--mail-rcpt",
            "alice@example.test",
            "--upload-file",
            str(msg),
        ],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    (text,) = inbox(mailserver, mailserver.alice)
    assert email.message_from_bytes(text, policy=email.policy.default)["Subject"] == "hi"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_submission_starttls_auth(mailserver: Any, tmp_path: Any) -> None:
    msg = tmp_path / "m.eml"
    msg.write_bytes(MSG)
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--ssl-reqd",
            "--cacert",
            str(mailserver.cafile),
            "-k",
            f"smtp://{mailserver.host}:{mailserver.ports['submission']}/client.test",
            "--user",
            "alice@example.test:secret",
            "--mail-from",
            "alice@example.test",
            "--mail-rcpt",
            "bob@example.test",
            "--upload-file",
            str(msg),
        ],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert len(inbox(mailserver, mailserver.bob)) == 1


async def test_idle_timeout_answers_421(tmp_path: Any) -> None:
    """RFC 5321 §4.5.3.2.7: after the timeout the server says 421 and closes. The
    configured minimum is 5 minutes, so the test shortens it past the config check."""
    import asyncio

    from correo import config
    from correo.server import Server

    settings = config.loads(
        f'data_dir = "{tmp_path / "data"}"\n[listen]\nsmtp = ["127.0.0.1:0"]\n',
        tmp_path / "correo.toml",
    )
    settings = config.replace(settings, limits=config.replace(settings.limits, smtp_timeout=0.3))
    server = Server(settings)
    await server.start()
    try:
        assert server.runner is not None
        port = server.runner.bound["smtp"][0].port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"220 ")
        writer.write(b"EHLO client.test\r\n")
        while (await reader.readline())[3:4] == b"-":
            pass
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line == b"421 4.4.2 Timeout waiting for input, closing connection\r\n"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await server.stop()


def test_over_quota_after_acceptance_bounces(mailserver: Any) -> None:
    """RFC 5321 §4.1.1.4: one reply for DATA; a recipient that filled up after RCPT
    gets a failure report (RFC 3464) to the sender, the others get the message."""
    mailserver.add_user("small@example.test", "secret", quota=500)
    with smtp(mailserver) as s:
        s.ehlo()
        s.mail("bob@example.test")
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.rcpt("small@example.test")[0] == 250  # no SIZE given: fits for now
        assert s.data(MSG + (b"x" * 98 + b"\r\n") * 10)[0] == 250
    assert len(inbox(mailserver, mailserver.alice)) == 1
    (report,) = inbox(mailserver, mailserver.bob)
    parsed = email.message_from_bytes(report, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert b"small@example.test" in report and b"5.2.2" in report


def test_vrfy_when_enabled(make_smtp_server: Any) -> None:
    ms = make_smtp_server("[smtp]\nvrfy = true\n")
    with smtp(ms) as s:
        s.ehlo()
        assert s.verify("alice@example.test") == (250, b"2.1.5 <alice@example.test>")
        assert s.verify("nobody@example.test")[0] == 550
        assert s.docmd("EXPN", "list")[0] == 502
    with smtp(ms := make_smtp_server()) as s:  # default: 252, no harvesting
        s.ehlo()
        assert s.verify("alice@example.test")[0] == 252


def test_unknown_user_and_wrong_password_look_alike(mailserver: Any) -> None:
    import base64

    answers = []
    with smtp(mailserver, "submission") as s:
        s.ehlo()
        s.starttls(context=mailserver.client_tls())
        s.ehlo()
        for user, pw in (("alice@example.test", "wrong"), ("nobody@example.test", "wrong")):
            token = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
            answers.append(s.docmd("AUTH", f"PLAIN {token}"))
        s.docmd("AUTH", "LOGIN")
        s.docmd(base64.b64encode(b"alice@example.test").decode())
        answers.append(s.docmd(base64.b64encode(b"wrong").decode()))
    assert answers == [(535, b"5.7.8 Authentication credentials invalid")] * 3
