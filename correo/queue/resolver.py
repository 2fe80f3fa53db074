"""Where mail for a domain goes: MX records, the implicit MX, null MX (RFC 5321 §5.1).

The DNS is asked through :class:`AnswerSource`, the one call of dnspython's
``dns.asyncresolver.Resolver`` we use (``await resolve(qname, rdtype)`` returning the
answer's rdata, raising ``NXDOMAIN`` / ``NoAnswer`` / ``NoNameservers`` /
``LifetimeTimeout``); tests pass a stub that answers from a table with real dnspython
rdata and exceptions.

Rules (RFC 5321 §5.1, RFC 7505):

* MX records sorted by preference; equal preferences in random order.
* A single MX of preference 0 for ``.`` is a null MX: the domain takes no mail → 5.1.10
  permanent failure (RFC 7505 §4.2). ``.`` among other MX records is skipped.
* No MX record set at all (NoAnswer) → the domain itself is the only host (implicit MX),
  tried by its AAAA/A addresses. The fallback applies only then, never after MX lookup
  trouble.
* NXDOMAIN for the domain → 5.1.2 permanent ("bad destination system address").
* SERVFAIL, no reachable name server, timeouts → temporary (defer, 4.4.3).
* An MX host with no address is skipped; when no host has one the message is deferred
  (4.4.4): a transient DNS state is likelier than a lasting one.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import dns.asyncresolver
import dns.exception
import dns.resolver

DNS_LIFETIME = 30.0


class AnswerSource(Protocol):
    """The part of ``dns.asyncresolver.Resolver`` the relay uses."""

    async def resolve(self, qname: str, rdtype: str) -> Iterable[Any]: ...


class ResolverUnavailable(Exception):
    """The system has no DNS resolver configured: lookups fail temporarily."""


class DnsResolverSource:
    """dnspython's async resolver (system ``/etc/resolv.conf``, read at first use so a
    host without one still serves ``[relay.routes]``; MX lookups then defer)."""

    def __init__(self, lifetime: float = DNS_LIFETIME) -> None:
        self.lifetime = lifetime
        self._resolver: dns.asyncresolver.Resolver | None = None

    async def resolve(self, qname: str, rdtype: str) -> Iterable[Any]:
        if self._resolver is None:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                raise ResolverUnavailable(f"no resolver configuration: {exc}") from None
            resolver.lifetime = self.lifetime
            self._resolver = resolver
        return await self._resolver.resolve(qname, rdtype, search=False)


class DnsFailure(Exception):
    """No destination host: ``permanent`` → fail now, else defer."""

    def __init__(self, status: str, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class MailHost:
    """One exchanger with its addresses, in the order to try them."""

    name: str
    preference: int
    addresses: tuple[str, ...]


_TEMPORARY = (
    ResolverUnavailable,
    dns.resolver.NoNameservers,
    dns.exception.Timeout,
    dns.resolver.LifetimeTimeout,
    dns.resolver.YXDOMAIN,
)


def _literal(domain: str) -> str | None:
    """``[192.0.2.1]`` / ``[IPv6:2001:db8::1]`` address literals (RFC 5321 §4.1.3)."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class MxResolver:
    def __init__(self, source: AnswerSource, rng: random.Random | None = None) -> None:
        self.source = source
        self.rng = rng or random.Random()

    async def _addresses(self, host: str) -> tuple[tuple[str, ...], bool]:
        """(addresses, any temporary failure); IPv6 first, then IPv4."""
        found: list[str] = []
        temporary = False
        for rdtype in ("AAAA", "A"):
            try:
                answer = await self.source.resolve(host, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except _TEMPORARY:
                temporary = True
                continue
            found.extend(str(r.address) for r in answer)
        return tuple(found), temporary

    async def hosts(self, domain: str) -> list[MailHost]:
        """Exchangers for ``domain`` in delivery order, or :class:`DnsFailure`."""
        literal = _literal(domain)
        if literal is not None:
            return [MailHost(domain, 0, (literal,))]
        name = domain.rstrip(".").lower()
        try:
            answer = list(await self.source.resolve(name, "MX"))
        except dns.resolver.NXDOMAIN:
            raise DnsFailure("5.1.2", f"{name}: no such domain", permanent=True) from None
        except dns.resolver.NoAnswer:
            answer = []
            implicit = True
        except _TEMPORARY as exc:
            raise DnsFailure("4.4.3", f"{name}: MX lookup failed: {exc}", permanent=False) from None
        else:
            implicit = False
        if implicit:
            addresses, temporary = await self._addresses(name)
            if addresses:
                return [MailHost(name, 0, addresses)]
            if temporary:
                raise DnsFailure("4.4.3", f"{name}: address lookup failed", permanent=False)
            raise DnsFailure("5.1.2", f"{name}: no MX and no address record", permanent=True)
        records = [(int(r.preference), r.exchange.to_text().rstrip(".").lower()) for r in answer]
        if len(records) == 1 and records[0][1] == "" and records[0][0] == 0:
            raise DnsFailure(
                "5.1.10",
                f"{name}: null MX, the domain accepts no mail (RFC 7505)",
                permanent=True,
            )
        records = [(pref, host) for pref, host in records if host]
        if not records:
            raise DnsFailure("5.1.10", f"{name}: no usable MX host", permanent=True)
        self.rng.shuffle(records)
        records.sort(key=lambda r: r[0])
        hosts: list[MailHost] = []
        temporary = False
        for pref, host in records:
            addresses, temp = await self._addresses(host)
            temporary = temporary or temp
            if addresses:
                hosts.append(MailHost(host, pref, addresses))
        if not hosts:
            raise DnsFailure(
                "4.4.4",
                f"{name}: no MX host has an address" + (" (lookup failed)" if temporary else ""),
                permanent=False,
            )
        return hosts
