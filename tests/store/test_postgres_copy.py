"""``correo store copy``: SQLite → PostgreSQL → SQLite keeps everything a client sees.

A populated SQLite installation (accounts, quota, aliases, a \\Noselect mailbox, small and
chunked bodies shared by several mailboxes, flags, an expunge in the change log, queue
entries) is copied to PostgreSQL and back; each copy must show the same mailboxes with the
same UIDVALIDITY/UIDNEXT/HIGHESTMODSEQ, the same messages with the same UIDs, MODSEQs,
flags, dates and bytes, the same change log and the same queue. The copy is resumable
and refuses a destination holding another installation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pg_backend import asyncpg, fresh_database

from correo.cli import main
from correo.config import load
from correo.store import open_store
from correo.store.base import (
    FlagMode,
    IncomingMessage,
    LocalDelivery,
    QueueRecipient,
    QueueRequest,
    Store,
)
from correo.store.postgres import open_postgres_store
from correo.store.queue import QueueStore
from correo.store.sqlite import SqliteStore

pytestmark = pytest.mark.postgres


def msg(data: bytes) -> IncomingMessage:
    return IncomingMessage(data, json.dumps({"n": 1}).encode())


def write_config(root: Path, storage: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "correo.toml"
    path.write_text(f'hostname = "mx.example.org"\n[storage]\n{storage}\n')
    return path


async def populate(store: Store) -> None:
    await store.add_domain("example.org")
    await store.add_domain("other.example")
    alice = await store.add_account("alice@example.org", "hash-a", quota=10_000_000)
    bob = await store.add_account("bob@other.example", "hash-b")
    await store.set_disabled("bob@other.example", True)
    await store.add_alias("info@example.org", ["alice@example.org", "x@remote.example"])
    await store.add_alias("@other.example", ["bob@other.example"])
    await store.create_mailbox(alice.id, "Lists/Débats")
    await store.delete_mailbox(alice.id, "Lists")  # leaves a \Noselect placeholder
    await store.set_subscribed(alice.id, "Ghost", True)
    big = msg(b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 30_000)  # chunked / a file
    await store.deliver(big, [LocalDelivery(alice.id, prefix=b"X-P: a\r\n"), LocalDelivery(bob.id)])
    for i in range(12):
        await store.deliver(
            msg(b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i)),
            [LocalDelivery(alice.id, flags=frozenset({"\\Seen"}) if i % 3 else frozenset())],
        )
    inbox = await store.get_mailbox(alice.id, "INBOX")
    assert inbox is not None
    await store.set_flags(inbox.id, [2, 3, 4], frozenset({"\\Deleted", "$Work"}), FlagMode.ADD)
    await store.expunge(inbox.id, [2, 3])
    lists = await store.get_mailbox(alice.id, "Lists/Débats")
    assert lists is not None
    await store.copy(inbox.id, [1, 5, 6], lists.id)
    await store.claim_recent(inbox.id)
    await store.deliver(
        msg(b"Subject: out\r\n\r\nremote\r\n"),
        [LocalDelivery(alice.id, mailbox="Sent")],
        QueueRequest(
            sender="alice@example.org",
            recipients=(
                QueueRecipient("y@remote.example", notify=frozenset({"FAILURE", "DELAY"})),
                QueueRecipient("z@remote.example", orcpt="rfc822;z@remote.example"),
            ),
            envid="ENV1",
            ret="HDRS",
            prefix=b"Received: by mx\r\n",
        ),
    )


def queue_store(store: Store) -> QueueStore:
    from correo.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        from correo.store.postgres_queue import PostgresQueueStore

        return PostgresQueueStore(store)
    from correo.store.queue_sqlite import SqliteQueueStore

    assert isinstance(store, SqliteStore)
    return SqliteQueueStore(store)


async def snapshot(store: Store) -> dict[str, Any]:
    """Everything a client or the queue can observe, keyed for comparison."""
    out: dict[str, Any] = {
        "domains": [d.name for d in await store.list_domains()],
        "accounts": await store.list_accounts(),
        "aliases": await store.list_aliases(),
    }
    for acct in out["accounts"]:
        out[f"subs {acct.id}"] = await store.list_subscriptions(acct.id)
        for mb in await store.list_mailboxes(acct.id):
            out[f"mailbox {mb.id}"] = mb
            infos = await store.message_infos(mb.id)
            out[f"infos {mb.id}"] = infos
            out[f"changes {mb.id}"] = await store.changes_since(mb.id, 0)
            for m in await store.get_messages(mb.id, [i.uid for i in infos]):
                body = await store.open_body(m)
                out[f"message {mb.id}/{m.uid}"] = (m, await body.read())
    out["queue"] = await queue_store(store).list_entries()
    return out


def run_copy(a: Path, b: Path) -> Any:
    return CliRunner().invoke(main, ["store", "copy", "--from", str(a), "--to", str(b)])


async def open_at(path: Path) -> Store:
    settings = load(path)
    if settings.storage.backend == "postgresql":
        return await open_postgres_store(settings)
    return await open_store(settings)


async def take(path: Path) -> dict[str, Any]:
    store = await open_at(path)
    try:
        return await snapshot(store)
    finally:
        await store.close()


@pytest.mark.parametrize("bodies", ["database", "files"])
def test_sqlite_to_postgres_and_back(postgres_dsn: str, tmp_path: Path, bodies: str) -> None:
    src = write_config(tmp_path / "a", 'backend = "sqlite"')
    url = asyncio.run(fresh_database(postgres_dsn))
    pg = write_config(tmp_path / "b", f'backend = "postgresql"\nurl = "{url}"\nblobs = "{bodies}"')
    back = write_config(tmp_path / "c", 'backend = "sqlite"\ninline_threshold = 100')

    async def fill() -> dict[str, Any]:
        store = await open_at(src)
        try:
            await populate(store)
            return await snapshot(store)
        finally:
            await store.close()

    before = asyncio.run(fill())
    result = run_copy(src, pg)
    assert result.exit_code == 0, result.output
    assert "copy complete: every count matches" in result.output
    assert asyncio.run(take(pg)) == before

    # the big body sits in blob_chunks (or a file); sequences moved past the copied ids
    async def after_copy() -> None:
        conn = await asyncpg.connect(url)
        try:
            chunks = await conn.fetchval("SELECT count(*) FROM blob_chunks")
        finally:
            await conn.close()
        pg_files = [p for p in (tmp_path / "b" / "data" / "blobs").rglob("*") if p.is_file()]
        assert (chunks, len(pg_files)) == ((2, 0) if bodies == "database" else (0, 1))
        store = await open_at(pg)
        try:
            carol = await store.add_account("carol@example.org", "h")
            assert carol.id > max(a.id for a in before["accounts"])
            fresh = await store.create_mailbox(carol.id, "New")
            olds = [v.uidvalidity for k, v in before.items() if k.startswith("mailbox ")]
            assert fresh.uidvalidity > max(olds)
            await store.remove_account("carol@example.org")
        finally:
            await store.close()

    asyncio.run(after_copy())

    # and back to SQLite (with a different inline threshold: bodies re-stored as files)
    result = run_copy(pg, back)
    assert result.exit_code == 0, result.output
    assert asyncio.run(take(back)) == before
    files = [p for p in (tmp_path / "c" / "data" / "blobs").rglob("*") if len(p.name) == 64]
    assert len(files) == 1  # the big body; the others are inline (threshold 100)


def test_resume_and_refusal(postgres_dsn: str, tmp_path: Path) -> None:
    src = write_config(tmp_path / "a", 'backend = "sqlite"')
    url = asyncio.run(fresh_database(postgres_dsn))
    pg = write_config(tmp_path / "b", f'backend = "postgresql"\nurl = "{url}"')

    async def fill() -> dict[str, Any]:
        store = await open_at(src)
        try:
            await populate(store)
            return await snapshot(store)
        finally:
            await store.close()

    before = asyncio.run(fill())
    assert run_copy(src, pg).exit_code == 0

    # an interrupted copy: the later tables only partly there
    async def lose_half() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("DELETE FROM queue_recipients")
            await conn.execute("DELETE FROM queue_messages")
            await conn.execute("DELETE FROM changes WHERE uid % 2 = 0")
            await conn.execute("DELETE FROM messages WHERE uid > 6")
        finally:
            await conn.close()

    asyncio.run(lose_half())
    again = run_copy(src, pg)
    assert again.exit_code == 0, again.output
    assert asyncio.run(take(pg)) == before

    # a destination with another installation's accounts is refused
    other = write_config(tmp_path / "d", 'backend = "sqlite"')

    async def other_install() -> None:
        store = await open_at(other)
        try:
            await store.add_domain("elsewhere.example")
            await store.add_account("zed@elsewhere.example", "h")
        finally:
            await store.close()

    asyncio.run(other_install())
    refused = run_copy(src, other)
    assert refused.exit_code == 1
    assert "already holds 1 other account" in refused.output
    assert run_copy(src, src).exit_code == 1
