"""Hand queued messages to the next MTA: pick the hosts, open a session, apply replies.

Destinations come from ``[relay.routes]`` (the domain, else ``"*"``, a smarthost with
optional AUTH and TLS policy) or from DNS (:mod:`correo.queue.resolver`). A session is
opened on the first host that answers: a connection failure, or a 4xx/5xx greeting or
EHLO, moves on to the next MX (RFC 5321 §5.1); when every host fails the recipients are
deferred. TLS is opportunistic (RFC 3207, no certificate check; a failed handshake is
retried in plaintext) unless the route says ``tls = "require"`` or ``[relay]
require_tls`` is set, which demand a verified certificate and never fall back.

Reply handling for one message (RFC 5321 §4.2.1, §4.3.2):

========================================  ==========================================
reply                                     effect
========================================  ==========================================
2xx after the final dot                   accepted recipients delivered
4xx / 5xx to one RCPT                     that recipient deferred / failed
4xx / 5xx to MAIL, DATA or the final dot  every recipient deferred / failed
connection lost or timed out mid-way      every unfinished recipient deferred
========================================  ==========================================

Before sending: an 8-bit body to a server without 8BITMIME fails 5.6.3 (RFC 6152 §3,
we do not downgrade), a SMTPUTF8 message to a server without SMTPUTF8 fails 5.6.7
(RFC 6531 §3.2), a message above the server's SIZE fails 5.3.4 (RFC 1870 §6).
"""

from __future__ import annotations

import enum
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from correo.config import RelayRoute, Settings
from correo.queue.client import ConnectionLost, Reply, SmtpClient, Timeouts, xtext
from correo.queue.resolver import DnsFailure, MxResolver
from correo.store.queue import QueuedMessage, QueuedRecipient

log = logging.getLogger(__name__)


class TlsPolicy(enum.Enum):
    NONE = "none"
    OPPORTUNISTIC = "opportunistic"
    REQUIRE = "require"
    """A verified certificate for the host name (RFC 3207 §4.1), or no delivery."""


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    recipient: QueuedRecipient
    verdict: Verdict
    status: str
    diagnostic: str
    """RFC 3464 §2.3.6 ``diagnostic-type; text``, e.g. ``smtp; 550 5.1.1 unknown``."""
    remote_mta: str | None = None
    dsn_passed_on: bool = False
    """The next hop took our DSN parameters (RFC 3461 §5.2): it reports from now on."""


@dataclass(frozen=True, slots=True)
class Destination:
    host: str
    """Connect to this name or address."""
    port: int
    mx_name: str
    """For logs and Remote-MTA."""
    tls: TlsPolicy
    username: str = ""
    password_file: Path | None = None


class DestinationError(Exception):
    """No session could be opened: every recipient of the domain gets this result."""

    def __init__(
        self, status: str, diagnostic: str, *, permanent: bool, remote_mta: str | None = None
    ) -> None:
        super().__init__(diagnostic)
        self.status = status
        self.diagnostic = diagnostic
        self.permanent = permanent
        self.remote_mta = remote_mta


@dataclass(slots=True)
class Session:
    client: SmtpClient
    destination: Destination

    @property
    def usable(self) -> bool:
        return not self.client.broken


def route_for(settings: Settings, domain: str) -> RelayRoute | None:
    routes = settings.relay.routes
    return routes.get(domain.lower()) or routes.get("*")


def _tls_context(policy: TlsPolicy) -> ssl.SSLContext:
    if policy is TlsPolicy.REQUIRE:
        return ssl.create_default_context()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # opportunistic: RFC 7435 unauthenticated encryption
    return ctx


