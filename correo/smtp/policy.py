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
   domains forward through the same queue for any sender (the alias authorises them):
   they are :class:`Forward` entries, queued by ``correo.smtp.delivery`` with an SRS
   envelope sender and ``Delivered-To: <alias>`` (``correo.queue.srs``), and the aliases
   on the way to them form the recipient's ``loop_guard`` (a message that already
   carries ``Delivered-To:`` for one of them is a forwarding loop, refused at end of
   data with 554 5.4.6).
5. ``SRS0=...`` / ``SRS1=...`` in a local domain (a bounce coming back to mail we
   forwarded) is reversed with ``[relay] srs_secret`` and relayed to the original
   sender for any client, since we signed that address ourselves; a bad hash, an
   expired timestamp or a malformed address is refused with 550 5.7.1 so we are no open
   bounce relay. Without a secret, SRS addresses are ordinary local parts (SRS is off).
6. Quota: a recipient whose account is full gets 452 4.2.2; one whose quota is smaller
   than the declared SIZE gets 552 5.2.2 (RFC 3463: 4.2.2 mailbox full, 5.2.2 message
   exceeds the per-mailbox limit).

Senders: on ``submission``/``submissions`` MAIL needs AUTH (530 5.7.0, RFC 6409 §4.3);
an authenticated user may only use addresses they own — their account, ``+tag`` forms
of it, aliases that deliver to it (553 5.7.1, ``[smtp] require_sender_ownership``).
Per-account hourly limits (``hourly_messages`` counted at MAIL, ``hourly_recipients``
at each accepted RCPT) answer 450 4.7.1 so a stolen password cannot spray.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from dataclasses import dataclass, field

from correo.auth.limits import HourlyCounter
from correo.config import Settings
from correo.mail.address import split_subaddress
from correo.queue import srs
from correo.smtp import replies
from correo.smtp.commands import Mail, Rcpt
from correo.smtp.replies import Reply
from correo.store.base import Account, Store

log = logging.getLogger(__name__)

QUEUE_AVAILABLE = True
"""Remote recipients (relay, alias forwarding) are queued with ``Store.deliver(...,
queue=QueueRequest(...))``. Set to False to refuse them with 451 4.4.0 instead."""

SUBMISSION_SERVICES = frozenset({"submission", "submissions"})

R550_BAD_SRS = replies.reply(550, "5.7.1", "Invalid or expired SRS address")
"""RCPT to a forged, stale or malformed SRS address of a local domain."""


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
class Forward:
    """A target in another domain reached through an alias of ours."""

    target: str
    alias: str
    """The address (lower-case) whose alias names ``target``; for a catch-all, the
    address it caught. The forwarded copy's ``Delivered-To:`` value, and its domain is
    the SRS forwarder."""


@dataclass(frozen=True, slots=True)
class Recipient:
    """An accepted RCPT, resolved to where the message goes."""

    address: str
    """As the client gave it (normalised by the core)."""
    local: tuple[LocalTarget, ...] = ()
    remote: tuple[str, ...] = ()
    """Addresses to queue under the original envelope sender: the recipient itself
    (relay), the original sender of an SRS bounce, a remote ``[smtp] postmaster``."""
    notify: frozenset[str] = frozenset()
    orcpt: str | None = None
    forwards: tuple[Forward, ...] = ()
    """Alias targets in other domains: queued with an SRS sender and ``Delivered-To:``."""
    loop_guard: frozenset[str] = frozenset()
    """Lower-case aliases on the way to ``forwards``: a message already carrying
    ``Delivered-To:`` for one of them went round a forwarding loop."""


