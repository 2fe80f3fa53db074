"""The outbound queue's storage on PostgreSQL (``postgres_queue``), one node and two.

The single-node cases mirror ``tests/unit/test_queue_store.py`` (SQLite): leases,
fencing, deferral, reports, blob release. The two-node cases are what PostgreSQL adds:
claims with ``FOR UPDATE SKIP LOCKED`` never hand one recipient to two live nodes, a dead
node's rows are taken over after the lease, and two nodes finishing the last recipients
of one message at once still remove it (and release its body).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pg_backend import make_pg_store

from correo.mail.message import prepare
from correo.store.base import LocalDelivery, QueueRecipient, QueueRequest
from correo.store.postgres import PostgresStore
from correo.store.postgres_queue import PostgresQueueStore
from correo.store.queue import DsnAction, RecipientResult, RecipientState

pytestmark = pytest.mark.postgres
MESSAGE = b"From: a@example.test\r\nTo: b@remote.test\r\nSubject: hi\r\n\r\nbody\r\n"
NOW = 1e10


@pytest.fixture
async def nodes(
    postgres_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    a = await make_pg_store(postgres_dsn, tmp_path, inline_threshold=16)
    b = await make_pg_store(postgres_dsn, tmp_path, url=a.url, inline_threshold=16)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def enqueue(
    store: PostgresStore, rcpts: tuple[str, ...] = ("b@remote.test",), data: bytes = MESSAGE
) -> int:
    req = QueueRequest(
        sender="a@x.test",
        recipients=tuple(QueueRecipient(r, notify=frozenset({"FAILURE"})) for r in rcpts),
        envid="env1",
        prefix=b"Received: from test\r\n",
    )
    result = await store.deliver(prepare(data), [], req)
    assert result.queue_id is not None
    return result.queue_id


async def count(store: PostgresStore, table: str) -> int:
    async with store.pool.acquire() as conn:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


async def test_claim_lease_takeover_and_fencing(
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = nodes
    qa, qb = PostgresQueueStore(a), PostgresQueueStore(b)
    qid = await enqueue(a, ("b@remote.test", "c@other.test"))
    [entry] = await qa.claim_due("node-a", NOW, 60, 100)
    assert entry.message.id == qid and entry.message.envid == "env1"
    assert {r.address for r in entry.recipients} == {"b@remote.test", "c@other.test"}
    assert entry.recipients[0].notify == frozenset({"FAILURE"})
    assert await qb.claim_due("node-b", NOW, 60, 100) == []
    assert await qb.next_due_time("node-b") == NOW + 60
    # node A dies: after its lease, B takes the rows; A's late result is fenced off
    [taken] = await qb.claim_due("node-b", NOW + 61, 60, 100)
    rid = taken.recipients[0].id
    late = RecipientResult(rid, RecipientState.DELIVERED, "2.0.0", "smtp; 250 ok")
    assert await qa.record("node-a", [late], NOW + 62) == 0
    assert await qb.record("node-b", [late], NOW + 62) == 1
    assert await qa.renew_lease("node-a", NOW + 500) == 0
    assert await qb.renew_lease("node-b", NOW + 500) == 1  # the other recipient
    assert await qa.claim_due("node-a", NOW + 200, 60, 100) == []


async def test_concurrent_claims_never_share_a_recipient(
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = nodes
    for i in range(10):
        await enqueue(a, tuple(f"r{i}-{j}@remote{j}.test" for j in range(5)), MESSAGE + b"%d" % i)
    stores = [PostgresQueueStore(a), PostgresQueueStore(b)]
    claims = await asyncio.gather(
        *(stores[i % 2].claim_due(f"owner{i}", NOW, 60, 7) for i in range(12))
    )
    ids = [r.id for entries in claims for e in entries for r in e.recipients]
    assert len(ids) == len(set(ids)) == 50


async def test_deferred_then_due_again(nodes: tuple[PostgresStore, PostgresStore]) -> None:
    a, _b = nodes
    qs = PostgresQueueStore(a)
    qid = await enqueue(a)
    [entry] = await qs.claim_due("me", NOW, 60, 10)
    r = entry.recipients[0]
    res = RecipientResult(
        r.id,
        RecipientState.DEFERRED,
        "4.3.0",
        "smtp; 451 4.3.0 later",
        "mx.remote.test",
        next_attempt=NOW + 300,
    )
    assert await qs.record("me", [res], NOW) == 1
    assert await qs.next_due_time("me") == NOW + 300
    assert await qs.claim_due("me", NOW + 299, 60, 10) == []
    got = await qs.get_entry(qid)
    assert got is not None
    [rec] = got.recipients
    assert (rec.state, rec.attempts, rec.status, rec.remote_mta, rec.lease_owner) == (
        RecipientState.DEFERRED,
        1,
        "4.3.0",
        "mx.remote.test",
        None,
    )
    assert await qs.retry(qid, NOW + 1) == 1
    assert len(await qs.claim_due("me", NOW + 1, 60, 10)) == 1


async def test_reports_then_message_and_body_go(
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    a, _b = nodes
    qs = PostgresQueueStore(a)
    big = MESSAGE + b"x" * 300_000  # chunked in the database
    qid = await enqueue(a, data=big)
    assert await count(a, "blob_chunks") == 2
    [entry] = await qs.claim_due("me", NOW, 60, 10)
    assert entry.message.prefix + await qs.read_body(entry.message) == (
        b"Received: from test\r\n" + big
    )
    r = entry.recipients[0]
    res = RecipientResult(
        r.id, RecipientState.FAILED, "5.1.1", "smtp; 550 5.1.1 no", dsn=DsnAction.FAILED
    )
    await qs.record("me", [res], NOW)
    [owed] = await qs.owed_reports(10)
    assert owed.message.id == qid and owed.recipients[0].dsn_pending is DsnAction.FAILED
    assert await count(a, "blobs") == 1  # kept until the report is out
    await qs.reports_sent([(r.id, DsnAction.FAILED)])
    assert await qs.owed_reports(10) == [] and await qs.get_entry(qid) is None
    assert await count(a, "blobs") == 0 and await count(a, "blob_chunks") == 0


async def test_bounce_remove_release(nodes: tuple[PostgresStore, PostgresStore]) -> None:
    a, _b = nodes
    qs = PostgresQueueStore(a)
    q1 = await enqueue(a)
    q2 = await enqueue(a, data=MESSAGE + b"2")
    q3 = await enqueue(a, data=MESSAGE + b"3")
    claimed = await qs.claim_due("runner", NOW, 60, 10)
    assert await qs.bounce(q1, "x-local; returned by the postmaster", NOW) == 1
    entry = await qs.get_entry(q1)
    assert entry is not None
    rec = entry.recipients[0]
    assert (rec.state, rec.dsn_pending, rec.lease_owner) == (
        RecipientState.FAILED,
        DsnAction.FAILED,
        None,
    )
    late = RecipientResult(rec.id, RecipientState.DELIVERED, "2.0.0", "ok")
    assert await qs.record("runner", [late], NOW) == 0  # the operator wins
    assert await qs.remove(q2) is True and await qs.remove(q2) is False
    q3_ids = [r.id for e in claimed if e.message.id == q3 for r in e.recipients]
    await qs.release("runner", q3_ids)
    assert len(await qs.claim_due("other", NOW, 60, 10)) == 1
    await qs.remove(q3)
    assert [e.message.id for e in await qs.list_entries()] == [q1]
    await qs.drop_reports(q1)
    assert await qs.list_entries() == [] and await count(a, "blobs") == 0


async def test_two_nodes_finish_one_message_at_once(
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    """Each node delivers one recipient of the same message and records concurrently:
    whichever commits last must see the other's result and remove the message."""
    a, b = nodes
    qa, qb = PostgresQueueStore(a), PostgresQueueStore(b)
    for round_ in range(10):
        qid = await enqueue(a, ("x@one.test", "y@two.test"), MESSAGE + b"%d" % round_)
        [ea] = await qa.claim_due("a", NOW, 60, 1)
        [eb] = await qb.claim_due("b", NOW, 60, 1)
        ra = RecipientResult(ea.recipients[0].id, RecipientState.DELIVERED, "2.0.0", "ok")
        rb = RecipientResult(eb.recipients[0].id, RecipientState.DELIVERED, "2.0.0", "ok")
        assert await asyncio.gather(qa.record("a", [ra], NOW), qb.record("b", [rb], NOW)) == [
            1,
            1,
        ]
        assert await qa.get_entry(qid) is None
    assert await count(a, "queue_messages") == 0 and await count(a, "blobs") == 0


