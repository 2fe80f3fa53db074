"""Delivery status notifications: RFC 3464 reports in RFC 6522 ``multipart/report``.

A report has three parts (RFC 3464 §2, RFC 6522 §3):

1. ``text/plain``: what happened, for a person;
2. ``message/delivery-status``: one per-message block (``Reporting-MTA``,
   ``Original-Envelope-Id``, ``Arrival-Date``; §2.2) then one block per recipient
   (``Original-Recipient``, ``Final-Recipient``, ``Action``, ``Status``, ``Remote-MTA``,
   ``Diagnostic-Code``, ``Last-Attempt-Date``, ``Will-Retry-Until``; §2.3);
3. the original message (``message/rfc822``) or only its header
   (``text/rfc822-headers``), as RFC 3461 §4.3 RET asks.

Reports are sent with the null reverse-path (RFC 5321 §4.5.5) and carry
``Auto-Submitted: auto-replied`` (RFC 3834 §5) so that nothing answers them in turn.
"""

from __future__ import annotations

import re
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

FULL_RETURN_LIMIT = 256 * 1024
"""Without RET, failure reports include the whole original up to this size, else the
header only (RFC 3461 §4.3 leaves the choice to the MTA)."""

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")
_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """RFC 3464 §2.3 per-recipient fields."""

    final_recipient: str
    action: str
    """``failed``, ``delayed``, ``delivered``, ``relayed`` or ``expanded`` (§2.3.3)."""
    status: str
    """RFC 3463 ``class.subject.detail``."""
    original_recipient: str | None = None
    """``addr-type;address`` from ORCPT (RFC 3461 §4.2), decoded."""
    remote_mta: str | None = None
    diagnostic: str | None = None
    """``diagnostic-type; text`` (§2.3.6), e.g. ``smtp; 550 5.1.1 no such user``."""
    last_attempt: float | None = None
    will_retry_until: float | None = None


@dataclass(frozen=True, slots=True)
class Report:
    reporting_mta: str
    """Our host name (§2.2.2 ``Reporting-MTA: dns; name``)."""
    to: str
    """The original envelope sender, who receives the report."""
    recipients: Sequence[RecipientReport]
    original: bytes
    """The original message as queued (CRLF lines)."""
    arrival: float
    envid: str | None = None
    ret: str | None = None
    """``FULL``, ``HDRS`` or None (RFC 3461 §4.3)."""


def _clean(text: str) -> str:
    """One line with no control characters (text from remote servers)."""
    return _CONTROL_RE.sub(" ", text).strip()


def _date(when: float) -> str:
    return format_datetime(datetime.fromtimestamp(when, UTC))


def _field(name: str, value: str) -> str:
    """``Name: value`` folded at spaces to stay under 78 characters (RFC 5322 §2.2.3)."""
    out = f"{name}:"
    length = len(out)
    empty = True
    for word in _clean(value).split():
        if not empty and length + 1 + len(word) > 78:
            out += "\r\n"
            length = 0
        out += " " + word
        length += 1 + len(word)
        empty = False
    return out


def _typed(value: str, default_type: str) -> str:
    """``type; value`` with the type added when missing."""
    if ";" in value:
        kind, _, rest = value.partition(";")
        return f"{kind.strip()}; {rest.strip()}"
    return f"{default_type}; {value.strip()}"


def header_section(message: bytes) -> bytes:
    """The header of ``message`` (up to the blank line), CRLF-terminated."""
    m = _HEADER_END_RE.search(message)
    head = message if m is None else message[: m.start()]
    return head.rstrip(b"\r\n") + b"\r\n"