@dataclass(slots=True)
class _Expansion:
    """Where one RCPT delivers, while it is being resolved."""

    local: dict[int, LocalTarget] = field(default_factory=dict)
    remote: dict[str, None] = field(default_factory=dict)
    forwards: dict[str, Forward] = field(default_factory=dict)
    guard: set[str] = field(default_factory=set)
    accounts: dict[int, Account] = field(default_factory=dict)
    """The rows behind ``local``, as read while resolving (the quota check uses them
    rather than reading each account again in the same RCPT)."""

    def empty(self) -> bool:
        return not (self.local or self.remote or self.forwards)


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
        self._trusted = _networks(settings.smtp.trusted_networks)

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
        if client.account is None:
            return None
        # Read again: an account disabled (or removed) since AUTH may no longer send.
        account = await self.store.get_account(client.account.address)
        if account is None or account.disabled or account.id != client.account.id:
            log.info("sender refused: account %r disabled or removed", client.account.address)
            return replies.R535_DISABLED
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
            found = await self._resolve(rcpt.recipient, client, 0)
        except _Unresolved as exc:
            return exc.reply
        local, remote = tuple(found.local.values()), tuple(found.remote)
        forwards = tuple(found.forwards.values())
        if (remote or forwards) and not QUEUE_AVAILABLE:
            return replies.R451_NO_QUEUE
        if len(local) == 1 and not remote and not forwards:
            account_id = local[0].account_id
            refusal = await self._quota(account_id, declared_size, found.accounts.get(account_id))
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
            forwards=forwards,
            loop_guard=frozenset(found.guard),
        )

    async def verify(self, address: str) -> bool:
        """VRFY (RFC 5321 §3.5.1), when ``[smtp] vrfy`` enables it: does a local
        address deliver anywhere?"""
        domain = address.rpartition("@")[2]
        if not domain or not await self.store.is_local_domain(domain):
            return False
        try:
            return await self._expand(address.lower(), _Expansion(), 0, set())
        except _Unresolved:
            return False

    async def _quota(
        self, account_id: int, declared_size: int | None, account: Account | None = None
    ) -> Reply | None:
        """RFC 1870 §6.1 / RFC 3463 X.2.2: the declared SIZE against the account's quota.
        ``account`` is the row this RCPT already read, if any (else it is read here)."""
        if account is None:
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

    async def _resolve(self, address: str, client: Client, hops: int) -> _Expansion:
        if address == "postmaster":
            return await self._postmaster(None)
        local_part, _, domain = address.rpartition("@")
        if not await self.store.is_local_domain(domain):
            if not self.may_relay(client):
                raise _Unresolved(replies.R554_RELAY_DENIED)
            return _Expansion(remote={address: None})
        if "%" in local_part or "!" in local_part:
            raise _Unresolved(replies.R550_PERCENT_HACK)
        secret = self.settings.relay.srs_secret
        if secret and srs.is_srs(address):
            return await self._srs_bounce(address, client, hops)
        found = _Expansion()
        if not await self._expand(address.lower(), found, 0, set()):
            if local_part.lower() == "postmaster":
                return await self._postmaster(domain)
            raise _Unresolved(replies.R550_NO_SUCH_USER)
        if found.empty():
            # an alias whose targets lead nowhere (a loop, removed accounts): refuse
            # rather than accept and drop
            log.warning("alias %r delivers nowhere", address)
            raise _Unresolved(replies.R550_NO_SUCH_USER)
        return found

    async def _srs_bounce(self, address: str, client: Client, hops: int) -> _Expansion:
        """An SRS address of ours (``correo.queue.srs``): where a bounce to it goes. The
        original sender is relayed to for any client (we signed the address); one in a
        local domain resolves as usual (an SRS1 address may unwrap to an SRS0 one of
        ours, hence ``hops``)."""
        try:
            original = srs.reverse(address, self.settings.relay.srs_secret)
        except srs.SrsError as exc:
            log.info("SRS address %r refused: %s", address, exc)
            raise _Unresolved(R550_BAD_SRS) from None
        if hops > self.settings.queue.max_alias_depth:
            log.warning("SRS address %r unwraps too deep", address)
            raise _Unresolved(R550_BAD_SRS)
        domain = original.rpartition("@")[2]
        if await self.store.is_local_domain(domain):
            return await self._resolve(original, client, hops + 1)
        log.info("SRS bounce address %r relays to %r", address, original)
        return _Expansion(remote={original: None})

    async def _expand(
        self,
        address: str,
        out: _Expansion,
        depth: int,
        seen: set[str],
        via: tuple[str, ...] = (),
    ) -> bool:
        """Add where ``address`` (in a local domain) delivers to; False if nowhere.
        ``via`` is the chain of aliases that led here (for ``Recipient.loop_guard``)."""
        if depth > self.settings.queue.max_alias_depth:
            log.warning("alias expansion of %r deeper than %d", address, depth - 1)
            raise _Unresolved(replies.R550_NO_SUCH_USER.with_text("Alias loop"))
        domain = address.rpartition("@")[2]
        base = _base(address)
        candidates = (address,) if base == address else (address, base)
        for candidate in candidates:
            if candidate not in seen:
                alias = await self.store.get_alias(candidate)
                if alias is not None:
                    chain = (*via, candidate)
                    await self._targets(alias.targets, out, depth, seen | {candidate}, chain)
                    return True
            account = await self.store.get_account(candidate)
            if account is not None:  # disabled accounts still receive (issue 2)
                if account.id not in out.local:
                    out.local[account.id] = LocalTarget(account.id, account.address)
                    out.accounts[account.id] = account
                return True
        catch_all = f"@{domain}"
        if catch_all not in seen:
            alias = await self.store.get_alias(catch_all)
            if alias is not None:
                # Delivered-To names the address caught, not "@domain"
                chain = (*via, address)
                await self._targets(alias.targets, out, depth, seen | {catch_all}, chain)
                return True
        return False

    async def _targets(
        self,
        targets: tuple[str, ...],
        out: _Expansion,
        depth: int,
        seen: set[str],
        via: tuple[str, ...],
    ) -> None:
        for target in targets:
            target = target.lower()
            domain = target.rpartition("@")[2]
            if await self.store.is_local_domain(domain):
                if not await self._expand(target, out, depth + 1, seen, via):
                    log.warning("alias target %r does not exist", target)
            else:
                out.forwards.setdefault(target, Forward(target, via[-1]))
                out.guard.update(via)

    async def _postmaster(self, domain: str | None) -> _Expansion:
        """RFC 5321 §4.5.1: postmaster is always accepted."""
        candidates: list[str] = []
        if domain:
            candidates.append(f"postmaster@{domain}")
        if self.settings.smtp.postmaster:
            candidates.append(self.settings.smtp.postmaster.lower())
        if domain is None:
            candidates.extend(f"postmaster@{d.name}" for d in await self.store.list_domains())
        for candidate in candidates:
            cand_domain = candidate.rpartition("@")[2]
            if not await self.store.is_local_domain(cand_domain):
                return _Expansion(remote={candidate: None})
            found = _Expansion()
            if await self._expand(candidate, found, 0, set()):
                return found
        log.error(
            "no postmaster for %s: add an account or alias, or set [smtp] postmaster",
            domain or "the bare <Postmaster>",
        )
        raise _Unresolved(replies.R451_POSTMASTER_UNSET)


@functools.lru_cache(maxsize=16)
def _networks(specs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``[smtp] trusted_networks`` parsed, once per distinct setting rather than once per
    connection (a pure function of the configured strings: nothing to go stale)."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in specs)


def _base(address: str) -> str:
    """``user+tag@domain`` → ``user@domain`` (RFC 5233 §1 subaddress)."""
    return split_subaddress(address)[0]
