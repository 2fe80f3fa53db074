"""The SQLite writer's lean paths keep the store's semantics.

A batch of one job runs without a SAVEPOINT (``sqlite_writer.Writer._run_one``); a
delivery reads quota, usage and the target mailbox in one statement and links the message
without RETURNING (``sqlite_messages.deliver``); an inline body's upsert asks nothing back
(``sqlite_rows.add_blob_ref``). These tests pin the statements a delivery costs and check
that errors, quota and UID/MODSEQ allocation behave as before (DESIGN.md principle 4).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from correo.store import sqlite_messages
from correo.store.base import (
    DeliveryResult,
    DiskFullError,
    IncomingMessage,
    LocalDelivery,
    NotFound,
    TemporaryStoreError,
)
from correo.store.sqlite import SqliteStore
from correo.store.sqlite_writer import WriteTx

MakeMessage = Callable[..., IncomingMessage]
T = TypeVar("T")


def _rows(store: SqliteStore, sql: str, *params: object) -> list[tuple[object, ...]]:
    return store._now(lambda c: c.execute(sql, params).fetchall())


async def _trace(store: SqliteStore, statements: list[str]) -> None:
    """Record every statement the writer connection runs (first word(s) only)."""

    def install(tx: WriteTx) -> None:
        tx.conn.set_trace_callback(lambda sql: statements.append(" ".join(sql.split()[:3])))

    assert store._writer is not None
    await store._writer.run_exclusive(install)


async def _untrace(store: SqliteStore) -> None:
    assert store._writer is not None
    await store._writer.run_exclusive(lambda tx: tx.conn.set_trace_callback(None))


async def _one_batch(
    store: SqliteStore, calls: list[Coroutine[Any, Any, T]]
) -> list[T | BaseException]:
    """Run ``calls`` as one batch: the writer is held busy until all of them are queued."""
    writer = store._writer
    assert writer is not None
    entered, gate = threading.Event(), threading.Event()

    def hold(_tx: WriteTx) -> None:
        entered.set()
        gate.wait(10)

    held = asyncio.ensure_future(writer.run_exclusive(hold))
    while not entered.is_set():  # the writer is busy: what comes next waits in its queue
        await asyncio.sleep(0.001)
    pending = asyncio.gather(*calls, return_exceptions=True)
    while writer._queue.qsize() < len(calls):
        await asyncio.sleep(0.001)
    gate.set()
    await held
    return await pending


async def _consistent(store: SqliteStore, mailbox_id: int) -> None:
    """Mailbox counters and the account's usage match the message rows."""
    mb = await store.get_mailbox_by_id(mailbox_id)
    assert mb is not None
    infos = await store.message_infos(mailbox_id)
    assert mb.exists == len(infos) and mb.size == sum(i.size for i in infos)
    assert all(i.uid < mb.uidnext and i.modseq <= mb.highestmodseq for i in infos)
    account = await store.get_account_by_id(mb.account_id)
    assert account is not None
    boxes = await store.list_mailboxes(mb.account_id)
    assert account.used == sum(b.size for b in boxes)