class Relay:
    """Opens sessions to a domain's hosts and sends messages over them."""

    def __init__(
        self,
        settings: Settings,
        resolver: MxResolver,
        timeouts: Timeouts,
        *,
        mx_port: int = 25,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.timeouts = timeouts
        self.hostname = settings.hostname
        self.mx_port = mx_port
        """Port of MX hosts: 25 (RFC 5321 §4.5.4.1); tests point it at their sinks."""

    async def destinations(self, domain: str) -> list[Destination]:
        route = route_for(self.settings, domain)
        if route is not None:
            return [
                Destination(
                    host=route.host,
                    port=route.port,
                    mx_name=route.host,
                    tls=TlsPolicy(route.tls),
                    username=route.username,
                    password_file=route.password_file,
                )
            ]
        policy = TlsPolicy.REQUIRE if self.settings.relay.require_tls else TlsPolicy.OPPORTUNISTIC
        try:
            hosts = await self.resolver.hosts(domain)
        except DnsFailure as exc:
            raise DestinationError(
                exc.status, f"dns; {exc.reason}", permanent=exc.permanent
            ) from None
        return [
            Destination(host=address, port=self.mx_port, mx_name=h.name, tls=policy)
            for h in hosts
            for address in h.addresses
        ]

    async def open(self, domain: str) -> Session:
        """A ready session (greeted, EHLO done, TLS per policy, authenticated)."""
        last = DestinationError("4.4.1", "smtp; no host tried", permanent=False)
        for dest in await self.destinations(domain):
            try:
                return await self._open(dest, try_tls=dest.tls is not TlsPolicy.NONE)
            except _Retry:
                try:
                    return await self._open(dest, try_tls=False)
                except DestinationError as exc:
                    last = exc
            except DestinationError as exc:
                last = exc
            log.info("relay %s: %s:%d: %s", domain, dest.host, dest.port, last.diagnostic)
        raise DestinationError(
            last.status, last.diagnostic, permanent=False, remote_mta=last.remote_mta
        )

    async def _open(self, dest: Destination, *, try_tls: bool) -> Session:
        where = dest.mx_name
        try:
            client, greeting = await SmtpClient.connect(dest.host, dest.port, self.timeouts)
        except ConnectionLost as exc:
            raise DestinationError("4.4.1", f"smtp; {exc}", permanent=False) from None
        try:
            if not greeting.ok:
                raise DestinationError(
                    "4.4.2", f"smtp; greeting: {greeting}", permanent=False, remote_mta=where
                )
            reply = await client.ehlo(self.hostname)
            if reply.code in (500, 502):  # RFC 5321 §4.1.4: fall back to HELO
                reply = await client.helo(self.hostname)
            if not reply.ok:
                raise DestinationError(
                    "4.4.2", f"smtp; EHLO: {reply}", permanent=False, remote_mta=where
                )
            if try_tls and client.supports("STARTTLS"):
                server_name = dest.mx_name if dest.tls is TlsPolicy.REQUIRE else None
                try:
                    reply = await client.starttls(_tls_context(dest.tls), server_name)
                except ConnectionLost as exc:
                    if dest.tls is TlsPolicy.REQUIRE:
                        raise DestinationError(
                            "4.7.5", f"smtp; {exc}", permanent=False, remote_mta=where
                        ) from None
                    raise _Retry() from None
                if not reply.ok and dest.tls is TlsPolicy.REQUIRE:
                    raise DestinationError(
                        "4.7.5", f"smtp; STARTTLS: {reply}", permanent=False, remote_mta=where
                    )
                if reply.ok:
                    reply = await client.ehlo(self.hostname)
                    if not reply.ok:
                        raise DestinationError(
                            "4.4.2",
                            f"smtp; EHLO after STARTTLS: {reply}",
                            permanent=False,
                            remote_mta=where,
                        )
            if dest.tls is TlsPolicy.REQUIRE and not client.tls:
                raise DestinationError(
                    "4.7.5", "smtp; TLS required but not offered", permanent=False, remote_mta=where
                )
            if dest.username:
                await self._auth(client, dest)
        except ConnectionLost as exc:  # dropped or silent after the greeting: next host
            await client.close()
            raise DestinationError(
                "4.4.2", f"smtp; {exc}", permanent=False, remote_mta=where
            ) from None
        except BaseException:
            await client.close()
            raise
        return Session(client, dest)

    async def _auth(self, client: SmtpClient, dest: Destination) -> None:
        """RFC 4954 with the route's credentials; never in clear text to another host."""
        where = dest.mx_name
        if not client.tls and not _loopback(dest.host):
            raise DestinationError(
                "4.7.5", "smtp; AUTH needs TLS, not offered", permanent=False, remote_mta=where
            )
        if not client.supports("AUTH"):
            raise DestinationError(
                "4.7.0", "smtp; AUTH not offered", permanent=False, remote_mta=where
            )
        try:
            password = dest.password_file.read_text().strip() if dest.password_file else ""
        except OSError as exc:
            raise DestinationError(
                "4.3.5", f"x-local; password_file: {exc.strerror}", permanent=False
            ) from None
        reply = await client.auth(dest.username, password)
        if not reply.ok:
            raise DestinationError(
                "4.7.8", f"smtp; AUTH: {reply}", permanent=False, remote_mta=where
            )

    async def send(
        self,
        session: Session,
        message: QueuedMessage,
        body: bytes,
        recipients: Sequence[QueuedRecipient],
    ) -> list[Outcome]:
        """One transaction over ``session``; an outcome for every recipient."""
        client = session.client
        where = session.destination.mx_name
        data = message.prefix + body

        def all_(verdict: Verdict, status: str, diagnostic: str) -> list[Outcome]:
            return [Outcome(r, verdict, status, diagnostic, where) for r in recipients]

        if message.smtputf8 and not client.supports("SMTPUTF8"):
            return all_(
                Verdict.FAILED,
                "5.6.7",
                f"x-local; {where} does not support SMTPUTF8 (RFC 6531 §3.2)",
            )
        eight_bit = not data.isascii()
        if eight_bit and not client.supports("8BITMIME"):
            return all_(
                Verdict.FAILED, "5.6.3", f"x-local; {where} does not support 8BITMIME (RFC 6152 §3)"
            )
        if client.size_limit and len(data) > client.size_limit:
            return all_(
                Verdict.FAILED,
                "5.3.4",
                f"x-local; message of {len(data)} octets exceeds {where}'s SIZE "
                f"{client.size_limit}",
            )
        dsn = client.supports("DSN")
        mail_params: list[str] = []
        if client.supports("SIZE"):
            mail_params.append(f"SIZE={len(data)}")
        if eight_bit or message.body_8bit:
            if client.supports("8BITMIME"):
                mail_params.append("BODY=8BITMIME")
        if message.smtputf8:
            mail_params.append("SMTPUTF8")
        if dsn and message.ret:
            mail_params.append(f"RET={message.ret}")
        if dsn and message.envid:
            mail_params.append(f"ENVID={xtext(message.envid)}")
        rcpts: list[tuple[str, list[str]]] = []
        for r in recipients:
            params: list[str] = []
            if dsn and r.notify:
                params.append("NOTIFY=" + ",".join(sorted(r.notify)))
            if dsn and r.orcpt:
                kind, _, addr = r.orcpt.partition(";")
                params.append(f"ORCPT={kind};{xtext(addr)}")
            rcpts.append((r.address, params))
        try:
            tx = await client.send_mail(message.sender, mail_params, rcpts, data)
        except ConnectionLost as exc:
            return all_(Verdict.DEFERRED, "4.4.2", f"smtp; {where}: {exc}")
        if not tx.mail.ok:
            await self._reset(client)
            return all_(_verdict(tx.mail), tx.mail.status(), f"smtp; MAIL: {tx.mail}")
        outcomes: list[Outcome] = []
        accepted: list[QueuedRecipient] = []
        for r, reply in zip(recipients, tx.rcpts + [None] * len(recipients), strict=False):
            if reply is None:
                outcomes.append(
                    Outcome(
                        r, Verdict.DEFERRED, "4.4.2", f"smtp; {where}: RCPT not answered", where
                    )
                )
            elif reply.ok:
                accepted.append(r)
            else:
                outcomes.append(
                    Outcome(r, _verdict(reply), reply.status(), f"smtp; {reply}", where)
                )
        if not accepted:
            await self._reset(client)
            return outcomes
        final = tx.final
        if final is None:  # DATA itself refused
            reply = tx.data
            if reply is None:
                verdict, status, diag = Verdict.DEFERRED, "4.4.2", "smtp; DATA not answered"
            else:
                verdict, status, diag = _verdict(reply), reply.status(), f"smtp; DATA: {reply}"
            await self._reset(client)
            return outcomes + [Outcome(r, verdict, status, diag, where) for r in accepted]
        if final.ok:
            diag = f"smtp; {final}"
            outcomes.extend(
                Outcome(r, Verdict.DELIVERED, final.status(), diag, where, dsn_passed_on=dsn)
                for r in accepted
            )
        else:
            outcomes.extend(
                Outcome(r, _verdict(final), final.status(), f"smtp; {final}", where)
                for r in accepted
            )
        return outcomes

    @staticmethod
    async def _reset(client: SmtpClient) -> None:
        """RSET after an aborted transaction so the connection can carry the next one."""
        if client.broken:
            return
        try:
            reply = await client.rset()
        except ConnectionLost:
            return
        if not reply.ok:
            await client.close()


class _Retry(Exception):
    """Opportunistic STARTTLS failed: reconnect in plaintext."""


def _verdict(reply: Reply) -> Verdict:
    if reply.ok:
        return Verdict.DELIVERED
    return Verdict.FAILED if reply.permanent else Verdict.DEFERRED


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
