"""FileBody reads: the page-cache path on the calling thread (``preadv(RWF_NOWAIT)`` into
a reused scratch buffer), the worker-thread path on a cache miss, large reads in pieces,
the errors of a body file that is missing or shorter than recorded; and SQLite
``open_body``'s file-first lookup with its fallbacks to the database."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from correo.store import blobs
from correo.store.base import IncomingMessage, LocalDelivery, NotFound, TemporaryStoreError
from correo.store.blobs import WHOLE_READ, FileBody, InlineBody
from correo.store.sqlite import SqliteStore

PREFIX = b"Return-Path: <a@example.test>\r\n"


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def evict(path: Path) -> None:
    """Drop a clean file's pages from the page cache (Linux honours this for ext4/xfs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def test_cache_miss_reads_in_a_thread(tmp_path: Path) -> None:
    if not blobs._nowait_ok:
        pytest.skip("no RWF_NOWAIT here: every read goes to a thread")
    data = os.urandom(300_000)
    path = tmp_path / "body"
    write_synced(path, data)
    body = FileBody(PREFIX, path, len(data))
    evict(path)
    if body._read_cached(0, len(data)) is not None:
        pytest.skip("this file system keeps the file cached (tmpfs?)")
    assert await body.read() == PREFIX + data  # waited for the disk, in a worker thread
    assert body._read_cached(0, len(data)) is not None  # now cached
    assert await body.read(5, 1000) == (PREFIX + data)[5:1005]


async def test_scratch_reuse_never_leaks_into_results(tmp_path: Path) -> None:
    a, b = b"A" * 70_000, b"B" * 50_000
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    body_a = FileBody(b"", tmp_path / "a", len(a))
    body_b = FileBody(PREFIX, str(tmp_path / "b"), len(b))
    got_a = await body_a.read()
    got_b = await body_b.read()
    assert got_a == a and got_b == PREFIX + b
    assert type(got_a) is bytes and type(got_b) is bytes


@pytest.mark.parametrize("nowait", [True, False])
async def test_ranges_on_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nowait: bool
) -> None:
    monkeypatch.setattr(blobs, "_nowait_ok", blobs._nowait_ok and nowait)
    data = bytes(range(256)) * 9000  # 2.3 MB: more than one WHOLE_READ
    path = tmp_path / "body"
    path.write_bytes(data)
    whole = PREFIX + data
    body = FileBody(PREFIX, path, len(data))
    assert len(whole) > 2 * WHOLE_READ
    assert await body.read() == whole
    assert await body.read(3, 10) == whole[3:13]
    assert await body.read(len(PREFIX) - 2, 5) == whole[len(PREFIX) - 2 : len(PREFIX) + 3]
    assert (
        await body.read(WHOLE_READ - 1, WHOLE_READ + 2) == whole[WHOLE_READ - 1 :][: WHOLE_READ + 2]
    )
    parts = [c async for c in body.chunks(7, -1, chunk=256 * 1024)]
    assert b"".join(parts) == whole[7:] and max(map(len, parts)) <= 256 * 1024


@pytest.mark.parametrize("nowait", [True, False])
async def test_short_or_missing_file_is_a_temporary_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nowait: bool
) -> None:
    monkeypatch.setattr(blobs, "_nowait_ok", blobs._nowait_ok and nowait)
    path = tmp_path / "body"
    path.write_bytes(b"x" * 1000)
    short = FileBody(PREFIX, path, 2000)  # the database says 2000 octets
    with pytest.raises(TemporaryStoreError, match="shorter"):
        await short.read()
    with pytest.raises(TemporaryStoreError, match="shorter"):
        _ = [c async for c in short.chunks(chunk=512)]
    assert await short.read(0, len(PREFIX) + 1000) == PREFIX + b"x" * 1000
    missing = FileBody(b"", tmp_path / "gone", 10)
    with pytest.raises(TemporaryStoreError):
        await missing.read()


# --------------------------------------------------------------------------- open_body


async def test_open_body_finds_files_and_falls_back_to_the_database(
    sqlite_store: SqliteStore, make_message: Callable[..., IncomingMessage]
) -> None:
    """A body above the inline threshold is found as a file without a query; one that
    is inline after all (the threshold was lowered since), has a file of the wrong size,
    or is gone entirely still answers as the database says (RFC-independent contract:
    ``Store.open_body``)."""
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("u@example.org", "h")
    box = await store.get_mailbox(acct.id, "INBOX")
    assert box is not None
    prefix = b"Delivered-To: u@example.org\r\n"
    small = make_message("Subject: s\n\n" + "inline body\n" * 100)  # ~1.2 KB: inline
    big = make_message("Subject: b\n\n" + "file body line\n" * 2000)  # ~30 KB: a file
    for m in (small, big):
        await store.deliver(m, [LocalDelivery(acct.id, prefix=prefix)])
    infos = await store.message_infos(box.id)
    stored = await store.get_messages(box.id, [i.uid for i in infos])
    s_small, s_big = stored
    assert isinstance(await store.open_body(s_big), FileBody)
    store.inline_threshold = 100  # now "too big to be inline", but it is inline
    body = await store.open_body(s_small)
    assert isinstance(body, InlineBody) and await body.read() == prefix + small.data
    path = store.blobs.path(big.sha256)
    original = path.read_bytes()
    path.write_bytes(original[:-1])  # a file of the wrong size is not trusted
    body = await store.open_body(s_big)
    with pytest.raises(TemporaryStoreError):  # the database's size: the file is short
        await body.read()
    path.write_bytes(original)
    assert await (await store.open_body(s_big)).read() == prefix + big.data
    gone = dataclasses.replace(s_big, blob_id="0" * 64)
    with pytest.raises(NotFound):
        await store.open_body(gone)


async def test_open_bodies_batch(
    sqlite_store: SqliteStore, make_message: Callable[..., IncomingMessage]
) -> None:
    """``SqliteStore.open_bodies``: one query for several messages, inline and file
    bodies alike, by uid; uids not in the mailbox are left out; the batch is bounded."""
    store = sqlite_store
    await store.add_domain("example.org")
    acct = await store.add_account("u@example.org", "h")
    box = await store.get_mailbox(acct.id, "INBOX")
    assert box is not None
    msgs = [
        make_message(f"Subject: {k}\n\n" + "body line\n" * (10 + 2000 * (k % 2))) for k in range(4)
    ]
    for k, m in enumerate(msgs):
        await store.deliver(m, [LocalDelivery(acct.id, prefix=b"X-K: %d\r\n" % k)])
    uids = [i.uid for i in await store.message_infos(box.id)]
    got = await store.open_bodies(box.id, [*uids, 999])
    assert sorted(got) == uids
    kinds = [type(got[u]) for u in uids]
    assert kinds == [InlineBody, FileBody, InlineBody, FileBody]
    for k, (u, m) in enumerate(zip(uids, msgs, strict=True)):
        assert await got[u].read() == b"X-K: %d\r\n" % k + m.data
    assert await store.open_bodies(box.id, []) == {}
    with pytest.raises(ValueError):
        await store.open_bodies(box.id, list(range(1000)))
