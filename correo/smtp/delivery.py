"""End of data: trace fields, submission fix-ups, one store transaction, one reply.

* ``Received:`` (RFC 5321 §4.4) is prepended to the shared body, with the protocol
  keyword of RFC 3848 / RFC 6531 §3.7.3 (ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTP...) and
  the TLS version and cipher in a comment (RFC 8314 §4.3 asks that TLS use be recorded).
  ``for <rcpt>`` only with a single recipient (RFC 5321 §7.6: no Bcc disclosure).
* ``Return-Path: <sender>`` and ``Delivered-To: <address>`` (RFC 5321 §4.4, §4.1.1.4
  at final delivery) are each local recipient's ``LocalDelivery.prefix``: the body is
  stored once however many recipients there are.
* Submissions (RFC 6409 §8.2-8.3) that lack ``Message-ID:`` or ``Date:`` get them.
* Loop protection (RFC 5321 §6.3): more than ``[smtp] max_received_headers``
  ``Received:`` fields → 554 5.4.6.
* The reply is 250 only after ``Store.deliver`` returned, i.e. committed (DESIGN.md
  "never lose mail"); a store failure answers 451 4.3.0 (452 4.3.1 when the disk is
  full) and nothing is stored. Recipients that turned out over quota after acceptance
  get an RFC 3464 bounce through the queue's report path
  (``correo.queue.bounce.report_local``: NOTIFY honoured, never to ``<>``);
  if *every* local recipient filled up and nothing is queued, nothing was stored and
  the reply is 452 4.2.2 instead.
* After queuing remote recipients the queue runner is woken (``correo.queue.runner.wake``)
  so relaying starts at once.

Alias forwarding (issue 4; Shevek's SRS as in ``correo.queue.srs``):

* A target in another domain reached through an alias (``Recipient.forwards``) is
  queued with the envelope sender rewritten by ``srs.forward(sender, <alias domain>,
  [relay] srs_secret)`` (the null sender stays null) and ``Delivered-To: <alias>`` in the
  queue entry's prefix; directly relayed recipients keep the original sender. Copies
  that differ in sender or prefix are separate queue requests of the ONE
  ``Store.deliver`` call: local copies and every queue entry commit together. An address
  that is both relayed directly and forwarded is sent once, directly. A forwarded copy
  carries ``ORCPT=rfc822;<the RCPT address>`` unless the client gave one (RFC 3461 §4.2).
* Without ``[relay] srs_secret`` forwarding still works but keeps the original sender
  (SPF may then fail at the destination): :func:`warn_if_unsigned` logs that once per
  server, when the first message is forwarded (or at start-up if the server calls it).
* Forwarding loops (``Delivered-To:`` already naming an alias in a recipient's
  ``loop_guard``, read from the parse-once header index): when every recipient loops,
  the message is refused with 554 5.4.6 and nothing is stored; otherwise it is accepted
  for the others (one reply per message, RFC 5321 §4.2.5) and the looping recipients
  get an RFC 3464 failure report with status 5.4.6 (``report_local``: NOTIFY
  honoured, never to ``<>``). A looping recipient is dropped whole (its local copies
  too: the message already went through it once), as Postfix's local(8) does.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from correo.mail.message import MessageMeta, normalize_crlf, prepare
from correo.queue import srs
from correo.queue.bounce import LocalOutcome, delivered, report_local
from correo.queue.runner import wake
from correo.smtp import replies
from correo.smtp.commands import Mail
from correo.smtp.policy import Recipient
from correo.smtp.replies import Reply
from correo.store.base import (
    DiskFullError,
    IncomingMessage,
    LocalDelivery,
    QueueRecipient,
    QueueRequest,
    TemporaryStoreError,
)

if TYPE_CHECKING:
    from correo.context import Context

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Trace:
    """What the Received: line says about the client (RFC 5321 §4.4)."""

    helo: str
    ip: str
    hostname: str
    """Ours."""
    session_id: str
    extended: bool
    tls: str
    """``TLSv1.3 TLS_AES_256_GCM_SHA384`` or "" (cleartext)."""
    authenticated: bool
    submission: bool
    """Accepted on submission/submissions from an authenticated user (RFC 6409)."""


def protocol_keyword(extended: bool, tls: bool, auth: bool, utf8: bool) -> str:
    """RFC 3848 §1 / RFC 6531 §3.7.3 ``with`` values."""
    if not extended:
        return "SMTP"
    base = "UTF8SMTP" if utf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if auth else "")


_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.\-:\[\]_]")
_date_memo: tuple[int, str] = (-1, "")


def _received_date(now: float) -> str:
    """RFC 5322 §3.3 date-time in UTC for ``now``, made once per second: the field has a
    resolution of one second and every message received in it says the same."""
    global _date_memo
    second = int(now)
    memo = _date_memo
    if memo[0] != second:
        memo = _date_memo = (second, email.utils.formatdate(second, localtime=False))
    return memo[1]


def received_header(trace: Trace, mail: Mail, recipients: Sequence[Recipient]) -> bytes:
    """``Received: from helo ([ip]) by host (correo) with ESMTPS id X for <r>; date``."""
    # RFC 5321 §4.4 Extended-Domain: keep the claimed name, minus anything that could
    # break the field's syntax (comments, ";", non-ASCII)
    helo = _HELO_UNSAFE.sub("_", trace.helo) or "unknown"
    ip = f"IPv6:{trace.ip}" if ":" in trace.ip else trace.ip
    with_ = protocol_keyword(trace.extended, bool(trace.tls), trace.authenticated, mail.smtputf8)
    lines = [f"Received: from {helo} ([{ip}])", f"\tby {trace.hostname} (correo)"]
    if trace.tls:
        lines.append(f"\t(using {trace.tls})")
    clause = f"\twith {with_} id {trace.session_id}"
    if len(recipients) == 1 and recipients[0].address != "postmaster":
        clause += f"\r\n\tfor <{recipients[0].address}>"
    lines.append(clause + ";")
    lines.append("\t" + _received_date(time.time()))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)


def header_names(data: bytes) -> list[bytes]:
    """Lower-cased field names of the header section (RFC 5322 §2.2), in order."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    if data.startswith(b"\r\n"):
        return []
    return [m.group(1).lower() for m in _HEADER_NAME.finditer(head)]


