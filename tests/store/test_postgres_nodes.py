"""Several nodes on one PostgreSQL database: two ``PostgresStore`` objects, each with its
own pool and LISTEN connection, as two ``correo serve`` processes would have.

Issue 7: UIDs/MODSEQs become visible in order under concurrent delivery from both nodes;
change notifications cross nodes within a second (and survive a dropped LISTEN
connection); quota, maildrop locks, UIDVALIDITY and body reference counts hold across
nodes; the schema migrates once when nodes start together.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pg_backend import asyncpg, fresh_database, make_pg_store

from correo.store.base import (
    Account,
    FlagMode,
    IncomingMessage,
    LocalDelivery,
    TemporaryStoreError,
)
from correo.store.postgres import LISTEN_APPLICATION, PostgresStore
from correo.store.postgres_blobs import PgTx

pytestmark = pytest.mark.postgres


def msg(body: bytes | str) -> IncomingMessage:
    data = body.replace("\n", "\r\n").encode() if isinstance(body, str) else body
    return IncomingMessage(data, json.dumps({}).encode())


@pytest.fixture
async def nodes(
    postgres_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    a = await make_pg_store(postgres_dsn, tmp_path)
    b = await make_pg_store(postgres_dsn, tmp_path, url=a.url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@pytest.fixture
async def alice(nodes: tuple[PostgresStore, PostgresStore]) -> Account:
    a, _b = nodes
    await a.add_domain("example.org")
    return await a.add_account("alice@example.org", "h")


async def inbox(store: PostgresStore, account: Account) -> int:
    mb = await store.get_mailbox(account.id, "INBOX")
    assert mb is not None
    return mb.id


async def wait_for(events: asyncio.Queue[tuple[int, int]], timeout: float = 1.0) -> tuple[int, int]:
    return await asyncio.wait_for(events.get(), timeout)


async def test_notifications_cross_nodes(
    nodes: tuple[PostgresStore, PostgresStore], alice: Account
) -> None:
    a, b = nodes
    mid = await inbox(a, alice)
    events: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    sub = b.watch(mid, lambda m, s: events.put_nowait((m, s)))
    res = await a.deliver(msg("Subject: 1\n\nhello\n"), [LocalDelivery(alice.id)])
    uid = res.delivered[0][2]
    got = await wait_for(events)  # IDLE on B sees A's delivery within one second
    mb = await b.get_mailbox_by_id(mid)
    assert mb is not None and got == (mid, mb.highestmodseq)
    (change,) = await b.changes_since(mid, got[1] - 1)
    assert change.uid == uid
    ups = await a.set_flags(mid, [uid], frozenset({"\\Deleted"}), FlagMode.ADD)
    assert await wait_for(events) == (mid, ups[0].modseq)
    assert await a.expunge(mid) == [uid]
    m2, s2 = await wait_for(events)
    assert m2 == mid and [c.kind.value for c in await b.changes_since(mid, ups[0].modseq)] == [
        "expunged"
    ]
    assert s2 > ups[0].modseq
    # the writing node hears its own change once (published at commit, echo dropped)
    await asyncio.sleep(0.3)  # let the echoes of A's earlier changes arrive first
    own: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    sub_a = a.watch(mid, lambda m, s: own.put_nowait((m, s)))
    res = await a.deliver(msg("Subject: 2\n\n2\n"), [LocalDelivery(alice.id)])
    first = own.get_nowait()  # published before deliver() returned
    assert await wait_for(events) == first
    await asyncio.sleep(0.3)
    assert own.empty() and first[0] == mid == res.delivered[0][1]
    sub.close()
    sub_a.close()
    await a.deliver(msg("Subject: 3\n\n3\n"), [LocalDelivery(alice.id)])
    await asyncio.sleep(0.3)
    assert events.empty()


async def test_uids_become_visible_in_order(
    nodes: tuple[PostgresStore, PostgresStore], alice: Account
) -> None:
    """Both nodes deliver to one mailbox at once; a reader polling all the while must
    only ever see UIDs 1..n with no gap (a gap = a later UID committed first)."""
    a, b = nodes
    mid = await inbox(a, alice)
    per_node = 60
    done = False
    snapshots = 0

    async def reader() -> None:
        nonlocal snapshots
        while not done:
            infos = await b.message_infos(mid)
            uids = [i.uid for i in infos]
            assert uids == list(range(1, len(uids) + 1)), f"gap in {uids}"
            modseqs = [i.modseq for i in infos]
            assert modseqs == sorted(modseqs)
            snapshots += 1
            await asyncio.sleep(0)

    async def writer(store: PostgresStore, tag: str) -> list[int]:
        results = await asyncio.gather(
            *(
                store.deliver(msg(f"Subject: {tag}{i}\n\n{tag}{i}\n"), [LocalDelivery(alice.id)])
                for i in range(per_node)
            )
        )
        return [r.delivered[0][2] for r in results]

    read_task = asyncio.create_task(reader())
    uids_a, uids_b = await asyncio.gather(writer(a, "a"), writer(b, "b"))
    done = True
    await read_task
    assert sorted(uids_a + uids_b) == list(range(1, 2 * per_node + 1))
    assert snapshots > 5
    mb = await a.get_mailbox_by_id(mid)
    assert mb is not None and mb.exists == 2 * per_node and mb.uidnext == 2 * per_node + 1
    infos = await a.message_infos(mid)
    assert len({i.modseq for i in infos}) == 2 * per_node


async def test_quota_holds_across_nodes(nodes: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = nodes
    await a.add_domain("example.org")
    bob = await a.add_account("bob@example.org", "h", quota=1000)
    messages = [msg(b"%03d" % i + b"x" * 97) for i in range(30)]  # 100 bytes each
    results = await asyncio.gather(
        *((a if i % 2 else b).deliver(m, [LocalDelivery(bob.id)]) for i, m in enumerate(messages))
    )
    stored = sum(1 for r in results if r.delivered)
    refused = sum(1 for r in results if r.over_quota == (bob.id,))
    assert (stored, refused) == (10, 20)
    acct = await b.get_account_by_id(bob.id)
    assert acct is not None and acct.used == 1000


async def test_maildrop_lock_across_nodes(
    nodes: tuple[PostgresStore, PostgresStore], alice: Account
) -> None:
    a, b = nodes
    assert await a.lock_maildrop(alice.id, "node-a:1", 60)
    assert not await b.lock_maildrop(alice.id, "node-b:1", 60)
    await b.unlock_maildrop(alice.id, "node-b:1")
    assert not await b.lock_maildrop(alice.id, "node-b:1", 60)
    await a.unlock_maildrop(alice.id, "node-a:1")
    assert await b.lock_maildrop(alice.id, "node-b:1", 0.05)
    await asyncio.sleep(0.1)
    assert await a.lock_maildrop(alice.id, "node-a:2", 60)  # B's lock expired


async def test_uidvalidity_unique_across_nodes(
    nodes: tuple[PostgresStore, PostgresStore], alice: Account
) -> None:
    a, b = nodes
    boxes = await asyncio.gather(
        *((a if i % 2 else b).create_mailbox(alice.id, f"Box{i}") for i in range(20))
    )
    every = [m.uidvalidity for m in await a.list_mailboxes(alice.id)]
    assert len(set(every)) == len(every) == 26
    assert len({m.uidvalidity for m in boxes}) == 20


async def test_shared_body_refcount_across_nodes(
    nodes: tuple[PostgresStore, PostgresStore], alice: Account
) -> None:
    a, b = nodes
    bob = await a.add_account("bob@example.org", "h")
    big = msg(b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 40000)  # 640 KB: 3 chunks
    await asyncio.gather(
        a.deliver(big, [LocalDelivery(alice.id)]), b.deliver(big, [LocalDelivery(bob.id)])
    )
    async with a.pool.acquire() as conn:
        refcount = await conn.fetchval("SELECT refcount FROM blobs WHERE sha = $1", big.sha256)
        chunks = await conn.fetchval("SELECT count(*) FROM blob_chunks WHERE sha = $1", big.sha256)
    assert (refcount, chunks) == (2, 3)
    (stored,) = await b.get_messages(await inbox(b, alice), [1])
    assert await (await b.open_body(stored)).read() == big.data
    for store, acct in ((a, alice), (b, bob)):
        mid = await inbox(store, acct)
        await store.set_flags(mid, [1], frozenset({"\\Deleted"}), FlagMode.ADD)
        assert await store.expunge(mid) == [1]
    async with a.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM blobs") == 0
        assert await conn.fetchval("SELECT count(*) FROM blob_chunks") == 0


async def test_files_mode_shared_directory(postgres_dsn: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared-blobs"
    a = await make_pg_store(postgres_dsn, tmp_path, blobs="files", blob_dir=shared)
    b = await make_pg_store(postgres_dsn, tmp_path, url=a.url, blobs="files", blob_dir=shared)
    try:
        await a.add_domain("example.org")
        alice = await a.add_account("alice@example.org", "h")
        big = msg(b"Subject: f\r\n\r\n" + b"z" * 100_000)
        await a.deliver(big, [LocalDelivery(alice.id)])
        assert a.blobs.files is not None and a.blobs.files.exists(big.sha256)
        mid = await inbox(b, alice)
        (stored,) = await b.get_messages(mid, [1])
        assert await (await b.open_body(stored)).read() == big.data
        await b.set_flags(mid, [1], frozenset({"\\Deleted"}), FlagMode.ADD)
        await b.expunge(mid)
        assert not a.blobs.files.exists(big.sha256)
    finally:
        await a.close()
        await b.close()


async def test_listener_reconnects_and_reannounces(
    nodes: tuple[PostgresStore, PostgresStore], alice: Account
) -> None:
    a, b = nodes
    mid = await inbox(a, alice)
    events: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    b.watch(mid, lambda m, s: events.put_nowait((m, s)))
    assert b.listener is not None
    async with a.pool.acquire() as conn:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = $1",
            LISTEN_APPLICATION,
        )
    assert killed == 2  # both nodes' LISTEN connections
    # while B is reconnecting, A delivers: that NOTIFY is lost to B, so B must
    # re-announce the mailbox once it is back
    await a.deliver(msg("Subject: during\n\nx\n"), [LocalDelivery(alice.id)])
    got = await wait_for(events, timeout=10)
    assert got[0] == mid
    mb = await b.get_mailbox_by_id(mid)
    assert mb is not None and got[1] <= mb.highestmodseq
    while not events.empty():
        events.get_nowait()
    await asyncio.wait_for(b.listener.connected.wait(), 10)
    assert b.listener.reconnects >= 1
    await a.deliver(msg("Subject: after\n\ny\n"), [LocalDelivery(alice.id)])
    while True:  # the re-announcement may come before or after; the new modseq must come
        _m, s = await wait_for(events, timeout=2)
        mb = await a.get_mailbox_by_id(mid)
        assert mb is not None
        if s == mb.highestmodseq:
            break


async def test_nodes_migrate_once_when_starting_together(postgres_dsn: str, tmp_path: Path) -> None:
    url = await fresh_database(postgres_dsn)
    stores = [PostgresStore(url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT series, version FROM schema_version")
        finally:
            await conn.close()
        assert len(rows) == len({(r[0], r[1]) for r in rows}) >= 3
    finally:
        for s in stores:
            await s.close()


async def test_dropped_connections(
    nodes: tuple[PostgresStore, PostgresStore], alice: Account
) -> None:
    """The database kills every connection of node A (a failover, an admin): A's next
    writes go through on fresh connections (a stale pooled connection is replaced before
    BEGIN); a connection lost in the middle of a transaction is TemporaryStoreError
    (answered 4xx / NO) with nothing half-done."""
    a, b = nodes
    mid = await inbox(a, alice)
    await asyncio.gather(*(a.get_mailbox_by_id(mid) for _ in range(8)))  # fill A's pool

    async def kill_all_but(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    async with b.pool.acquire() as conn:
        await kill_all_but(conn)
    for i in range(a.pool_size + 2):
        await a.deliver(msg(f"Subject: r{i}\n\n{i}\n"), [LocalDelivery(alice.id)])
    stored = a.pool_size + 2
    assert await a.get_mailbox_by_id(mid) is not None

    async def dies_midway(tx: PgTx) -> None:
        await tx.conn.execute("UPDATE mailboxes SET uidnext = uidnext + 100 WHERE id = $1", mid)
        async with b.pool.acquire() as other:
            await other.execute("SELECT pg_terminate_backend($1)", tx.conn.get_server_pid())
        await tx.conn.execute("SELECT 1")

    with pytest.raises(TemporaryStoreError):
        await a._write(dies_midway)
    mb = await a.get_mailbox_by_id(mid)
    assert mb is not None and mb.uidnext == stored + 1 and mb.exists == stored
    infos = await a.message_infos(mid)
    assert [i.uid for i in infos] == list(range(1, stored + 1))


async def test_multi_recipient_deliveries_across_nodes(
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    """Messages to many local users from both nodes at once, recipients listed in
    opposite orders: locks are taken in id order, so no deadlock (no retry), and every
    mailbox gets contiguous UIDs with counters that match its rows."""
    a, b = nodes
    await a.add_domain("example.org")
    users = [await a.add_account(f"u{i}@example.org", "h") for i in range(10)]
    work = await a.create_mailbox(users[0].id, "Work")
    forward = [LocalDelivery(u.id) for u in users] + [LocalDelivery(users[0].id, "Work")]
    backward = [*reversed(forward), LocalDelivery(users[0].id)]  # u0's INBOX twice
    results = await asyncio.gather(
        *(
            (a if i % 2 else b).deliver(
                msg(f"Subject: m{i}\n\n{i}\n"), forward if i % 2 else backward
            )
            for i in range(20)
        )
    )
    assert a.retried == b.retried == 0
    for res, i in zip(results, range(20), strict=True):
        assert len(res.delivered) == (11 if i % 2 else 12)
    assert results[0].delivered[-1][0] == users[0].id  # in the order of the request
    for u in users:
        mb = await b.get_mailbox(u.id, "INBOX")
        assert mb is not None
        infos = await b.message_infos(mb.id)
        expected = 30 if u is users[0] else 20
        assert [i.uid for i in infos] == list(range(1, expected + 1))
        assert mb.exists == expected and mb.unseen == expected
        acct = await b.get_account_by_id(u.id)
        total = sum(i.size for i in infos)
        if u is users[0]:
            total += sum(i.size for i in await b.message_infos(work.id))
        assert acct is not None and acct.used == total
    assert [i.uid for i in await b.message_infos(work.id)] == list(range(1, 21))


async def test_files_mode_sweeps_old_orphans(postgres_dsn: str, tmp_path: Path) -> None:
    """A node died between writing a body file and committing its row: the file (and a
    half-written temporary) go once old enough; referenced and young files stay."""
    shared = tmp_path / "shared-blobs"
    a = await make_pg_store(postgres_dsn, tmp_path, blobs="files", blob_dir=shared)
    try:
        await a.add_domain("example.org")
        alice = await a.add_account("alice@example.org", "h")
        kept = msg(b"Subject: kept\r\n\r\n" + b"k" * 20_000)
        await a.deliver(kept, [LocalDelivery(alice.id)])
        files = a.blobs.files
        assert files is not None
        orphan, young = msg(b"o" * 20_000), msg(b"y" * 20_000)
        files.write(orphan.sha256, orphan.data)
        files.write(young.sha256, young.data)
        temp = files.path(orphan.sha256).parent / ".tmp-deadbeef"
        temp.write_bytes(b"half")
        old = time.time() - 2 * 3600
        for path in (files.path(orphan.sha256), files.path(kept.sha256), temp):
            os.utime(path, (old, old))
    finally:
        await a.close()
    b = await make_pg_store(postgres_dsn, tmp_path, url=a.url, blobs="files", blob_dir=shared)
    try:
        assert b.sweeper is not None
        assert await b.sweeper == 2
        assert files.exists(kept.sha256) and files.exists(young.sha256)
        assert not files.exists(orphan.sha256) and not temp.exists()
    finally:
        await b.close()
