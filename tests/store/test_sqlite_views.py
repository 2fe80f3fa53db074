"""The SQLite store's IMAP read paths (``correo.store.sqlite_views``): the persisted
compact view SELECT answers from (RFC 3501 §6.3.1) must always equal what the message
rows say, whatever happened since it was saved; the batched reads must equal
``get_messages``."""

from __future__ import annotations

import sqlite3

import pytest

from correo.imap import snapshot
from correo.mail.message import prepare
from correo.store import sqlite_views
from correo.store.base import FlagMode, MailboxSnapshot, NotFound
from correo.store.sqlite import SqliteStore

pytestmark = pytest.mark.asyncio


def msg(n: int) -> bytes:
    return f"From: a{n}@example.org\r\nSubject: m{n}\r\n\r\nbody {n}\r\n".encode()


async def reference(store: SqliteStore, mailbox_id: int) -> MailboxSnapshot:
    """The snapshot built the slow way, from every message row."""
    mbx = await store.get_mailbox_by_id(mailbox_id)
    assert mbx is not None
    infos = await store.message_infos(mailbox_id)
    return snapshot.from_infos(mbx, [(i.uid, i.flags) for i in infos])


async def check(store: SqliteStore, mailbox_id: int, *, exact_keywords: bool = True) -> None:
    got = await store.mailbox_view(mailbox_id)
    want = await reference(store, mailbox_id)
    assert list(got.uids) == list(want.uids)
    assert (got.unseen, got.first_unseen) == (want.unseen, want.first_unseen)
    assert (got.uidvalidity, got.uidnext, got.highestmodseq) == (
        want.uidvalidity,
        want.uidnext,
        want.highestmodseq,
    )
    assert got.first_recent_uid == want.first_recent_uid
    if exact_keywords:
        assert got.keywords == want.keywords
    else:  # a keyword no message carries any more may still be listed (§7.2.6)
        assert got.keywords >= want.keywords