def submission_fixups(names: Sequence[bytes], hostname: str) -> bytes:
    """Missing ``Message-ID:`` / ``Date:`` for a submission (RFC 6409 §8.2, §8.3)."""
    out = b""
    if b"message-id" not in names:
        out += f"Message-ID: <{uuid.uuid4().hex}@{hostname}>\r\n".encode()
    if b"date" not in names:
        out += f"Date: {email.utils.formatdate(time.time(), localtime=True)}\r\n".encode()
    return out


def local_prefix(sender: str, address: str) -> bytes:
    return f"Return-Path: <{sender}>\r\nDelivered-To: {address}\r\n".encode()


def r554_forwarding_loop(alias: str) -> Reply:
    """RFC 3463 5.4.6 routing loop: the message came back through ``alias``."""
    return replies.reply(554, "5.4.6", f"Mail forwarding loop for {alias}")


_WARNED = "correo.smtp.delivery:srs-warned"


def warn_if_unsigned(ctx: Context) -> None:
    """Log once per server that forwarded mail keeps its sender (no SRS secret)."""
    if ctx.settings.relay.srs_secret or ctx.extras.get(_WARNED):
        return
    ctx.extras[_WARNED] = True
    log.warning(
        "[relay] srs_secret is not set: mail forwarded by aliases keeps its original "
        "envelope sender (no SRS), so SPF may fail at the destination"
    )


def forward_sender(sender: str, alias: str, secret: str) -> str:
    """The envelope sender of a copy forwarded by ``alias`` (SRS; see module doc)."""
    if not sender or not secret:
        return sender
    try:
        return srs.forward(sender, alias.rpartition("@")[2], secret)
    except srs.SrsError as exc:  # a malformed SRS1 sender: forward it as it is
        log.warning("sender %r not rewritten with SRS: %s", sender, exc)
        return sender


def forwarding_loops(message: IncomingMessage, recipients: Sequence[Recipient]) -> list[str]:
    """For each recipient, the alias of its ``loop_guard`` that the message's
    ``Delivered-To:`` fields already name, or "" when it does not loop."""
    if not any(r.loop_guard for r in recipients):
        return [""] * len(recipients)
    values = MessageMeta.from_json(message.meta).header_values("delivered-to")
    seen = {v.strip().strip("<>").strip().lower() for v in values}
    return [min(r.loop_guard & seen, default="") for r in recipients]


