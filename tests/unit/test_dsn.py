"""RFC 3464 reports, read back with the stdlib email package as a mail client would."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from correo.mail import dsn

ORIGINAL = (
    b"From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: hello\r\n"
    b"Message-ID: <m1@example.test>\r\n\r\nbody line\r\n"
)


def report(**kw: object) -> dsn.Report:
    base: dict[str, object] = {
        "reporting_mta": "mx.example.test",
        "to": "alice@example.test",
        "recipients": [
            dsn.RecipientReport(
                "bob@remote.test",
                "failed",
                "5.1.1",
                original_recipient="rfc822;Bob@Remote.test",
                remote_mta="mx.remote.test",
                diagnostic="smtp; 550 5.1.1 <bob@remote.test>: user unknown",
                last_attempt=1_780_000_100.0,
            )
        ],
        "original": ORIGINAL,
        "arrival": 1_780_000_000.0,
        "envid": "QQ314159",
    }
    base.update(kw)
    return dsn.Report(**base)  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_failure_report_structure() -> None:
    data = dsn.build(report(), now=1_780_000_200.0)
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"].addresses[0].addr_spec == "alice@example.test"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.example.test"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Date"].datetime.timestamp() == 1_780_000_200.0
    text, status, original = msg.iter_parts()
    assert "user unknown" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    head, rcpt = status.get_payload()
    assert head["Reporting-MTA"] == "dns; mx.example.test"
    assert head["Original-Envelope-Id"] == "QQ314159"
    assert head["Arrival-Date"]
    assert rcpt["Original-Recipient"] == "rfc822; Bob@Remote.test"
    assert rcpt["Final-Recipient"] == "rfc822; bob@remote.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.remote.test"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@remote.test>: user unknown"
    assert rcpt["Last-Attempt-Date"]
    assert original.get_content_type() == "message/rfc822"
    inner = original.get_content()
    assert inner["Message-ID"] == "<m1@example.test>"
    assert inner.get_content().strip() == "body line"


def test_ret_hdrs_and_delay_return_headers_only() -> None:
    for r in (
        report(ret="HDRS"),
        report(
            recipients=[
                dsn.RecipientReport(
                    "bob@remote.test",
                    "delayed",
                    "4.4.1",
                    diagnostic="smtp; 451 later",
                    will_retry_until=1_780_400_000.0,
                )
            ]
        ),
    ):
        msg = parse(dsn.build(r, now=1_780_000_200.0))
        part = list(msg.iter_parts())[2]
        assert part.get_content_type() == "text/rfc822-headers"
        assert b"body line" not in part.as_bytes()
        assert b"Subject: hello" in part.as_bytes()


def test_delay_report_fields() -> None:
    r = report(
        recipients=[
            dsn.RecipientReport(
                "bob@remote.test",
                "delayed",
                "4.4.1",
                diagnostic="451 try later",
                will_retry_until=1_780_400_000.0,
            )
        ]
    )
    msg = parse(dsn.build(r, now=1.0))
    assert "Delayed" in msg["Subject"]
    _head, rcpt = list(msg.iter_parts())[1].get_payload()
    assert rcpt["Action"] == "delayed"
    assert rcpt["Diagnostic-Code"] == "smtp; 451 try later"  # type added
    assert rcpt["Will-Retry-Until"]


def test_hostile_diagnostic_text_cannot_inject_fields() -> None:
    r = report(
        recipients=[
            dsn.RecipientReport(
                "bob@remote.test",
                "failed",
                "5.0.0",
                diagnostic="smtp; 550 no\r\nAction: delivered\r\n" + "x " * 80,
            )
        ]
    )
    data = dsn.build(r, now=1.0)
    _head, rcpt = list(parse(data).iter_parts())[1].get_payload()
    assert rcpt.get_all("Action") == ["failed"]
    assert max(len(line) for line in data.split(b"\r\n")) <= 78


def test_full_return_is_bounded() -> None:
    big = ORIGINAL + b"x" * (dsn.FULL_RETURN_LIMIT + 10)
    assert not dsn.returns_full(report(original=big))
    assert dsn.returns_full(report(original=big, ret="FULL"))
    assert dsn.header_section(ORIGINAL).endswith(b"<m1@example.test>\r\n")


def test_report_metadata_parses() -> None:
    """The store's parse-once step reads our reports without falling back."""
    from correo.mail.message import parse

    meta = parse(dsn.build(report(), now=1.0))
    assert meta.envelope.to is not None
    assert meta.size > 0