def _subject(actions: set[str]) -> str:
    if "failed" in actions:
        return "Undelivered Mail Returned to Sender"
    if "delayed" in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def _human(report: Report) -> str:
    lines = [f"This is the mail system at host {report.reporting_mta}.", ""]
    by_action: dict[str, list[RecipientReport]] = {}
    for r in report.recipients:
        by_action.setdefault(r.action, []).append(r)
    intro = {
        "failed": "Your message could not be delivered to the following recipients. "
        "This is a permanent error; the message will not be retried:",
        "delayed": "Your message has not been delivered yet to the following recipients. "
        "The mail system will keep trying; you do not need to send it again:",
        "delivered": "Your message was delivered to the following recipients:",
        "relayed": "Your message was handed on to the following recipients' mail "
        "systems, which do not confirm delivery:",
        "expanded": "Your message was forwarded to the following recipients:",
    }
    for action, recipients in by_action.items():
        lines.extend(textwrap.wrap(intro.get(action, f"Status {action}:"), 76))
        lines.append("")
        for r in recipients:
            why = _clean(r.diagnostic.partition(";")[2]) if r.diagnostic else r.status
            lines.extend(
                textwrap.wrap(
                    f"<{_clean(r.final_recipient)}>: {why}",
                    76,
                    initial_indent="  ",
                    subsequent_indent="    ",
                    break_long_words=False,
                    break_on_hyphens=False,
                )
            )
            if r.will_retry_until is not None:
                lines.append(f"    (will retry until {_date(r.will_retry_until)})")
        lines.append("")
    lines.append("The delivery status report and the original message are attached.")
    return "\r\n".join(lines) + "\r\n"


def _status_block(report: Report) -> str:
    head = [_field("Reporting-MTA", f"dns; {report.reporting_mta}")]
    if report.envid:
        head.append(_field("Original-Envelope-Id", report.envid))
    head.append(_field("Arrival-Date", _date(report.arrival)))
    blocks = ["\r\n".join(head)]
    for r in report.recipients:
        fields = []
        if r.original_recipient:
            fields.append(_field("Original-Recipient", _typed(r.original_recipient, "rfc822")))
        fields.append(_field("Final-Recipient", f"rfc822; {r.final_recipient}"))
        fields.append(_field("Action", r.action))
        fields.append(_field("Status", r.status))
        if r.remote_mta:
            fields.append(_field("Remote-MTA", f"dns; {r.remote_mta}"))
        if r.diagnostic:
            fields.append(_field("Diagnostic-Code", _typed(r.diagnostic, "smtp")))
        if r.last_attempt is not None:
            fields.append(_field("Last-Attempt-Date", _date(r.last_attempt)))
        if r.will_retry_until is not None:
            fields.append(_field("Will-Retry-Until", _date(r.will_retry_until)))
        blocks.append("\r\n".join(fields))
    return "\r\n\r\n".join(blocks) + "\r\n"


def returns_full(report: Report) -> bool:
    """Whole original (True) or header only, per RET and the kind of report."""
    if report.ret == "HDRS":
        return False
    if report.ret == "FULL":
        return True
    failed = any(r.action == "failed" for r in report.recipients)
    return failed and len(report.original) <= FULL_RETURN_LIMIT


def build(report: Report, now: float) -> bytes:
    """The report as a complete message (CRLF line ends)."""
    boundary = f"=_correo_{secrets.token_hex(12)}"
    actions = {r.action for r in report.recipients}
    text = _human(report).encode("utf-8")
    status = _status_block(report).encode("utf-8")
    full = returns_full(report)
    original = report.original if full else header_section(report.original)
    if not original.endswith(b"\r\n"):
        original += b"\r\n"
    to = _clean(report.to)
    headers = [
        _field("From", f"Mail Delivery System <MAILER-DAEMON@{report.reporting_mta}>"),
        _field("To", to),
        _field("Subject", _subject(actions)),
        _field("Date", _date(now)),
        _field("Message-ID", f"<{secrets.token_hex(12)}.dsn@{report.reporting_mta}>"),
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
    ]
    cte_text = "7bit" if text.isascii() else "8bit"
    parts = [
        "\r\n".join(headers).encode() + b"\r\n\r\n",
        b"This is a MIME-encapsulated message.\r\n\r\n",
        f"--{boundary}\r\n".encode(),
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {cte_text}"
        "\r\nContent-Description: Notification\r\n\r\n".encode(),
        text,
        f"\r\n--{boundary}\r\n".encode(),
        b"Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n",
        status,
        f"\r\n--{boundary}\r\n".encode(),
        (
            b"Content-Type: message/rfc822\r\nContent-Description: Undelivered Message\r\n"
            if full
            else b"Content-Type: text/rfc822-headers\r\n"
            b"Content-Description: Undelivered Message Headers\r\n"
        ),
        b"\r\n" if original.isascii() else b"Content-Transfer-Encoding: 8bit\r\n\r\n",
        original,
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts)