async def test_one_delivery_costs_eight_statements(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("a@example.org", "h")
    statements: list[str] = []
    await _trace(store, statements)
    res = await store.deliver(make_message("Subject: 1\n\none\n"), [LocalDelivery(acct.id)])
    await _untrace(store)
    assert len(res.delivered) == 1
    assert statements == [
        "BEGIN IMMEDIATE",
        "SELECT a.quota, a.used,",
        "INSERT INTO blobs",
        "UPDATE mailboxes SET",
        "INSERT INTO messages",
        "INSERT INTO changes",
        "UPDATE accounts SET",
        "COMMIT",
    ]


async def test_batched_jobs_keep_their_savepoints(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("a@example.org", "h")
    statements: list[str] = []
    await _trace(store, statements)
    msgs = [make_message(f"Subject: {i}\n\n{i}\n") for i in range(20)]
    results = await _one_batch(store, [store.deliver(m, [LocalDelivery(acct.id)]) for m in msgs])
    await _untrace(store)
    assert [r.delivered[0][2] for r in results if isinstance(r, DeliveryResult)] == list(
        range(1, 21)
    )
    assert statements.count("BEGIN IMMEDIATE") == statements.count("COMMIT") == 1
    # every job but the first of the transaction ran in a savepoint
    assert statements.count("SAVEPOINT job") == statements.count("RELEASE job") == 19
    assert statements.count("INSERT INTO messages") == 20


async def test_failing_first_job_of_a_batch_spoils_nothing(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    """The first job of a transaction has no savepoint: when it fails, the transaction is
    rolled back and the others run in a new one; a later failure rolls back alone."""
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("a@example.org", "h")
    inbox = await store.get_mailbox(acct.id, "INBOX")
    assert inbox is not None
    statements: list[str] = []
    await _trace(store, statements)
    for n in range(3):
        results = await _one_batch(
            store,
            [
                store.append(999_999, make_message(f"Subject: bad first {n}\n\n.\n")),
                store.append(inbox.id, make_message(f"Subject: ok {n}\n\n.\n")),
                store.append(999_998, make_message(f"Subject: bad later {n}\n\n.\n")),
                store.append(inbox.id, make_message(f"Subject: ok2 {n}\n\n.\n")),
            ],
        )
        assert isinstance(results[0], NotFound) and isinstance(results[2], NotFound)
        assert isinstance(results[1], tuple) and isinstance(results[3], tuple)
    await _untrace(store)
    assert statements == 3 * [
        "BEGIN IMMEDIATE",
        "SELECT id, account_id,",  # the bad mailbox ...
        "ROLLBACK",  # ... first in its transaction: the whole of it goes
        "BEGIN IMMEDIATE",
        *["SELECT id, account_id,", "SELECT quota, used", "INSERT INTO blobs"],
        *["UPDATE mailboxes SET", "INSERT INTO messages", "INSERT INTO changes"],
        "UPDATE accounts SET",
        "SAVEPOINT job",
        "SELECT id, account_id,",
        "ROLLBACK TO job",  # a later job fails alone
        "RELEASE job",
        "SAVEPOINT job",
        *["SELECT id, account_id,", "SELECT quota, used", "INSERT INTO blobs"],
        *["UPDATE mailboxes SET", "INSERT INTO messages", "INSERT INTO changes"],
        "UPDATE accounts SET",
        "RELEASE job",
        "COMMIT",
    ]
    mb = await store.get_mailbox_by_id(inbox.id)
    assert mb is not None and (mb.exists, mb.uidnext) == (6, 7)
    await _consistent(store, inbox.id)


async def test_failing_lone_job_is_rolled_back_and_the_writer_goes_on(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    store = sqlite_store
    assert store._writer is not None

    def half_then_fail(tx: WriteTx) -> None:
        tx.conn.execute("INSERT INTO domains (name, created) VALUES ('half.example', 0)")
        raise NotFound("no such thing")

    def half_then_bug(tx: WriteTx) -> None:
        tx.conn.execute("INSERT INTO domains (name, created) VALUES ('bug.example', 0)")
        raise ValueError("a bug")

    with pytest.raises(NotFound):
        await store._writer.run(half_then_fail)
    with pytest.raises(ValueError, match="a bug"):
        await store._writer.run(half_then_bug)
    assert await store._writer.run(lambda tx: tx.conn.in_transaction)  # a fresh transaction
    assert _rows(store, "SELECT name FROM domains") == []
    await store.add_domain("example.org")
    acct = await store.add_account("a@example.org", "h")
    res = await store.deliver(make_message("Subject: ok\n\nok\n"), [LocalDelivery(acct.id)])
    assert res.delivered[0][2] == 1
    assert await store._writer.run_exclusive(lambda tx: tx.conn.in_transaction) is False


async def test_disk_full_one_delivery_at_a_time(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    """SQLITE_FULL in a lone job: SQLite has already rolled the transaction back; the
    caller gets DiskFullError, nothing is half written, and the store recovers."""
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("a@example.org", "h")
    inbox = await store.get_mailbox(acct.id, "INBOX")
    assert inbox is not None and store._writer is not None
    pages = await store._writer.run_exclusive(
        lambda tx: int(tx.conn.execute("PRAGMA page_count").fetchone()[0])
    )
    await store._writer.run_exclusive(
        lambda tx: tx.conn.execute(f"PRAGMA max_page_count = {pages + 12}")
    )
    delivered: list[int] = []
    failed: list[BaseException] = []
    for i in range(40):
        msg = make_message(f"Subject: {i}\n\n" + "x" * 7000 + f"{i}\n")
        try:
            res = await store.deliver(msg, [LocalDelivery(acct.id)])
        except TemporaryStoreError as exc:
            failed.append(exc)
            continue
        delivered.append(res.delivered[0][2])
    assert failed, "the database never filled up"
    assert all(isinstance(e, DiskFullError) for e in failed), failed
    assert delivered == list(range(1, len(delivered) + 1))  # no UID taken by a failure
    assert [i.uid for i in await store.message_infos(inbox.id)] == delivered
    await _consistent(store, inbox.id)
    await store._writer.run_exclusive(
        lambda tx: tx.conn.execute("PRAGMA max_page_count = 1073741823")
    )
    res = await store.deliver(make_message("Subject: after\n\nok\n"), [LocalDelivery(acct.id)])
    assert res.delivered[0][2] == len(delivered) + 1
    await _consistent(store, inbox.id)


async def test_several_targets_in_one_account_and_mailbox(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    """UIDs and MODSEQs continue from one target to the next in the same mailbox; the
    quota counts every copy; a missing or \\Noselect mailbox falls back to INBOX."""
    store = sqlite_store
    await store.add_domain("example.org")
    msg = make_message("Subject: many\n\n" + "y" * 100 + "\n")
    size = len(msg.data)
    acct = await store.add_account("a@example.org", "h", quota=4 * size)
    await store.create_mailbox(acct.id, "Box/Child")
    await store.delete_mailbox(acct.id, "Box")  # leaves a \Noselect placeholder
    inbox = await store.get_mailbox(acct.id, "INBOX")
    sent = await store.get_mailbox(acct.id, "Sent")
    assert inbox is not None and sent is not None
    before = inbox.highestmodseq
    res = await store.deliver(
        msg,
        [
            LocalDelivery(acct.id),
            LocalDelivery(acct.id, mailbox="sent"),  # names are case-sensitive but INBOX
            LocalDelivery(acct.id, mailbox="inbox"),
            LocalDelivery(acct.id, mailbox="Sent"),
            LocalDelivery(acct.id, mailbox="Box"),  # \Noselect: over quota by now
        ],
    )
    assert res.delivered == (
        (acct.id, inbox.id, 1),
        (acct.id, inbox.id, 2),
        (acct.id, inbox.id, 3),
        (acct.id, sent.id, 1),
    )
    assert res.over_quota == (acct.id,)
    infos = await store.message_infos(inbox.id)
    assert [(i.uid, i.modseq) for i in infos] == [(1, before + 1), (2, before + 2), (3, before + 3)]
    after = await store.get_mailbox_by_id(inbox.id)
    assert after is not None and (after.uidnext, after.highestmodseq) == (4, before + 3)
    changes = await store.changes_since(inbox.id, before)
    assert [(c.uid, c.modseq) for c in changes] == [
        (1, before + 1),
        (2, before + 2),
        (3, before + 3),
    ]
    assert _rows(store, "SELECT refcount FROM blobs WHERE sha = ?", msg.sha256) == [(4,)]
    account = await store.get_account_by_id(acct.id)
    assert account is not None and account.used == 4 * size
    await _consistent(store, inbox.id)
    await _consistent(store, sent.id)
    res = await store.deliver(make_message("Subject: x\n\nx\n"), [LocalDelivery(acct.id, "Box")])
    assert res.over_quota == (acct.id,) and res.delivered == ()


async def test_noselect_target_falls_back_to_inbox(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("a@example.org", "h")
    await store.create_mailbox(acct.id, "Box/Child")
    await store.delete_mailbox(acct.id, "Box")
    inbox = await store.get_mailbox(acct.id, "INBOX")
    child = await store.get_mailbox(acct.id, "Box/Child")
    assert inbox is not None and child is not None
    res = await store.deliver(
        make_message("Subject: n\n\nn\n"),
        [
            LocalDelivery(acct.id, "Box"),
            LocalDelivery(acct.id, "Box/Child"),
            LocalDelivery(acct.id, "a//b"),
        ],
    )
    assert [d[1:] for d in res.delivered] == [(inbox.id, 1), (child.id, 1), (inbox.id, 2)]


async def test_account_without_inbox_or_gone_is_skipped(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("a@example.org", "h")
    other = await store.add_account("b@example.org", "h")
    assert store._writer is not None
    await store._writer.run(
        lambda tx: tx.conn.execute(
            "UPDATE mailboxes SET selectable = 0 WHERE account_id = ?", (acct.id,)
        )
    )
    res = await store.deliver(
        make_message("Subject: s\n\ns\n"),
        [LocalDelivery(acct.id), LocalDelivery(999_999), LocalDelivery(other.id)],
    )
    assert [d[0] for d in res.delivered] == [other.id] and res.over_quota == ()
    assert _rows(store, "SELECT refcount FROM blobs") == [(1,)]


async def test_a_stale_mailbox_head_fails_loudly(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    """``_insert`` re-checks the (uidnext, highestmodseq) it was given: a UID is never
    handed out twice, even if a caller's head were out of date."""
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("a@example.org", "h")
    msg = make_message("Subject: s\n\ns\n")
    res = await store.deliver(msg, [LocalDelivery(acct.id)])
    _a, inbox_id, uid = res.delivered[0]
    assert store._writer is not None

    def stale(tx: WriteTx) -> tuple[int, int]:
        return sqlite_messages._insert(
            tx, inbox_id, acct.id, (uid, 1), msg.sha256, b"", frozenset(), 0.0, 10
        )

    with pytest.raises(RuntimeError, match="changed under"):
        await store._writer.run(stale)
    assert [i.uid for i in await store.message_infos(inbox_id)] == [uid]
    await _consistent(store, inbox_id)


async def test_listeners_hear_of_a_delivery_before_its_caller_resumes(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("a@example.org", "h")
    inbox = await store.get_mailbox(acct.id, "INBOX")
    assert inbox is not None
    heard: list[tuple[int, int]] = []
    sub = store.watch(inbox.id, lambda m, s: heard.append((m, s)))
    try:
        res = await store.deliver(make_message("Subject: l\n\nl\n"), [LocalDelivery(acct.id)])
        mb = await store.get_mailbox_by_id(inbox.id)
        assert mb is not None and heard == [(inbox.id, mb.highestmodseq)]
        assert res.delivered[0][1] == inbox.id
        # a failed write tells nobody
        with pytest.raises(NotFound):
            await store.append(999_999, make_message("Subject: x\n\nx\n"))
        assert len(heard) == 1
    finally:
        sub.close()


async def test_inline_body_refcount_without_returning(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("a@example.org", "h")
    msg = make_message("Subject: same\n\nsame body\n")
    for _ in range(3):
        await store.deliver(msg, [LocalDelivery(acct.id)])
    assert _rows(
        store, "SELECT refcount, data IS NOT NULL FROM blobs WHERE sha = ?", msg.sha256
    ) == [(3, 1)]
    assert not store.blobs.exists(msg.sha256)