def saved_modseq(store: SqliteStore, mailbox_id: int) -> int | None:
    conn = sqlite3.connect(store.db_path)
    try:
        row = conn.execute(
            "SELECT modseq FROM mailbox_views WHERE mailbox_id = ?", (mailbox_id,)
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return None if row is None else int(row[0])


async def setup(store: SqliteStore) -> int:
    await store.add_domain("example.org")
    acct = await store.add_account("alice@example.org", "hash")
    box = await store.create_mailbox(acct.id, "Box")
    return box.id


@pytest.mark.parametrize("few", [sqlite_views.FEW, 0], ids=["in-place", "rebuilt-arrays"])
async def test_view_follows_every_kind_of_change(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch, few: int
) -> None:
    monkeypatch.setattr(sqlite_views, "FEW", few)
    store = sqlite_store
    box = await setup(store)
    empty = await store.mailbox_view(box)
    assert list(empty.uids) == [] and empty.first_unseen is None
    for n in range(10):
        await store.append(box, prepare(msg(n)), frozenset({"\\Seen"} if n % 2 else set()))
    monkeypatch.setattr(sqlite_views, "PERSIST_AFTER", 1)
    await check(store, box)  # the ten additions folded in and saved
    mbx = await store.get_mailbox_by_id(box)
    assert mbx is not None and saved_modseq(store, box) == mbx.highestmodseq
    monkeypatch.setattr(sqlite_views, "PERSIST_AFTER", 10_000)  # fold in, do not re-save
    builds: list[int] = []
    real_build = sqlite_views.build

    def counting_build(
        conn: sqlite3.Connection, mailbox_id: int, uidvalidity: int, modseq: int
    ) -> sqlite_views.ViewState:
        builds.append(mailbox_id)
        return real_build(conn, mailbox_id, uidvalidity, modseq)

    monkeypatch.setattr(sqlite_views, "build", counting_build)
    await store.set_flags(box, [1, 3], frozenset({"$Work"}), FlagMode.ADD)
    await check(store, box)
    await store.set_flags(box, [1, 2, 5], frozenset({"\\Seen"}), FlagMode.ADD)
    await check(store, box)
    await store.set_flags(box, [4, 6], frozenset({"\\Seen"}), FlagMode.REMOVE)
    await check(store, box)
    await store.set_flags(box, [2, 3, 4], frozenset({"\\Deleted"}), FlagMode.ADD)
    await store.expunge(box)
    await check(store, box)
    for n in range(10, 14):
        await store.append(box, prepare(msg(n)))
    await store.delete_messages(box, [13])
    await check(store, box)
    acct = await store.get_account("alice@example.org")
    assert acct is not None
    other = await store.create_mailbox(acct.id, "Other")
    await store.move(box, [5, 6], other.id)
    await store.copy(other.id, [1], box)
    await check(store, box)
    await check(store, other.id)
    await store.set_flags(box, [1], frozenset({"$Work"}), FlagMode.REMOVE)
    await check(store, box, exact_keywords=False)
    await store.claim_recent(box)
    await check(store, box, exact_keywords=False)
    assert box not in builds  # every answer came from the saved view plus the change log


async def test_long_tail_is_saved(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = sqlite_store
    box = await setup(store)
    await store.append(box, prepare(msg(0)))
    await check(store, box)
    first = saved_modseq(store, box)
    monkeypatch.setattr(sqlite_views, "PERSIST_AFTER", 3)
    for n in range(1, 3):
        await store.append(box, prepare(msg(n)))
    await check(store, box)
    assert saved_modseq(store, box) == first  # two changes folded in, not saved
    await store.append(box, prepare(msg(3)))
    await check(store, box)
    mbx = await store.get_mailbox_by_id(box)
    assert mbx is not None and saved_modseq(store, box) == mbx.highestmodseq


async def test_damaged_or_foreign_views_are_rebuilt(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    box = await setup(store)
    for n in range(5):
        await store.append(box, prepare(msg(n)))
    await check(store, box)
    conn = sqlite3.connect(store.db_path)
    try:  # a view that lies (as after a bug or a restore): counters disagree
        conn.execute("UPDATE mailbox_views SET uids = x'01000000', unseen = x''")
        conn.commit()
    finally:
        conn.close()
    await check(store, box)
    conn = sqlite3.connect(store.db_path)
    try:  # another UIDVALIDITY: the view belongs to a mailbox that no longer exists
        conn.execute("UPDATE mailbox_views SET uidvalidity = uidvalidity - 1")
        conn.commit()
    finally:
        conn.close()
    await check(store, box)
    conn = sqlite3.connect(store.db_path)
    try:  # the cache emptied altogether (an operator may do so at any time)
        conn.execute("DELETE FROM mailbox_views")
        conn.commit()
    finally:
        conn.close()
    await check(store, box)


async def test_deleted_mailbox_view(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    box = await setup(store)
    await store.append(box, prepare(msg(0)))
    await check(store, box)
    acct = await store.get_account("alice@example.org")
    assert acct is not None
    await store.delete_mailbox(acct.id, "Box")
    with pytest.raises(NotFound):
        await store.mailbox_view(box)


async def test_batched_reads_equal_get_messages(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    box = await setup(store)
    shared = prepare(msg(99))
    for n in range(6):
        await store.append(box, prepare(msg(n)), frozenset({"$A"} if n % 2 else set()))
    await store.append(box, shared)
    await store.append(box, shared)
    big = prepare(msg(7) + b"x" * 20000 + b"\r\n")  # above the inline threshold: a file
    await store.append(box, big)
    uids = [1, 2, 4, 7, 8, 9, 42]
    full = await store.get_messages(box, uids)
    rows = await store.message_rows(box, uids)
    assert [(r.uid, r.modseq, r.flags, r.internaldate, r.size, r.blob_id) for r in rows] == [
        (m.uid, m.modseq, m.flags, m.internaldate, m.size, m.blob_id) for m in full
    ]
    metas = await store.blob_metas([m.blob_id for m in full] + ["0" * 64])
    assert metas == {m.blob_id: m.meta for m in full}
    texts = await store.message_texts(box, uids)
    assert [t.message for t in texts] == full
    for t in texts:
        body = await store.open_body(t.message)
        if t.message.uid == 9:
            assert t.data is None  # a blob file: read it with open_body
        else:
            assert t.data == await body.read()
