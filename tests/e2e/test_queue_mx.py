"""Delivery by MX records: a QueueRunner over a real SQLite store, DNS answered by a
stub source (real dnspython rdata), MX hosts on loopback addresses sharing one port."""

from __future__ import annotations

import asyncio
import email
import email.policy
import inspect
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import pytest
import test_queue_relay
from test_queue_relay import MESSAGE, Script

from correo import config
from correo.mail.message import prepare
from correo.queue.client import Timeouts
from correo.queue.relay import Relay
from correo.queue.resolver import MxResolver
from correo.queue.runner import QueueRunner
from correo.store.base import QueueRecipient, QueueRequest
from correo.store.queue import queue_store_for
from correo.store.sqlite import SqliteStore

sinks = test_queue_relay.sinks  # the fixture


class StubSource:
    """DNS answers from a table, as dnspython gives them (rdata objects, exceptions)."""

    def __init__(self, table: dict[tuple[str, str], Any]) -> None:
        self.table = table

    async def resolve(self, qname: str, rdtype: str) -> Iterable[Any]:
        found = self.table.get((qname, rdtype), dns.resolver.NoAnswer())
        if isinstance(found, Exception):
            raise found
        kind = dns.rdatatype.from_text(rdtype)
        return [dns.rdata.from_text(dns.rdataclass.IN, kind, t) for t in found]


def free_port_on_both() -> int:
    """A port free on 127.0.0.1 and 127.0.0.2."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.2", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no common free port")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "correo.db", tmp_path / "blobs")
    await s.open()
    await s.add_domain("example.test")
    await s.add_account("alice@example.test", "x")
    yield s
    await s.close()


async def start_runner(
    tmp_path: Path,
    store: SqliteStore,
    table: dict[tuple[str, str], Any],
    port: int,
    extra: str = "",
) -> tuple[QueueRunner, asyncio.Task[None]]:
    settings = config.loads(
        'hostname = "mx.example.test"\n[queue]\nretry_intervals = ["1s"]\njitter = 0\n' + extra,
        tmp_path / "correo.toml",
    )
    relay = Relay(
        settings, MxResolver(StubSource(table)), Timeouts(connect=2, greeting=2), mx_port=port
    )
    runner = QueueRunner(settings, store, queue_store_for(store), relay)
    return runner, asyncio.create_task(runner.run())


async def enqueue(store: SqliteStore, rcpt: str) -> int:
    req = QueueRequest(sender="alice@example.test", recipients=(QueueRecipient(rcpt),))
    result = await store.deliver(prepare(MESSAGE), [], req)
    assert result.queue_id is not None
    return result.queue_id


async def until(cond: Callable[[], Any], timeout: float = 15) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            value = cond()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.05)


async def inbox(store: SqliteStore, address: str) -> list[Any]:
    acct = await store.get_account(address)
    assert acct is not None
    box = await store.get_mailbox(acct.id, "INBOX")
    assert box is not None
    infos = await store.message_infos(box.id)
    out = []
    for m in await store.get_messages(box.id, [i.uid for i in infos]):
        out.append(
            email.message_from_bytes(
                await (await store.open_body(m)).read(), policy=email.policy.default
            )
        )
    return out


@pytest.mark.parametrize("first", ["refuse", "drop", "down"])
async def test_falls_back_to_the_next_mx(
    tmp_path: Path, store: SqliteStore, sinks: Any, first: str
) -> None:
    port = free_port_on_both()
    bad = None if first == "down" else sinks(first, host="127.0.0.2", port=port)
    good = sinks(host="127.0.0.1", port=port)
    table = {
        ("remote.test", "MX"): ["20 mx2.remote.test.", "10 mx1.remote.test."],
        ("mx1.remote.test", "A"): ["127.0.0.2"],
        ("mx2.remote.test", "A"): ["127.0.0.1"],
    }
    runner, task = await start_runner(tmp_path, store, table, port)
    try:
        await enqueue(store, "bob@remote.test")
        runner.wake()
        await until(lambda: good.received)
        assert good.received[0].rcpts == ["bob@remote.test"]
        await until(lambda: runner.delivered == 1)
        assert bad is None or (bad.connections == 1 and bad.received == [])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_null_mx_bounces_at_once(tmp_path: Path, store: SqliteStore) -> None:
    table = {("nomail.test", "MX"): ["0 ."]}
    runner, task = await start_runner(tmp_path, store, table, 25)
    try:
        await enqueue(store, "bob@nomail.test")
        runner.wake()
        [report] = await until(lambda: inbox(store, "alice@example.test"))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    _head, rcpt = list(report.iter_parts())[1].get_payload()
    assert rcpt["Status"] == "5.1.10"
    assert "null MX" in rcpt["Diagnostic-Code"]


async def test_nxdomain_bounces_and_servfail_defers(tmp_path: Path, store: SqliteStore) -> None:
    table: dict[tuple[str, str], Any] = {
        ("gone.test", "MX"): dns.resolver.NXDOMAIN(),
        ("flaky.test", "MX"): dns.resolver.NoNameservers(),
    }
    runner, task = await start_runner(tmp_path, store, table, 25)
    qs = queue_store_for(store)
    try:
        await enqueue(store, "bob@gone.test")
        flaky = await enqueue(store, "bob@flaky.test")
        runner.wake()
        [report] = await until(lambda: inbox(store, "alice@example.test"))

        async def deferred() -> Any:
            entry = await qs.get_entry(flaky)
            return entry if entry and entry.recipients[0].state.value == "deferred" else None

        entry = await until(deferred)
        assert entry.recipients[0].status == "4.4.3"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    _head, rcpt = list(report.iter_parts())[1].get_payload()
    assert rcpt["Status"] == "5.1.2"
    assert rcpt["Final-Recipient"] == "rfc822; bob@gone.test"


async def test_lease_renewal_keeps_a_slow_delivery_from_a_second_runner(
    tmp_path: Path, store: SqliteStore, sinks: Any
) -> None:
    """Two runners (two nodes) on one queue; the delivery takes 3 leases' time."""
    sink = sinks(script=Script(data=["sleep:3"]))
    table = {("remote.test", "MX"): ["10 mx.remote.test."], ("mx.remote.test", "A"): ["127.0.0.1"]}
    first, t1 = await start_runner(tmp_path, store, table, sink.port, 'lease = "1s"\n')
    second, t2 = await start_runner(tmp_path, store, table, sink.port, 'lease = "1s"\n')
    try:
        await enqueue(store, "bob@remote.test")
        first.wake()
        await until(lambda: sink.handler.attempts == 1)
        await asyncio.sleep(3.5)
        await until(lambda: first.delivered + second.delivered == 1)
        assert sink.handler.attempts == 1 and len(sink.received) == 1
        await until(lambda: first.in_flight + second.in_flight == 0)
        assert await queue_store_for(store).list_entries() == []
    finally:
        for t in (t1, t2):
            t.cancel()
        await asyncio.gather(t1, t2, return_exceptions=True)
