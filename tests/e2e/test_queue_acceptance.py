"""The issue's acceptance story, as a new user would try it: alice submits (587, AUTH)
to bob@remote.test; the sink gets it with our Received:; with the sink down it waits in
the queue, ``correo queue retry --all`` delivers it once the sink is back; with a short
``expire_after`` it comes back to alice's INBOX as an RFC 3464 bounce."""

from __future__ import annotations

import smtplib
from typing import Any

import test_queue_relay
from click.testing import CliRunner
from test_queue_relay import inbox, queue_entries, routed, status_fields, wait_for

from correo.cli import main

sinks = test_queue_relay.sinks  # the fixture

TEXT = (
    "From: Alice <alice@example.test>\r\nTo: Bob <bob@remote.test>\r\n"
    "Subject: acceptance\r\n\r\nHi Bob!\r\n"
)


def submit(ms: Any) -> None:
    with smtplib.SMTP(ms.host, ms.ports["submission"], timeout=10) as c:
        c.starttls(context=ms.client_tls())
        c.login("alice@example.test", "secret")
        c.sendmail("alice@example.test", ["bob@remote.test"], TEXT)


def test_submit_relay_retry_and_expire(make_mailserver: Any, sinks: Any) -> None:
    sink = sinks()
    ms = make_mailserver(routed(sink.port, '[queue]\nexpire_after = "10s"\n'))
    submit(ms)
    [got] = wait_for(lambda: sink.received)
    assert got.sender == "alice@example.test" and got.rcpts == ["bob@remote.test"]
    assert got.data.startswith(b"Received: ")
    assert b"by mx.example.test" in got.data.split(b"\r\n\r\n")[0]

    sink.stop()
    submit(ms)
    wait_for(
        lambda: (
            "deferred"
            in CliRunner().invoke(main, ["-c", str(ms.config_path), "queue", "list"]).output
        )
    )
    sink.start()
    out = CliRunner().invoke(main, ["-c", str(ms.config_path), "queue", "retry", "--all"])
    assert out.exit_code == 0
    wait_for(lambda: len(sink.received) == 2)
    wait_for(lambda: not queue_entries(ms))

    sink.stop()
    submit(ms)
    [report] = wait_for(lambda: inbox(ms, "alice@example.test"), timeout=40)
    assert report.get_content_type() == "multipart/report"
    _head, rcpt = status_fields(report)
    assert (rcpt["action"], rcpt["status"]) == ("failed", "4.4.7")
    assert rcpt["final-recipient"] == "rfc822; bob@remote.test"
