"""The SQLite backend's own machinery: blob files, reference counts, queue references,
backup, migrations."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from correo.config import Settings, StorageSettings
from correo.store import open_store
from correo.store.base import (
    DiskFullError,
    FlagMode,
    IncomingMessage,
    LocalDelivery,
    OverQuota,
    QueueRecipient,
    QueueRequest,
    TemporaryStoreError,
)
from correo.store.blobs import BlobFiles, FileBody, InlineBody, os_error
from correo.store.events import EventHub
from correo.store.sqlite import SqliteStore
from correo.store.sqlite_rows import release_queue_blob
from correo.store.sqlite_schema import map_error

MakeMessage = Callable[..., IncomingMessage]
BIG = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 1024  # 16 KiB > inline threshold


def blob_row(store: SqliteStore, sha: str) -> tuple[int, bool] | None:
    row = store._now(
        lambda c: c.execute(
            "SELECT refcount, data IS NULL FROM blobs WHERE sha = ?", (sha,)
        ).fetchone()
    )
    return (int(row[0]), bool(row[1])) if row else None


def blob_files(root: Path) -> list[Path]:
    return [p for p in BlobFiles(root).walk() if p.name != ".lock"]


# --------------------------------------------------------------------------- files


def test_blob_files_write_dedup_sweep(tmp_path: Path) -> None:
    files = BlobFiles(tmp_path / "blobs")
    data = b"hello"
    sha = hashlib.sha256(data).hexdigest()
    assert files.write(sha, data) is True
    assert files.path(sha) == tmp_path / "blobs" / sha[:2] / sha[2:4] / sha
    assert files.path(sha).read_bytes() == data
    assert files.write(sha, data) is False
    assert [p.name for p in files.walk()] == [sha]
    other = hashlib.sha256(b"other").hexdigest()
    files.write(other, b"other")
    (files.path(other).parent / ".tmp-123").write_bytes(b"half")
    assert files.sweep(lambda s: s == sha) == 2
    assert [p.name for p in files.walk()] == [sha]
    with pytest.raises(ValueError):
        files.path("../../etc/passwd")


async def test_body_ranges(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10
    path = tmp_path / "body"
    path.write_bytes(data)
    whole = b"PREFIX\r\n" + data
    for body in (FileBody(b"PREFIX\r\n", path, len(data)), InlineBody(b"PREFIX\r\n", data)):
        assert body.size == len(whole)
        assert await body.read() == whole
        assert await body.read(3, 10) == whole[3:13]
        assert await body.read(len(whole) + 5) == b""
        assert await body.read(len(whole) - 2, 100) == whole[-2:]
        parts = [c async for c in body.chunks(4, 1000, chunk=100)]
        assert b"".join(parts) == whole[4:1004] and max(map(len, parts)) <= 100


# --------------------------------------------------------------------------- refcounts


async def test_small_bodies_inline_big_bodies_in_one_file(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    store = sqlite_store
    await store.add_domain("example.org")
    accounts = [await store.add_account(f"u{i}@example.org", "h") for i in range(3)]
    small = make_message("Subject: s\n\nsmall\n")
    await store.deliver(small, [LocalDelivery(a.id) for a in accounts])
    assert blob_row(store, small.sha256) == (3, False)
    assert blob_files(store.blobs.root) == []
    big = make_message(BIG)
    res = await store.deliver(big, [LocalDelivery(a.id) for a in accounts])
    assert blob_row(store, big.sha256) == (3, True)
    assert [p.name for p in blob_files(store.blobs.root)] == [big.sha256]
    # the last reference going removes the row, and the file after commit
    for _acct, mailbox_id, uid in res.delivered:
        assert store.blobs.exists(big.sha256)
        await store.set_flags(mailbox_id, [uid], frozenset({"\\Deleted"}), FlagMode.ADD)
        await store.expunge(mailbox_id)
    assert blob_row(store, big.sha256) is None
    assert not store.blobs.exists(big.sha256)
    # the same body again is written again
    res = await store.deliver(big, [LocalDelivery(accounts[0].id)])
    assert store.blobs.exists(big.sha256) and blob_row(store, big.sha256) == (1, True)


async def test_copy_adds_references(sqlite_store: SqliteStore, make_message: MakeMessage) -> None:
    store = sqlite_store
    await store.add_domain("example.org")
    a = await store.add_account("a@example.org", "h")
    big = make_message(BIG)
    res = await store.deliver(big, [LocalDelivery(a.id)])
    _acct, inbox, uid = res.delivered[0]
    trash = await store.get_mailbox(a.id, "Trash")
    assert trash is not None
    await store.copy(inbox, [uid], trash.id)
    assert blob_row(store, big.sha256) == (2, True)
    await store.move(trash.id, [1], inbox)
    assert blob_row(store, big.sha256) == (2, True)
    await store.delete_mailbox(a.id, "Trash")
    await store.remove_account("a@example.org")
    assert blob_row(store, big.sha256) is None and not store.blobs.exists(big.sha256)


async def test_expunge_racing_redelivery_keeps_the_file(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    store = sqlite_store
    await store.add_domain("example.org")
    a = await store.add_account("a@example.org", "h")
    big = make_message(BIG)
    for _ in range(20):
        res = await store.deliver(big, [LocalDelivery(a.id)])
        _acct, inbox, uid = res.delivered[0]
        await store.set_flags(inbox, [uid], frozenset({"\\Deleted"}), FlagMode.ADD)
        _expunged, again = await asyncio.gather(
            store.expunge(inbox), store.deliver(big, [LocalDelivery(a.id)])
        )
        (m,) = await store.get_messages(inbox, [again.delivered[0][2]])
        assert await (await store.open_body(m)).read() == big.data
        await store.set_flags(inbox, [m.uid], frozenset({"\\Deleted"}), FlagMode.ADD)
        await store.expunge(inbox)
    assert blob_row(store, big.sha256) is None and blob_files(store.blobs.root) == []


async def test_queue_rows_hold_a_reference(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    store = sqlite_store
    await store.add_domain("example.org")
    a = await store.add_account("a@example.org", "h")
    big = make_message(BIG)
    q = QueueRequest(
        sender="a@example.org",
        recipients=(
            QueueRecipient("x@remote.example", orcpt="rfc822;x@remote.example"),
            QueueRecipient("y@other.example", notify=frozenset({"SUCCESS", "FAILURE"})),
        ),
        envid="ENV1",
        ret="FULL",
        body_8bit=True,
        prefix=b"Received: by test\r\n",
    )
    res = await store.deliver(big, [LocalDelivery(a.id)], q)
    assert res.queue_id is not None and blob_row(store, big.sha256) == (2, True)
    rows = store._now(
        lambda c: c.execute(
            "SELECT r.address, r.domain, r.orcpt, r.notify, r.state, r.attempts, m.sender,"
            " m.envid, m.ret, m.body_8bit, m.prefix, m.blob_id FROM queue_recipients r"
            " JOIN queue_messages m ON m.id = r.queue_id WHERE m.id = ? ORDER BY r.id",
            (res.queue_id,),
        ).fetchall()
    )
    assert [r[:6] for r in rows] == [
        ("x@remote.example", "remote.example", "rfc822;x@remote.example", "", "pending", 0),
        ("y@other.example", "other.example", None, "FAILURE,SUCCESS", "pending", 0),
    ]
    assert rows[0][6:] == ("a@example.org", "ENV1", "FULL", 1, b"Received: by test\r\n", big.sha256)
    _acct, inbox, uid = res.delivered[0]
    await store.set_flags(inbox, [uid], frozenset({"\\Deleted"}), FlagMode.ADD)
    await store.expunge(inbox)
    assert blob_row(store, big.sha256) == (1, True) and store.blobs.exists(big.sha256)
    queue_id = res.queue_id
    assert store._writer is not None
    await store._writer.run(lambda tx: release_queue_blob(tx, queue_id))
    assert blob_row(store, big.sha256) is None and not store.blobs.exists(big.sha256)


# --------------------------------------------------------------------------- lifecycle


async def test_backup_is_a_usable_snapshot(
    sqlite_store: SqliteStore, make_message: MakeMessage, tmp_path: Path
) -> None:
    store = sqlite_store
    await store.add_domain("example.org")
    a = await store.add_account("a@example.org", "h")
    small, big = make_message("Subject: s\n\ns\n"), make_message(BIG)
    await store.deliver(small, [LocalDelivery(a.id)])
    await store.deliver(big, [LocalDelivery(a.id)])
    await store.backup(str(tmp_path / "bk"))
    copy = SqliteStore(tmp_path / "bk" / "correo.db", tmp_path / "bk" / "blobs")
    await copy.open()
    try:
        assert copy.swept == 0
        inbox = await copy.get_mailbox(a.id, "INBOX")
        assert inbox is not None and inbox.exists == 2
        got = await copy.get_messages(inbox.id, [1, 2])
        assert [await (await copy.open_body(m)).read() for m in got] == [small.data, big.data]
    finally:
        await copy.close()


async def test_migrations_recorded_once_and_open_store(tmp_path: Path) -> None:
    settings = Settings(path=tmp_path / "correo.toml", data_dir=tmp_path / "data")
    for _ in range(2):
        store = await open_store(settings)
        await store.close()
    schema = Path(__file__).resolve().parents[2] / "correo" / "store" / "schema"
    versions = sorted(int(p.name[:4]) for p in schema.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    db = sqlite3.connect(tmp_path / "data" / "correo.db")
    try:
        assert [v for (v,) in db.execute("SELECT version FROM schema_version")] == versions
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()
    assert (tmp_path / "data" / "blobs").is_dir()
    pg = Settings(
        path=tmp_path / "c.toml",
        storage=StorageSettings(backend="postgresql", url="postgresql://x@127.0.0.1:1/x"),
    )
    with pytest.raises(TemporaryStoreError, match=r"127\.0\.0\.1"):  # routed to PostgreSQL
        await open_store(pg)


async def test_second_process_does_not_sweep(tmp_path: Path) -> None:
    """While one store has the blob directory open, another opening skips the sweep
    (a blob written by the first and not yet committed must survive)."""
    first = SqliteStore(tmp_path / "c.db", tmp_path / "blobs")
    await first.open()
    try:
        pending = hashlib.sha256(b"in flight").hexdigest()
        first.blobs.write(pending, b"in flight")
        # flock locks belong to open file descriptions: a second open() behaves like
        # another process
        second = SqliteStore(tmp_path / "c.db", tmp_path / "blobs")
        await second.open()
        await second.close()
        assert first.blobs.exists(pending)
    finally:
        await first.close()


async def test_refused_big_bodies_leave_no_file(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    store = sqlite_store
    await store.add_domain("example.org")
    a = await store.add_account("a@example.org", "h", quota=1000)
    big = make_message(BIG)
    res = await store.deliver(big, [LocalDelivery(a.id)])
    assert res.over_quota == (a.id,) and res.delivered == ()
    inbox = await store.get_mailbox(a.id, "INBOX")
    assert inbox is not None
    with pytest.raises(OverQuota):
        await store.append(inbox.id, big)
    assert blob_row(store, big.sha256) is None and blob_files(store.blobs.root) == []


def test_error_mapping() -> None:
    assert isinstance(os_error(OSError(errno.ENOSPC, "No space left"), "w"), DiskFullError)
    eio = os_error(OSError(errno.EIO, "I/O error"), "w")
    assert isinstance(eio, TemporaryStoreError) and not isinstance(eio, DiskFullError)
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("PRAGMA max_page_count = 2")
        with pytest.raises(sqlite3.Error) as exc:
            conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 4096,)] * 10)
        assert isinstance(map_error(exc.value), DiskFullError)
        with pytest.raises(sqlite3.Error) as exc:
            conn.execute("SELECT * FROM missing")
        mapped = map_error(exc.value)
        assert isinstance(mapped, TemporaryStoreError) and not isinstance(mapped, DiskFullError)
    finally:
        conn.close()


async def test_event_hub_isolates_listeners() -> None:
    hub = EventHub()
    got: list[tuple[int, int]] = []

    def bad(_m: int, _s: int) -> None:
        raise RuntimeError("listener bug")

    hub.subscribe(1, bad)
    sub = hub.subscribe(1, lambda m, s: got.append((m, s)))
    hub.subscribe(2, lambda m, s: got.append((m, s)))
    hub.publish(1, 5)
    hub.publish_threadsafe(asyncio.get_running_loop(), [(2, 7), (3, 1)])
    await asyncio.sleep(0)
    assert got == [(1, 5), (2, 7)]
    sub.close()
    assert hub.listener_count(1) == 1