def _orcpt(rcpt: Recipient) -> str | None:
    """RFC 3461 §4.2: a relaying MTA may add ORCPT naming the RCPT it received."""
    if rcpt.orcpt is not None or rcpt.address == "postmaster":
        return rcpt.orcpt
    kind = "rfc822" if rcpt.address.isascii() else "utf-8"  # RFC 6533 §3
    return f"{kind};{rcpt.address}"


def plan(
    mail: Mail, recipients: Sequence[Recipient], secret: str, body_8bit: bool
) -> tuple[list[LocalDelivery], list[QueueRequest]]:
    """The local deliveries and queue requests for one message: direct relays under
    the original sender first, then one request per (SRS sender, forwarding alias)."""
    local: list[LocalDelivery] = []
    seen_accounts: set[int] = set()
    direct: dict[str, QueueRecipient] = {}
    forwarded: dict[tuple[str, str], dict[str, QueueRecipient]] = {}
    for rcpt in recipients:
        for target in rcpt.local:
            if target.account_id in seen_accounts:
                continue  # one copy per mailbox, however many addresses reach it
            seen_accounts.add(target.account_id)
            local.append(
                LocalDelivery(target.account_id, prefix=local_prefix(mail.sender, target.address))
            )
        for address in rcpt.remote:
            if address not in direct:
                orcpt = rcpt.orcpt if rcpt.remote == (rcpt.address,) else None
                direct[address] = QueueRecipient(address, orcpt=orcpt, notify=rcpt.notify)
    taken = set(direct)
    for rcpt in recipients:
        for fwd in rcpt.forwards:
            if fwd.target in taken:
                continue
            taken.add(fwd.target)
            key = (forward_sender(mail.sender, fwd.alias, secret), fwd.alias)
            forwarded.setdefault(key, {})[fwd.target] = QueueRecipient(
                fwd.target, orcpt=_orcpt(rcpt), notify=rcpt.notify
            )

    def request(sender: str, rcpts: dict[str, QueueRecipient], prefix: bytes) -> QueueRequest:
        return QueueRequest(
            sender=sender,
            recipients=tuple(rcpts.values()),
            envid=mail.envid,
            ret=mail.ret,
            smtputf8=mail.smtputf8,
            body_8bit=body_8bit,
            prefix=prefix,
        )

    queue = [request(mail.sender, direct, b"")] if direct else []
    queue += [
        request(sender, rcpts, srs.forward_prefix(alias))
        for (sender, alias), rcpts in forwarded.items()
    ]
    return local, queue


