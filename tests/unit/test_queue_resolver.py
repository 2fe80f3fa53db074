"""MX resolution rules with a stub answer source that speaks dnspython (real rdata,
real exceptions), as ``dns.asyncresolver.Resolver.resolve`` would."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import pytest

from correo.queue.resolver import DnsFailure, MxResolver


class StubSource:
    """Answers from a table: (name, type) → list of rdata texts, or an exception."""

    def __init__(self, table: dict[tuple[str, str], Any]) -> None:
        self.table = table
        self.asked: list[tuple[str, str]] = []

    async def resolve(self, qname: str, rdtype: str) -> Iterable[Any]:
        self.asked.append((qname, rdtype))
        found = self.table.get((qname, rdtype), dns.resolver.NoAnswer())
        if isinstance(found, Exception):
            raise found
        return [
            dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), t)
            for t in found
        ]


def resolver(table: dict[tuple[str, str], Any]) -> MxResolver:
    return MxResolver(StubSource(table), rng=random.Random(0))


async def test_mx_in_preference_order_with_addresses() -> None:
    r = resolver(
        {
            ("remote.test", "MX"): ["20 mx2.remote.test.", "10 mx1.remote.test."],
            ("mx1.remote.test", "A"): ["192.0.2.1"],
            ("mx1.remote.test", "AAAA"): ["2001:db8::1"],
            ("mx2.remote.test", "A"): ["192.0.2.2"],
        }
    )
    hosts = await r.hosts("Remote.TEST.")
    assert [(h.name, h.preference, h.addresses) for h in hosts] == [
        ("mx1.remote.test", 10, ("2001:db8::1", "192.0.2.1")),
        ("mx2.remote.test", 20, ("192.0.2.2",)),
    ]


async def test_equal_preferences_are_shuffled() -> None:
    table: dict[tuple[str, str], Any] = {
        ("remote.test", "MX"): [f"10 mx{i}.remote.test." for i in range(6)],
    }
    table.update({(f"mx{i}.remote.test", "A"): [f"192.0.2.{i}"] for i in range(6)})
    orders = set()
    for seed in range(10):
        r = MxResolver(StubSource(table), rng=random.Random(seed))
        orders.add(tuple(h.name for h in await r.hosts("remote.test")))
    assert len(orders) > 1


async def test_null_mx_is_a_permanent_failure() -> None:
    r = resolver({("remote.test", "MX"): ["0 ."]})
    with pytest.raises(DnsFailure) as info:
        await r.hosts("remote.test")
    assert info.value.permanent and info.value.status == "5.1.10"


async def test_no_mx_falls_back_to_the_domains_address() -> None:
    src = StubSource({("remote.test", "A"): ["192.0.2.9"]})
    hosts = await MxResolver(src).hosts("remote.test")
    assert [(h.name, h.addresses) for h in hosts] == [("remote.test", ("192.0.2.9",))]


async def test_no_fallback_when_the_mx_lookup_fails() -> None:
    src = StubSource(
        {
            ("remote.test", "MX"): dns.resolver.NoNameservers(),
            ("remote.test", "A"): ["192.0.2.9"],
        }
    )
    with pytest.raises(DnsFailure) as info:
        await MxResolver(src).hosts("remote.test")
    assert not info.value.permanent and info.value.status == "4.4.3"
    assert ("remote.test", "A") not in src.asked


async def test_nxdomain_is_permanent_5_1_2() -> None:
    r = resolver({("nowhere.test", "MX"): dns.resolver.NXDOMAIN()})
    with pytest.raises(DnsFailure) as info:
        await r.hosts("nowhere.test")
    assert info.value.permanent and info.value.status == "5.1.2"


async def test_timeout_defers() -> None:
    r = resolver({("slow.test", "MX"): dns.resolver.LifetimeTimeout(timeout=5.0, errors=[])})
    with pytest.raises(DnsFailure) as info:
        await r.hosts("slow.test")
    assert not info.value.permanent


async def test_mx_hosts_without_address_are_skipped_or_defer() -> None:
    r = resolver(
        {
            ("remote.test", "MX"): ["10 gone.remote.test.", "20 mx.remote.test."],
            ("gone.remote.test", "A"): dns.resolver.NXDOMAIN(),
            ("mx.remote.test", "A"): ["192.0.2.5"],
        }
    )
    assert [h.name for h in await r.hosts("remote.test")] == ["mx.remote.test"]
    r = resolver({("remote.test", "MX"): ["10 gone.remote.test."]})
    with pytest.raises(DnsFailure) as info:
        await r.hosts("remote.test")
    assert not info.value.permanent and info.value.status == "4.4.4"


async def test_no_mx_and_no_address_is_permanent() -> None:
    with pytest.raises(DnsFailure) as info:
        await resolver({}).hosts("empty.test")
    assert info.value.permanent


async def test_address_literal_needs_no_dns() -> None:
    src = StubSource({})
    hosts = await MxResolver(src).hosts("[192.0.2.7]")
    assert hosts[0].addresses == ("192.0.2.7",)
    assert (await MxResolver(src).hosts("[IPv6:2001:db8::7]"))[0].addresses == ("2001:db8::7",)
    assert src.asked == []