async def test_several_requests_become_several_entries(
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    """Alias forwarding: one delivery queues copies with different senders/prefixes,
    each its own entry with its own body reference, beside a local delivery."""
    a, _b = nodes
    qs = PostgresQueueStore(a)
    await a.add_domain("example.test")
    alice = await a.add_account("alice@example.test", "h")
    direct = QueueRequest(sender="s@x.test", recipients=(QueueRecipient("b@remote.test"),))
    forwarded = QueueRequest(
        sender="SRS0=ab=cd=x.test=s@example.test",
        recipients=(QueueRecipient("c@other.test"), QueueRecipient("d@other.test")),
        prefix=b"Delivered-To: fwd@example.test\r\n",
    )
    empty = QueueRequest(sender="s@x.test", recipients=())
    res = await a.deliver(
        prepare(MESSAGE + b"many"), [LocalDelivery(alice.id)], [direct, empty, forwarded]
    )
    assert len(res.queue_ids) == 2 and res.queue_id == res.queue_ids[0]
    assert len(res.delivered) == 1
    entries = {e.message.id: e for e in await qs.list_entries()}
    assert entries[res.queue_ids[0]].message.sender == "s@x.test"
    second = entries[res.queue_ids[1]]
    assert second.message.prefix.startswith(b"Delivered-To: fwd@")
    assert [r.address for r in second.recipients] == ["c@other.test", "d@other.test"]
    async with a.pool.acquire() as conn:
        assert await conn.fetchval("SELECT refcount FROM blobs") == 3
    for qid in res.queue_ids:
        assert await qs.remove(qid)
    async with a.pool.acquire() as conn:
        assert await conn.fetchval("SELECT refcount FROM blobs") == 1
