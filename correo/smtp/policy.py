"""Who may send what to whom: every SMTP acceptance decision in one place (DESIGN.md
principle 6). The protocol core enforces syntax and limits; the session asks this module.

Recipients (RFC 5321 §4.1.1.3, answered at RCPT time, 550 5.1.1 when nobody is there):

1. ``<Postmaster>`` and ``postmaster@<local domain>`` are always accepted (RFC 5321
   §4.5.1): the domain's postmaster account or alias, else ``[smtp] postmaster``, else the
   first local domain that has one. With none configured anywhere the reply is
   451 4.3.5 (an operator error, logged), never a silent drop.
2. In a local domain: the alias or account of that name (the store keeps them
   apart); then ``user+tag`` → ``user`` (RFC 5233 subaddress), as alias or account; then
   the catch-all alias ``@domain``. Aliases expand recursively up to ``[queue]
   max_alias_depth``; an alias that leads nowhere (a loop) is refused with 550 5.1.1
   rather than accepted and dropped.
3. ``%`` and ``!`` in a local part of a local domain are refused (550 5.7.1): the
   %-hack and UUCP paths are never relayed (RFC 5321 §3.6.1).
4. Any other domain is remote: only an authenticated client or one from
   ``[smtp] trusted_networks`` may relay (else 554 5.7.1), and only while the outbound
   queue is available (:data:`QUEUE_AVAILABLE`, else 451 4.4.0). Alias targets in other
   domains forward through the same queue for any sender (the alias authorises them).
5. Quota: a recipient whose account is full gets 452 4.2.2; one whose quota is smaller
   than the declared SIZE gets 552 5.2.2 (RFC 3463: 4.2.2 mailbox full, 5.2.2 message
   exceeds the per-mailbox limit).

Senders: on ``submission``/``submissions`` MAIL needs AUTH (530 5.7.0, RFC 6409 §4.3);
an authenticated user may only use addresses they own — their account, ``+tag`` forms
of it, aliases that deliver to it (553 5.7.1, ``[smtp] require_sender_ownership``).
Per-account hourly limits (``hourly_messages`` counted at MAIL, ``hourly_recipients``
at each accepted RCPT) answer 450 4.7.1 so a stolen password cannot spray.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

from correo.auth.limits import HourlyCounter
from correo.config import Settings
from correo.mail.address import split_subaddress
from correo.smtp import replies
from correo.smtp.commands import Mail, Rcpt
from correo.smtp.replies import Reply
from correo.store.base import Account, Store

log = logging.getLogger(__name__)

QUEUE_AVAILABLE = True
"""Remote recipients (relay, alias forwarding) are queued with ``Store.deliver(...,
queue=QueueRequest(...))``. Set to False to refuse them with 451 4.4.0 instead."""

SUBMISSION_SERVICES = frozenset({"submission", "submissions"})


@dataclass(frozen=True, slots=True)
class Client:
    """What the policy knows about the connected client."""

    ip: str
    service: str
    """"smtp", "submission" or "submissions"."""
    account: Account | None = None
    """The authenticated account (RFC 4954), if any."""


@dataclass(frozen=True, slots=True)
class LocalTarget:
    account_id: int
    address: str
    """The account's address, for ``Delivered-To:``."""


@dataclass(frozen=True, slots=True)
class Recipient:
    """An accepted RCPT, resolved to where the message goes."""

    address: str
    """As the client gave it (normalised by the core)."""
    local: tuple[LocalTarget, ...] = ()
    remote: tuple[str, ...] = ()
    """Addresses to queue: the recipient itself, or alias targets in other domains."""
    notify: frozenset[str] = frozenset()
    orcpt: str | None = None


@dataclass(slots=True)
class Counters:
    """Per-account hourly submission counters, shared by every SMTP session."""

    messages: HourlyCounter = field(default_factory=HourlyCounter)
    recipients: HourlyCounter = field(default_factory=HourlyCounter)


class _Unresolved(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.lines[0])
        self.reply = reply


