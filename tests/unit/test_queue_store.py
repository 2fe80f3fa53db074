"""The queue's storage over a real SQLite store: leases, fencing, reports, blob release."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from correo.mail.message import prepare
from correo.store.base import QueueRecipient, QueueRequest
from correo.store.queue import (
    DsnAction,
    QueueStore,
    RecipientResult,
    RecipientState,
    queue_store_for,
)
from correo.store.sqlite import SqliteStore

MESSAGE = b"From: a@example.test\r\nTo: b@remote.test\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "correo.db", tmp_path / "blobs", inline_threshold=16)
    await s.open()
    yield s
    await s.close()


async def enqueue(
    store: SqliteStore,
    rcpts: tuple[str, ...] = ("b@remote.test",),
    sender: str = "a@x.test",
    data: bytes = MESSAGE,
) -> int:
    req = QueueRequest(
        sender=sender,
        recipients=tuple(QueueRecipient(r, notify=frozenset({"FAILURE"})) for r in rcpts),
        envid="env1",
        prefix=b"Received: from test\r\n",
    )
    result = await store.deliver(prepare(data), [], req)
    assert result.queue_id is not None
    return result.queue_id


def blob_count(store: SqliteStore) -> int:
    return store._now(lambda c: c.execute("SELECT COUNT(*) FROM blobs").fetchone()[0])


async def test_claim_leases_each_recipient_once(store: SqliteStore) -> None:
    qs = queue_store_for(store)
    qid = await enqueue(store, ("b@remote.test", "c@other.test"))
    now = 1e10
    first = await qs.claim_due("node-a", now, 60, 100)
    assert [e.message.id for e in first] == [qid]
    assert {r.address for r in first[0].recipients} == {"b@remote.test", "c@other.test"}
    assert first[0].message.envid == "env1"
    assert first[0].recipients[0].notify == frozenset({"FAILURE"})
    assert await qs.claim_due("node-b", now, 60, 100) == []
    # once the lease runs out (the holder crashed), another owner takes them
    again = await qs.claim_due("node-b", now + 61, 60, 100)
    assert len(again[0].recipients) == 2


async def test_record_is_fenced_by_the_lease(store: SqliteStore) -> None:
    qs = queue_store_for(store)
    await enqueue(store)
    now = 1e10
    [entry] = await qs.claim_due("old", now, 10, 10)
    rid = entry.recipients[0].id
    [taken] = await qs.claim_due("new", now + 11, 10, 10)
    late = RecipientResult(rid, RecipientState.DELIVERED, "2.0.0", "smtp; 250 ok")
    assert await qs.record("old", [late], now + 12) == 0
    assert await qs.record("new", [late], now + 12) == 1
    assert taken.recipients[0].id == rid


async def test_deferred_then_due_again(store: SqliteStore) -> None:
    qs = queue_store_for(store)
    qid = await enqueue(store)
    now = 1e10
    [entry] = await qs.claim_due("me", now, 60, 10)
    r = entry.recipients[0]
    res = RecipientResult(
        r.id,
        RecipientState.DEFERRED,
        "4.3.0",
        "smtp; 451 4.3.0 later",
        "mx.remote.test",
        next_attempt=now + 300,
    )
    assert await qs.record("me", [res], now) == 1
    assert await qs.next_due_time("me") == now + 300
    assert await qs.claim_due("me", now + 299, 60, 10) == []
    got = await qs.get_entry(qid)
    assert got is not None
    [rec] = got.recipients
    assert (rec.state, rec.attempts, rec.status, rec.remote_mta) == (
        RecipientState.DEFERRED,
        1,
        "4.3.0",
        "mx.remote.test",
    )
    assert rec.lease_owner is None
    assert await qs.retry(qid, now + 1) == 1
    assert len(await qs.claim_due("me", now + 1, 60, 10)) == 1


async def test_next_due_time_counts_a_foreign_lease(store: SqliteStore) -> None:
    qs = queue_store_for(store)
    await enqueue(store)
    now = 1e10
    await qs.claim_due("dead", now, 60, 10)
    assert await qs.next_due_time("me") == now + 60
    assert await qs.next_due_time("dead") is None


async def test_renew_extends_only_the_owners_leases(store: SqliteStore) -> None:
    qs = queue_store_for(store)
    await enqueue(store)
    now = 1e10
    await qs.claim_due("me", now, 10, 10)
    assert await qs.renew_lease("me", now + 100) == 1
    assert await qs.renew_lease("other", now + 100) == 0
    assert await qs.claim_due("x", now + 50, 10, 10) == []


async def test_final_message_goes_with_its_blob_after_reports(store: SqliteStore) -> None:
    qs = queue_store_for(store)
    big = MESSAGE + b"x" * 100  # above the inline threshold: a blob file
    qid = await enqueue(store, data=big)
    assert blob_count(store) == 1
    now = 1e10
    [entry] = await qs.claim_due("me", now, 60, 10)
    body = await qs.read_body(entry.message)
    assert entry.message.prefix + body == b"Received: from test\r\n" + big
    r = entry.recipients[0]
    res = RecipientResult(
        r.id, RecipientState.FAILED, "5.1.1", "smtp; 550 5.1.1 no", dsn=DsnAction.FAILED
    )
    await qs.record("me", [res], now)
    [owed] = await qs.owed_reports(10)
    assert owed.message.id == qid and owed.recipients[0].dsn_pending is DsnAction.FAILED
    assert blob_count(store) == 1  # kept until the report is out
    await qs.reports_sent([(r.id, DsnAction.FAILED)])
    assert await qs.owed_reports(10) == []
    assert await qs.get_entry(qid) is None
    assert blob_count(store) == 0
    assert [p.name for p in store.blobs.walk() if p.name != ".lock"] == []


async def test_bounce_and_remove(store: SqliteStore) -> None:
    qs: QueueStore = queue_store_for(store)
    q1 = await enqueue(store)
    q2 = await enqueue(store, data=MESSAGE + b"2")
    now = 1e10
    await qs.claim_due("runner", now, 60, 10)
    assert await qs.bounce(q1, "x-local; returned by the postmaster", now) == 1
    entry = await qs.get_entry(q1)
    assert entry is not None
    assert entry.recipients[0].state is RecipientState.FAILED
    assert entry.recipients[0].dsn_pending is DsnAction.FAILED
    assert entry.recipients[0].lease_owner is None
    # the runner's late result loses to the operator
    late = RecipientResult(entry.recipients[0].id, RecipientState.DELIVERED, "2.0.0", "ok")
    assert await qs.record("runner", [late], now) == 0
    assert await qs.remove(q2) is True
    assert await qs.remove(q2) is False
    assert [e.message.id for e in await qs.list_entries()] == [q1]
    await qs.drop_reports(q1)
    assert await qs.list_entries() == []
    assert blob_count(store) == 0


async def test_release_gives_rows_back(store: SqliteStore) -> None:
    qs = queue_store_for(store)
    await enqueue(store)
    now = 1e10
    [entry] = await qs.claim_due("me", now, 60, 10)
    await qs.release("me", [r.id for r in entry.recipients])
    assert len(await qs.claim_due("other", now, 60, 10)) == 1
