"""Send the reports the queue owes: bounces, delay notices, success notices.

Who gets a report (RFC 3461 §4.1, RFC 5321 §4.5.5 / §6.1):

* never the null sender: a message from ``<>`` that fails is logged and dropped (a
  bounce of a bounce could loop forever);
* ``NOTIFY=NEVER`` → nothing; ``NOTIFY`` given → only the listed events (``FAILURE``,
  ``DELAY``, ``SUCCESS``); no ``NOTIFY`` → failures and delays.

A report goes out with the null sender: into the sender's INBOX when the sender is one
of our accounts (or a local alias of them), through the queue otherwise. It is stored
by ``Store.deliver`` before the owed mark is cleared, so a crash in between sends it
again rather than never (at-least-once, like everything in the queue).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from correo.mail import dsn
from correo.store.base import LocalDelivery, QueueRecipient, QueueRequest, Store
from correo.store.queue import DsnAction, QueuedRecipient, QueueEntry, QueueStore

if TYPE_CHECKING:
    from correo.context import Context

log = logging.getLogger(__name__)

_NOTIFY_KEYWORD = {
    DsnAction.FAILED: "FAILURE",
    DsnAction.DELAYED: "DELAY",
    DsnAction.DELIVERED: "SUCCESS",
    DsnAction.RELAYED: "SUCCESS",
    DsnAction.EXPANDED: "SUCCESS",
}


def wants_report(sender: str, notify: frozenset[str], action: DsnAction) -> bool:
    """RFC 3461 §4.1 NOTIFY semantics, and never to the null sender."""
    if not sender or "NEVER" in notify:
        return False
    if not notify:
        return action in (DsnAction.FAILED, DsnAction.DELAYED)
    return _NOTIFY_KEYWORD[action] in notify


class Reporter:
    """Builds and stores the reports owed by queue entries."""

    def __init__(
        self,
        store: Store,
        queue: QueueStore,
        hostname: str,
        expire_after: float,
        srs_secret: str = "",
    ) -> None:
        self.store = store
        self.srs_secret = srs_secret
        self.queue = queue
        self.hostname = hostname
        self.expire_after = expire_after
        self.sent_reports = 0

    async def send_owed(self, limit: int = 200) -> bool:
        """Handle owed reports; True when a report was queued for a remote sender."""
        queued_remote = False
        for entry in await self.queue.owed_reports(limit):
            try:
                queued_remote |= await self._entry(entry)
            except Exception:
                log.exception("queue %d: report could not be sent; will retry", entry.message.id)
        return queued_remote

    async def _entry(self, entry: QueueEntry) -> bool:
        message = entry.message
        done: list[tuple[int, DsnAction]] = []
        by_action: dict[DsnAction, list[QueuedRecipient]] = {}
        for r in entry.recipients:
            if r.dsn_pending is None:
                continue
            done.append((r.id, r.dsn_pending))
            if wants_report(message.sender, r.notify, r.dsn_pending):
                by_action.setdefault(r.dsn_pending, []).append(r)
            elif not message.sender:
                log.info(
                    "queue %d: %s to %s: null sender, no report; dropped",
                    message.id,
                    r.dsn_pending.value,
                    r.address,
                )
            else:
                log.info(
                    "queue %d: %s to %s: NOTIFY=%s, no report",
                    message.id,
                    r.dsn_pending.value,
                    r.address,
                    ",".join(sorted(r.notify)),
                )
        remote = False
        if by_action:
            body = await self.queue.read_body(message)
            original = message.prefix + body
            now = time.time()
            for action, recipients in by_action.items():
                report = dsn.Report(
                    reporting_mta=self.hostname,
                    to=message.sender,
                    recipients=[self._recipient(r, action, message.created) for r in recipients],
                    original=original,
                    arrival=message.created,
                    envid=message.envid,
                    ret=message.ret,
                )
                data = dsn.build(report, now)
                remote |= await self.dispatch(message.sender, data, message.smtputf8)
                self.sent_reports += 1
                log.info(
                    "queue %d: %s report for %s sent to <%s>",
                    message.id,
                    action.value,
                    ", ".join(r.address for r in recipients),
                    message.sender,
                )
        await self.queue.reports_sent(done)
        return remote

    def _recipient(
        self, r: QueuedRecipient, action: DsnAction, created: float
    ) -> dsn.RecipientReport:
        return dsn.RecipientReport(
            final_recipient=r.address,
            action=action.value,
            status=r.status or ("5.0.0" if action is DsnAction.FAILED else "4.0.0"),
            original_recipient=r.orcpt,
            remote_mta=r.remote_mta,
            diagnostic=r.last_error,
            last_attempt=time.time() if r.attempts else None,
            will_retry_until=(created + self.expire_after if action is DsnAction.DELAYED else None),
        )

    async def dispatch(self, to: str, data: bytes, smtputf8: bool = False) -> bool:
        return await deliver_report(self.store, to, data, smtputf8, self.srs_secret)


async def deliver_report(
    store: Store, to: str, data: bytes, smtputf8: bool = False, srs_secret: str = ""
) -> bool:
    """Store a report for ``to`` with the null sender (RFC 5321 §4.5.5): the local
    INBOX(es), or the queue. Returns True when it was queued for a remote address.

    A report for one of our SRS addresses (the sender of a copy an alias forwarded) goes
    to the original sender it encodes."""
    from correo.mail.message import prepare
    from correo.queue import srs

    if srs_secret and srs.is_srs(to) and await store.is_local_domain(to.rpartition("@")[2]):
        try:
            to = srs.reverse(to, srs_secret)
        except srs.SrsError as exc:
            log.warning("report for <%s> dropped: %s", to, exc)
            return False
    incoming = prepare(data)
    local, remote = await _targets(store, to)
    if not local and not remote:
        log.warning("report for <%s> dropped: no such local address", to)
        return False
    queue = None
    if remote:
        queue = QueueRequest(
            sender="",
            recipients=tuple(QueueRecipient(a) for a in remote),
            smtputf8=smtputf8,
            body_8bit=not data.isascii(),
        )
    await store.deliver(incoming, local, queue)
    return bool(remote)


async def _targets(store: Store, address: str) -> tuple[list[LocalDelivery], list[str]]:
    account = await store.get_account(address)
    if account is not None:
        return [_local(account.id, account.address)], []
    domain = address.rpartition("@")[2]
    if not await store.is_local_domain(domain):
        return [], [address]
    alias = await store.get_alias(address)
    local: list[LocalDelivery] = []
    remote: list[str] = []
    for target in alias.targets if alias else ():
        acct = await store.get_account(target)
        if acct is not None:
            local.append(_local(acct.id, acct.address))
        elif not await store.is_local_domain(target.rpartition("@")[2]):
            remote.append(target)
    return local, remote


def _local(account_id: int, address: str) -> LocalDelivery:
    prefix = f"Return-Path: <>\r\nDelivered-To: {address}\r\n".encode()
    return LocalDelivery(account_id, prefix=prefix)


@dataclass(frozen=True, slots=True)
class LocalOutcome:
    """What became of one local recipient after the message was accepted: a failure
    (over quota, a forwarding loop) or, for NOTIFY=SUCCESS, its delivery."""

    address: str
    status: str = "5.2.2"
    """RFC 3463 code; the default is "mailbox full" (over quota)."""
    diagnostic: str | None = "x-local; mailbox full (over quota)"
    notify: frozenset[str] = frozenset()
    orcpt: str | None = None
    action: DsnAction = DsnAction.FAILED


def delivered(address: str, notify: frozenset[str], orcpt: str | None) -> LocalOutcome:
    """RFC 3461 §5.2.3 (a): final delivery to a local mailbox, reported on SUCCESS."""
    return LocalOutcome(address, "2.0.0", None, notify, orcpt, DsnAction.DELIVERED)


async def report_local(
    ctx: Context,
    sender: str,
    outcomes: Sequence[LocalOutcome],
    original: bytes,
    *,
    envid: str | None = None,
    ret: str | None = None,
    smtputf8: bool = False,
) -> bool:
    """Report local outcomes after acceptance the way the queue reports remote ones:
    RFC 3464 report, NOTIFY honoured (RFC 3461 §4.1), never to ``<>``.

    For ``correo.smtp.delivery``: over-quota and looping recipients (failed) and
    NOTIFY=SUCCESS local deliveries (delivered). Returns True when a report was sent.
    """
    wanted = [o for o in outcomes if wants_report(sender, o.notify, o.action)]
    for o in outcomes:
        if o.action is DsnAction.FAILED:
            log.info(
                "local delivery to %s failed after acceptance: %s %s%s",
                o.address,
                o.status,
                o.diagnostic,
                "" if o in wanted else " (no report: null sender or NOTIFY)",
            )
    if not wanted:
        return False
    now = time.time()
    report = dsn.Report(
        reporting_mta=ctx.settings.hostname,
        to=sender,
        recipients=[
            dsn.RecipientReport(
                o.address,
                o.action.value,
                o.status,
                original_recipient=o.orcpt,
                diagnostic=o.diagnostic,
                last_attempt=now,
            )
            for o in wanted
        ],
        original=original,
        arrival=now,
        envid=envid,
        ret=ret,
    )
    if await deliver_report(
        ctx.store, sender, dsn.build(report, now), smtputf8, ctx.settings.relay.srs_secret
    ):
        from correo.queue.runner import wake

        wake(ctx)
    return True