class Policy:
    def __init__(self, settings: Settings, store: Store, counters: Counters) -> None:
        self.settings = settings
        self.store = store
        self.counters = counters
        self._trusted = tuple(
            ipaddress.ip_network(n, strict=False) for n in settings.smtp.trusted_networks
        )

    # ------------------------------------------------------------------ clients
    def trusted(self, ip: str) -> bool:
        """``[smtp] trusted_networks`` (empty by default: not even loopback)."""
        if not self._trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._trusted)

    def may_relay(self, client: Client) -> bool:
        return client.account is not None or self.trusted(client.ip)

    def auth_required(self, client: Client) -> bool:
        return client.service in SUBMISSION_SERVICES and client.account is None

    # ------------------------------------------------------------------ MAIL
    async def check_sender(self, client: Client, mail: Mail) -> Reply | None:
        """None to accept MAIL FROM, or the refusal (RFC 5321 §4.1.1.2, RFC 6409 §4.3)."""
        if self.auth_required(client):
            return replies.R530_AUTH_REQUIRED
        account = client.account
        if account is None:
            return None
        smtp = self.settings.smtp
        if smtp.require_sender_ownership and not await self.owns(account, mail.sender):
            log.info("sender %r refused for %r: not owned", mail.sender, account.address)
            return replies.R553_NOT_OWNER
        if smtp.hourly_messages and not self.counters.messages.try_consume(
            account.address, 1, smtp.hourly_messages
        ):
            log.warning("hourly message limit reached for %r", account.address)
            return replies.R450_RATE_LIMITED
        return None

    async def owns(self, account: Account, sender: str) -> bool:
        """The account's own address, a ``+tag`` form of it, or an alias delivering to it."""
        if not sender:
            return False
        sender = sender.lower()
        mine = account.address.lower()
        if sender == mine or _base(sender) == mine:
            return True
        for candidate in dict.fromkeys((sender, _base(sender))):
            alias = await self.store.get_alias(candidate)
            if alias is not None and mine in (t.lower() for t in alias.targets):
                return True
        return False

    # ------------------------------------------------------------------ RCPT
    async def check_recipient(
        self, client: Client, rcpt: Rcpt, declared_size: int | None
    ) -> Recipient | Reply:
        """Resolve RCPT TO to local accounts and/or queued addresses, or refuse it."""
        try:
            local, remote = await self._resolve(rcpt.recipient, client)
        except _Unresolved as exc:
            return exc.reply
        if remote and not QUEUE_AVAILABLE:
            return replies.R451_NO_QUEUE
        if len(local) == 1 and not remote:
            refusal = await self._quota(local[0].account_id, declared_size)
            if refusal is not None:
                return refusal
        account = client.account
        smtp = self.settings.smtp
        if (
            account is not None
            and smtp.hourly_recipients
            and not self.counters.recipients.try_consume(account.address, 1, smtp.hourly_recipients)
        ):
            log.warning("hourly recipient limit reached for %r", account.address)
            return replies.R450_RATE_LIMITED
        return Recipient(
            address=rcpt.recipient,
            local=local,
            remote=remote,
            notify=rcpt.notify,
            orcpt=rcpt.orcpt,
        )

    async def verify(self, address: str) -> bool:
        """VRFY (RFC 5321 §3.5.1), when ``[smtp] vrfy`` enables it: does a local
        address deliver anywhere?"""
        domain = address.rpartition("@")[2]
        if not domain or not await self.store.is_local_domain(domain):
            return False
        try:
            return await self._expand(address.lower(), {}, {}, 0, set())
        except _Unresolved:
            return False

    async def _quota(self, account_id: int, declared_size: int | None) -> Reply | None:
        account = await self.store.get_account_by_id(account_id)
        if account is None or not account.quota:
            return None
        if declared_size is not None and declared_size > account.quota:
            return replies.R552_QUOTA
        if account.used >= account.quota or (
            declared_size is not None and account.used + declared_size > account.quota
        ):
            return replies.R452_MAILBOX_FULL
        return None

    async def _resolve(
        self, address: str, client: Client
    ) -> tuple[tuple[LocalTarget, ...], tuple[str, ...]]:
        if address == "postmaster":
            return await self._postmaster(None)
        local_part, _, domain = address.rpartition("@")
        if not await self.store.is_local_domain(domain):
            if not self.may_relay(client):
                raise _Unresolved(replies.R554_RELAY_DENIED)
            return (), (address,)
        if "%" in local_part or "!" in local_part:
            raise _Unresolved(replies.R550_PERCENT_HACK)
        local: dict[int, LocalTarget] = {}
        remote: dict[str, None] = {}
        found = await self._expand(address.lower(), local, remote, 0, set())
        if not found:
            if local_part.lower() == "postmaster":
                return await self._postmaster(domain)
            raise _Unresolved(replies.R550_NO_SUCH_USER)
        if not local and not remote:
            # an alias whose targets lead nowhere (a loop, removed accounts): refuse
            # rather than accept and drop
            log.warning("alias %r delivers nowhere", address)
            raise _Unresolved(replies.R550_NO_SUCH_USER)
        return tuple(local.values()), tuple(remote)

    async def _expand(
        self,
        address: str,
        local: dict[int, LocalTarget],
        remote: dict[str, None],
        depth: int,
        seen: set[str],
    ) -> bool:
        """Add where ``address`` (in a local domain) delivers to; False if nowhere."""
        if depth > self.settings.queue.max_alias_depth:
            log.warning("alias expansion of %r deeper than %d", address, depth - 1)
            raise _Unresolved(replies.R550_NO_SUCH_USER.with_text("Alias loop"))
        domain = address.rpartition("@")[2]
        candidates = [address]
        if _base(address) != address:
            candidates.append(_base(address))
        for candidate in candidates:
            if candidate not in seen:
                alias = await self.store.get_alias(candidate)
                if alias is not None:
                    await self._targets(alias.targets, local, remote, depth, seen | {candidate})
                    return True
            account = await self.store.get_account(candidate)
            if account is not None:
                if account.disabled:
                    raise _Unresolved(replies.R550_DISABLED)
                local.setdefault(account.id, LocalTarget(account.id, account.address))
                return True
        catch_all = f"@{domain}"
        if catch_all not in seen:
            alias = await self.store.get_alias(catch_all)
            if alias is not None:
                await self._targets(alias.targets, local, remote, depth, seen | {catch_all})
                return True
        return False

    async def _targets(
        self,
        targets: tuple[str, ...],
        local: dict[int, LocalTarget],
        remote: dict[str, None],
        depth: int,
        seen: set[str],
    ) -> None:
        for target in targets:
            target = target.lower()
            domain = target.rpartition("@")[2]
            if await self.store.is_local_domain(domain):
                if not await self._expand(target, local, remote, depth + 1, seen):
                    log.warning("alias target %r does not exist", target)
            else:
                remote.setdefault(target, None)

    async def _postmaster(
        self, domain: str | None
    ) -> tuple[tuple[LocalTarget, ...], tuple[str, ...]]:
        """RFC 5321 §4.5.1: postmaster is always accepted."""
        candidates: list[str] = []
        if domain:
            candidates.append(f"postmaster@{domain}")
        if self.settings.smtp.postmaster:
            candidates.append(self.settings.smtp.postmaster.lower())
        if domain is None:
            candidates.extend(f"postmaster@{d.name}" for d in await self.store.list_domains())
        for candidate in candidates:
            local: dict[int, LocalTarget] = {}
            remote: dict[str, None] = {}
            cand_domain = candidate.rpartition("@")[2]
            if not await self.store.is_local_domain(cand_domain):
                return (), (candidate,)
            if await self._expand(candidate, local, remote, 0, set()):
                return tuple(local.values()), tuple(remote)
        log.error(
            "no postmaster for %s: add an account or alias, or set [smtp] postmaster",
            domain or "the bare <Postmaster>",
        )
        raise _Unresolved(replies.R451_POSTMASTER_UNSET)


def _base(address: str) -> str:
    """``user+tag@domain`` → ``user@domain`` (RFC 5233 §1 subaddress)."""
    return split_subaddress(address)[0]