async def deliver(
    ctx: Context,
    trace: Trace,
    mail: Mail,
    recipients: Sequence[Recipient],
    text: bytes,
) -> Reply:
    """Store ``text`` for every recipient in one transaction; the reply to send.

    ``text`` is message text as the DATA reader or BDAT assembly hand it over
    (:mod:`correo.smtp.data`): CRLF line ends only, no bare LF (RFC 5321 §2.3.8)."""
    store = ctx.store
    names = header_names(text)
    hops = names.count(b"received")
    if hops > ctx.settings.smtp.max_received_headers:
        log.warning("[%s] loop: %d Received: fields from %s", trace.session_id, hops, trace.ip)
        return replies.R554_LOOP
    head = received_header(trace, mail, recipients)
    if trace.submission:
        head += submission_fixups(names, trace.hostname)
    # the text is CRLF already (see above): only our own lines could need it
    message = prepare(normalize_crlf(head) + text, crlf=True)

    looping: list[tuple[Recipient, str]] = []
    live: Sequence[Recipient] = recipients
    if any(r.loop_guard for r in recipients):  # else nothing can loop: no header to read
        loops = forwarding_loops(message, recipients)
        looping = [(r, alias) for r, alias in zip(recipients, loops, strict=True) if alias]
        live = [r for r, alias in zip(recipients, loops, strict=True) if not alias]
    for rcpt, alias in looping:
        log.warning(
            "[%s] forwarding loop: <%s> via %s already in Delivered-To (from <%s>)",
            trace.session_id, rcpt.address, alias, mail.sender,
        )  # fmt: skip
    if not live:  # nothing else to deliver: refuse it (RFC 5321 §4.2.5 one reply)
        return r554_forwarding_loop(looping[0][1])
    if any(r.forwards for r in live):
        warn_if_unsigned(ctx)
    body_8bit = mail.body == "8BITMIME" or not message.data.isascii()
    local, queue = plan(mail, live, ctx.settings.relay.srs_secret, body_8bit)
    queued = sum(len(q.recipients) for q in queue)
    try:
        # a lone request goes as itself: backends that take only one keep working
        requests = queue[0] if len(queue) == 1 else (queue or None)
        result = await store.deliver(message, local, requests)
    except DiskFullError:
        log.error("[%s] store full: message refused", trace.session_id)
        return replies.R452_DISK_FULL
    except TemporaryStoreError as exc:
        log.error("[%s] store error: %s", trace.session_id, exc)
        return replies.R451_LOCAL_ERROR
    except Exception:
        log.exception("[%s] delivery failed", trace.session_id)
        return replies.R451_LOCAL_ERROR
    if local and not result.delivered and not queued:
        # every recipient filled up since RCPT: nothing was stored, so say "later"
        log.info("[%s] all recipients over quota: 452", trace.session_id)
        return replies.R452_MAILBOX_FULL
    if result.queue_id is not None:
        wake(ctx)
    if result.over_quota:
        await _bounce_late(ctx, trace, mail, live, result.over_quota, message.data)
    if looping:
        await _bounce_loops(ctx, trace, mail, looping, message.data)
    stored = {account_id for account_id, _mailbox, _uid in result.delivered}
    successes = [
        delivered(rcpt.address, rcpt.notify, rcpt.orcpt)
        for rcpt in live
        if "SUCCESS" in rcpt.notify and any(t.account_id in stored for t in rcpt.local)
    ]
    if successes:  # RFC 3461 §5.2.3 (a): "delivered" for final local delivery
        await _bounce(ctx, trace, mail, successes, message.data)
    ident = message.sha256[:12]
    log.info(
        "[%s] accepted %s from <%s> size=%d local=%d queued=%d%s",
        trace.session_id, ident, mail.sender, len(message.data), len(result.delivered),
        queued, f" queue_ids={','.join(map(str, result.queue_ids))}" if result.queue_ids else "",
    )  # fmt: skip
    return replies.r250_message(ident)


async def _bounce_late(
    ctx: Context,
    trace: Trace,
    mail: Mail,
    recipients: Sequence[Recipient],
    over_quota: Sequence[int],
    original: bytes,
) -> None:
    """RFC 3461/3464 failure reports for recipients that filled up after RCPT time.
    The message is already accepted: a failure here is logged, never turned into a
    different SMTP reply."""
    failed: dict[str, tuple[Recipient, str]] = {}
    full = set(over_quota)
    for rcpt in recipients:
        for target in rcpt.local:
            if target.account_id in full and rcpt.address not in failed:
                failed[rcpt.address] = (rcpt, target.address)
    log.warning(
        "[%s] over quota after acceptance: %s (from <%s>)",
        trace.session_id, ", ".join(sorted(failed)), mail.sender,
    )  # fmt: skip
    failures = [
        LocalOutcome(address, notify=rcpt.notify, orcpt=rcpt.orcpt)
        for address, (rcpt, _account) in failed.items()
    ]
    await _bounce(ctx, trace, mail, failures, original)


async def _bounce_loops(
    ctx: Context,
    trace: Trace,
    mail: Mail,
    looping: Sequence[tuple[Recipient, str]],
    original: bytes,
) -> None:
    """RFC 3464 failure reports (status 5.4.6) for recipients that looped, when the
    message was accepted for others."""
    failures = [
        LocalOutcome(
            rcpt.address,
            status="5.4.6",
            diagnostic=f"smtp; 554 5.4.6 Mail forwarding loop for {alias}",
            notify=rcpt.notify,
            orcpt=rcpt.orcpt,
        )
        for rcpt, alias in looping
    ]
    await _bounce(ctx, trace, mail, failures, original)


async def _bounce(
    ctx: Context, trace: Trace, mail: Mail, outcomes: Sequence[LocalOutcome], original: bytes
) -> None:
    """Send the report; the message is already accepted, so a failure is only logged.
    A report owed to an SRS address of ours goes to the sender it stands for
    (``correo.queue.bounce.deliver_report``)."""
    try:
        await report_local(
            ctx, mail.sender, outcomes, original,
            envid=mail.envid, ret=mail.ret, smtputf8=mail.smtputf8,
        )  # fmt: skip
    except Exception:
        log.exception("[%s] delivery report could not be sent", trace.session_id)
