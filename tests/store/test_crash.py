"""The SQLite store under failure: SIGKILL mid-stream, a full database, failing jobs.

DESIGN.md principle 4: what a write call reported done survives a crash, and nothing
half-written is ever visible.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from correo.store.base import (
    DiskFullError,
    IncomingMessage,
    LocalDelivery,
    NotFound,
    TemporaryStoreError,
)
from correo.store.blobs import BlobFiles
from correo.store.sqlite import SqliteStore

MakeMessage = Callable[..., IncomingMessage]
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


async def check_consistent(store: SqliteStore, mailbox_id: int) -> dict[int, str]:
    """Counters match rows; every visible message reads back whole. Returns uid → sha."""
    mb = await store.get_mailbox_by_id(mailbox_id)
    assert mb is not None
    infos = await store.message_infos(mailbox_id)
    assert mb.exists == len(infos) and mb.size == sum(i.size for i in infos)
    assert mb.unseen == len(infos) and all(i.uid < mb.uidnext for i in infos)
    account = await store.get_account_by_id(mb.account_id)
    assert account is not None and account.used == mb.size
    seen: dict[int, str] = {}
    stored = await store.get_messages(mailbox_id, [i.uid for i in infos])
    for m in stored:
        data = await (await store.open_body(m)).read()
        assert len(data) == m.size
        assert data.startswith(m.prefix)
        assert hashlib.sha256(data[len(m.prefix) :]).hexdigest() == m.blob_id
        seen[m.uid] = m.blob_id
    return seen


@pytest.mark.slow
async def test_sigkill_loses_nothing_reported(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "crash_writer.py"), str(tmp_path)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    reported: list[tuple[int, int, str, int]] = []
    try:
        first = proc.stdout.readline().split()
        assert first[0] == "READY", first
        inbox_id = int(first[1])
        while len(reported) < 400:
            line = proc.stdout.readline()
            assert line, "writer died early"
            f_mb, f_uid, f_sha, f_plen = line.split()
            reported.append((int(f_mb), int(f_uid), f_sha, int(f_plen)))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    # a leftover from a delivery whose transaction never committed, and a temporary
    files = BlobFiles(tmp_path / "blobs")
    orphan = hashlib.sha256(b"never committed").hexdigest()
    files.write(orphan, b"never committed")
    (files.root / "ab").mkdir(exist_ok=True)
    (files.root / "ab" / ".tmp-deadbeef").write_bytes(b"partial")

    store = SqliteStore(tmp_path / "correo.db", tmp_path / "blobs")
    await store.open()
    try:
        assert store.swept >= 2
        assert not files.exists(orphan)
        assert not (files.root / "ab" / ".tmp-deadbeef").exists()
        visible = await check_consistent(store, inbox_id)
        for mb, uid, sha, _plen in reported:
            assert mb == inbox_id
            assert visible.get(uid) == sha, f"reported delivery {uid} lost"
        assert len(visible) >= len(reported)
        # every remaining blob file is referenced, and every file-backed row has its file
        rows = store._now(
            lambda c: c.execute("SELECT sha, typeof(data) = 'null' FROM blobs").fetchall()
        )
        on_disk = {p.name for p in files.walk() if p.name != ".lock"}
        assert on_disk == {sha for sha, external in rows if external}
    finally:
        await store.close()


async def test_disk_full_is_reported_and_leaves_nothing_half_written(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    message = make_message
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("a@example.org", "h")
    inbox = await store.get_mailbox(acct.id, "INBOX")
    assert inbox is not None
    assert store._writer is not None
    pages = await store._writer.run_exclusive(
        lambda tx: int(tx.conn.execute("PRAGMA page_count").fetchone()[0])
    )
    # SQLITE_FULL for real: the database may not grow past a few more pages
    await store._writer.run_exclusive(
        lambda tx: tx.conn.execute(f"PRAGMA max_page_count = {pages + 12}")
    )
    msgs = [message(f"Subject: {i}\n\n" + "x" * 7000 + f"{i}\n") for i in range(40)]
    results = await asyncio.gather(
        *(store.deliver(m, [LocalDelivery(acct.id)]) for m in msgs), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert failed, "the database never filled up"
    assert all(isinstance(r, DiskFullError) for r in failed), failed
    assert isinstance(failed[0], TemporaryStoreError)
    delivered = {
        r.delivered[0][2]: m.sha256
        for r, m in zip(results, msgs, strict=True)
        if not isinstance(r, BaseException)
    }
    visible = await check_consistent(store, inbox.id)
    assert visible == delivered
    await store._writer.run_exclusive(
        lambda tx: tx.conn.execute("PRAGMA max_page_count = 1073741823")
    )
    res = await store.deliver(message("Subject: after\n\nok\n"), [LocalDelivery(acct.id)])
    assert len(res.delivered) == 1
    await check_consistent(store, inbox.id)


async def test_failing_job_does_not_spoil_its_batch(
    sqlite_store: SqliteStore, make_message: MakeMessage
) -> None:
    message = make_message
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("a@example.org", "h")
    inbox = await store.get_mailbox(acct.id, "INBOX")
    assert inbox is not None
    calls = []
    for i in range(30):
        if i % 3 == 0:
            calls.append(store.append(999_999, message(f"Subject: bad {i}\n\n.\n")))
        else:
            calls.append(store.append(inbox.id, message(f"Subject: ok {i}\n\n.\n")))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert store._writer is not None and store._writer.batches < store._writer.jobs
    for i, r in enumerate(results):
        if i % 3 == 0:
            assert isinstance(r, NotFound)
        else:
            assert isinstance(r, tuple)
    mb = await store.get_mailbox_by_id(inbox.id)
    assert mb is not None and mb.exists == 20
    await check_consistent(store, inbox.id)


async def test_closed_store_is_a_temporary_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db", tmp_path / "blobs")
    await store.open()
    await store.add_domain("example.org")
    await store.close()
    with pytest.raises(TemporaryStoreError):
        await store.add_domain("other.example")
    with pytest.raises(TemporaryStoreError):
        await store.list_domains()
