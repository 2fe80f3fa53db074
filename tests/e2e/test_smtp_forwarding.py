"""Alias forwarding end to end (issue 4, point 1): a real correo server takes mail over
SMTP for aliases of ours and forwards it through the queue to a real SMTP sink on
loopback (aiosmtpd, routed with [relay.routes]), with an SRS envelope sender and
``Delivered-To:``; bounces to the SRS address travel back; loops stop.
"""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
import test_queue_relay
from test_queue_relay import FAST, inbox, queue_entries, status_fields, wait_for

from correo.queue import srs

sinks = test_queue_relay.sinks  # the fixture

SECRET = "forwarding-secret"

MESSAGE = (
    b"From: Carol <carol@origin.test>\r\n"
    b"To: fwd@example.test\r\n"
    b"Subject: forwarded\r\n"
    b"Message-ID: <fwd1@origin.test>\r\n"
    b"\r\n"
    b"Hello through the alias.\r\n"
)


def forwarding(port: int) -> str:
    """remote.test (the alias target) and origin.test (the original sender) both go to
    the sink."""
    return (
        FAST
        + f'[relay]\nsrs_secret = "{SECRET}"\n'
        + f'[relay.routes]\n"remote.test" = "127.0.0.1:{port}"\n'
        + f'"origin.test" = "127.0.0.1:{port}"\n'
    )


def mx(ms: Any) -> smtplib.SMTP:
    """An unauthenticated client on the MX port, as another MTA would be."""
    client = smtplib.SMTP(ms.host, ms.ports["smtp"], timeout=30)
    client.ehlo("origin.test")
    return client


def test_forwarded_copy_gets_srs_sender_and_bounces_find_their_way_back(
    make_mailserver: Any, sinks: Any
) -> None:
    sink = sinks()
    ms = make_mailserver(forwarding(sink.port))
    ms.run(ms.store.add_alias("fwd@example.test", ["someone@remote.test"]))
    with mx(ms) as client:
        assert client.sendmail("carol@origin.test", ["fwd@example.test"], MESSAGE) == {}
    (got,) = wait_for(lambda: sink.received)
    assert got.rcpts == ["someone@remote.test"]
    assert got.sender.startswith("SRS0=") and got.sender.endswith("@example.test")
    assert srs.reverse(got.sender, SECRET) == "carol@origin.test"
    assert got.data.startswith(b"Delivered-To: fwd@example.test\r\nReceived: from origin.test")
    assert got.data.endswith(MESSAGE)
    wait_for(lambda: not queue_entries(ms))

    # the destination bounces: <> to the SRS address goes back to carol, even though
    # origin.test is not ours and the client is not authenticated
    bounce = b"From: MAILER-DAEMON@remote.test\r\nSubject: Undelivered\r\n\r\nsorry\r\n"
    with mx(ms) as client:
        assert client.sendmail("", [got.sender], bounce) == {}
    back = wait_for(lambda: sink.received[1:])
    assert (back[0].sender, back[0].rcpts) == ("<>", ["carol@origin.test"])  # aiosmtpd: <>
    assert back[0].data.endswith(bounce)

    # a tampered or unknown SRS address is refused, not relayed
    tampered = got.sender.replace("=carol@", "=mallory@")
    with mx(ms) as client:
        client.mail("")
        code, text = client.rcpt(tampered)
        assert (code, text[:5]) == (550, b"5.7.1")
        code, _text = client.rcpt("SRS0=xxxx=AB=origin.test=carol@example.test")
        assert code == 550
        client.rset()
    assert not queue_entries(ms)


def test_message_that_already_went_through_the_alias_is_not_forwarded_again(
    make_mailserver: Any, sinks: Any
) -> None:
    sink = sinks()
    ms = make_mailserver(forwarding(sink.port))
    ms.run(ms.store.add_alias("fwd@example.test", ["someone@remote.test"]))
    looped = b"Delivered-To: fwd@example.test\r\nReceived: from remote.test\r\n" + MESSAGE
    with mx(ms) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("bob@example.test", ["fwd@example.test"], looped)
        assert refused.value.smtp_code == 554
        detail: object = refused.value.args[1]  # bytes at run time (typeshed says str)
        assert isinstance(detail, bytes) and detail.startswith(b"5.4.6 Mail forwarding loop")
        # the session goes on: with another, deliverable recipient the message is
        # accepted for it and the looping one gets a failure report
        refused_rcpts = client.sendmail(
            "bob@example.test", ["fwd@example.test", "alice@example.test"], looped
        )
        assert refused_rcpts == {}
    assert not queue_entries(ms) and sink.received == []
    (copy,) = inbox(ms, "alice@example.test")
    assert copy["Subject"] == "forwarded"
    (report,) = wait_for(lambda: inbox(ms, "bob@example.test"))
    assert report.get_content_type() == "multipart/report"
    per_recipient = status_fields(report)[1]
    assert per_recipient["status"] == "5.4.6"
    assert per_recipient["final-recipient"].endswith("fwd@example.test")
    assert sink.received == []


def test_alias_with_local_and_remote_targets(make_mailserver: Any, sinks: Any) -> None:
    sink = sinks()
    ms = make_mailserver(forwarding(sink.port))
    ms.run(ms.store.add_alias("mix@example.test", ["alice@example.test", "someone@remote.test"]))
    with mx(ms) as client:
        assert client.sendmail("carol@origin.test", ["mix@example.test"], MESSAGE) == {}
    (local,) = inbox(ms, "alice@example.test")  # stored by the time of the 250
    assert local["Return-Path"] == "<carol@origin.test>"
    assert local["Delivered-To"] == "alice@example.test"
    (got,) = wait_for(lambda: sink.received)
    assert got.rcpts == ["someone@remote.test"]
    assert srs.reverse(got.sender, SECRET) == "carol@origin.test"
    assert got.data.startswith(b"Delivered-To: mix@example.test\r\n")
    assert b"Return-Path:" not in got.data
    wait_for(lambda: not queue_entries(ms))


def test_queue_bounce_of_a_forwarded_copy_reaches_the_original_sender(
    make_mailserver: Any, sinks: Any
) -> None:
    """The destination refuses the forwarded copy (550 at RCPT): our own bounce goes to
    the SRS sender, which must be reversed to the original local sender, not dropped."""
    sink = sinks(script=test_queue_relay.Script(rcpt={"gone@remote.test": "550 5.1.1 gone"}))
    ms = make_mailserver(forwarding(sink.port))
    ms.run(ms.store.add_alias("fwd@example.test", ["gone@remote.test"]))
    with mx(ms) as client:
        assert client.sendmail("bob@example.test", ["fwd@example.test"], MESSAGE) == {}
    (report,) = wait_for(lambda: inbox(ms, "bob@example.test"))
    assert report.get_content_type() == "multipart/report"
    text = report.as_bytes()
    assert b"Final-Recipient: rfc822; gone@remote.test" in text and b"5.1.1" in text
