"""Message bodies for the PostgreSQL store: in the database or on a shared path.

A body is stored once per distinct SHA-256 with a reference count in ``blobs`` (as on
SQLite, DESIGN.md principle 2). Where its bytes live:

* up to ``inline_threshold`` bytes: ``blobs.data``, always;
* larger, ``[storage] blobs = "database"`` (the default for PostgreSQL): rows of
  ``blob_chunks (sha, seq, data)`` of :data:`CHUNK` bytes, written in the transaction
  that creates the ``blobs`` row and removed with it (``ON DELETE CASCADE``), so nodes
  share nothing but the database; :class:`ChunkBody` reads them lazily;
* larger, ``blobs = "files"``: ``blob_dir/ab/cd/<sha>`` as on SQLite (``BlobFiles``), on
  a path every node mounts. The file is written and fsynced before the transaction.
  Creating a row and removing an unreferenced file both hold a per-SHA advisory lock,
  so a node re-adding a body can never lose its file to another node's cleanup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from correo.store.base import Body, NotFound, TemporaryStoreError
from correo.store.blobs import BlobFiles, FileBody, InlineBody, _clip, is_blob_name

CHUNK = 256 * 1024
"""Bytes per ``blob_chunks`` row: small enough to stream, large enough to be few rows."""

_SHA_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))"
ORPHAN_AGE = 3600.0
"""Seconds after which an unreferenced body file is certainly no transaction's."""


@dataclass(slots=True)
class PgTx:
    """What a write job sees: a connection inside a transaction, plus effects that apply
    once it commits (change notifications, blob files to remove)."""

    conn: asyncpg.Connection
    blobs: PgBlobs
    changed: dict[int, int] = field(default_factory=dict)
    """mailbox_id → highestmodseq to announce (``pg_notify`` at commit, hub after)."""
    dropped_files: set[str] = field(default_factory=set)

    def notify(self, mailbox_id: int, modseq: int) -> None:
        self.changed[mailbox_id] = max(modseq, self.changed.get(mailbox_id, 0))

    def drop_file(self, sha: str) -> None:
        self.dropped_files.add(sha)


class PgBlobs:
    """Where and how bodies are kept; see the module docstring."""

    def __init__(self, mode: str, inline_threshold: int, files: BlobFiles | None) -> None:
        if mode not in ("database", "files"):
            raise ValueError(f"unknown blob storage {mode!r}")
        if mode == "files" and files is None:
            raise ValueError('blobs = "files" needs a blob directory')
        self.mode = mode
        self.inline_threshold = inline_threshold
        self.files = files

    def is_inline(self, size: int) -> bool:
        return size <= self.inline_threshold

    async def prepare(self, sha: str, data: bytes) -> None:
        """Before the transaction: write a big body's file (files mode only)."""
        if self.mode == "files" and not self.is_inline(len(data)):
            assert self.files is not None
            await asyncio.to_thread(self.files.write, sha, data)

    async def add_ref(self, tx: PgTx, sha: str, data: bytes, meta: bytes, refs: int) -> None:
        """``refs`` more references to a body, inserting its row (and bytes) when new.

        Concurrent first inserts of one SHA are serialised by the primary key: the second
        waits for the first to commit and then only counts its references.
        """
        inline = self.is_inline(len(data))
        row = await tx.conn.fetchrow(
            "INSERT INTO blobs AS b (sha, size, refcount, data, meta) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (sha) DO UPDATE SET refcount = b.refcount + EXCLUDED.refcount"
            " RETURNING (xmax = 0) AS inserted",
            sha,
            len(data),
            refs,
            data if inline else None,
            meta,
        )
        if not row["inserted"] or inline:
            return
        if self.mode == "database":
            view = memoryview(data)
            await tx.conn.executemany(
                "INSERT INTO blob_chunks (sha, seq, data) VALUES ($1, $2, $3)",
                [
                    (sha, i, bytes(view[o : o + CHUNK]))
                    for i, o in enumerate(range(0, len(data), CHUNK))
                ],
            )
            return
        assert self.files is not None
        await tx.conn.execute(_SHA_LOCK, sha)
        if not await asyncio.to_thread(self.files.exists, sha):  # removed meanwhile
            await asyncio.to_thread(self.files.write, sha, data)

    async def add_refs(self, tx: PgTx, sha: str, refs: int) -> None:
        """More references to a body that has a row (COPY)."""
        await tx.conn.execute("UPDATE blobs SET refcount = refcount + $1 WHERE sha = $2", refs, sha)

    async def release(self, tx: PgTx, sha: str, refs: int = 1) -> None:
        """Drop references; at zero the row (and its chunks) goes, a file after commit."""
        row = await tx.conn.fetchrow(
            "UPDATE blobs SET refcount = refcount - $1 WHERE sha = $2"
            " RETURNING refcount, data IS NULL AS external",
            refs,
            sha,
        )
        if row is not None and row["refcount"] <= 0:
            await tx.conn.execute("DELETE FROM blobs WHERE sha = $1", sha)
            if row["external"] and self.mode == "files":
                tx.drop_file(sha)

    async def remove_files(self, pool: asyncpg.Pool, shas: set[str]) -> None:
        """After a commit: unlink the files of bodies whose rows are still gone."""
        if self.files is None:
            return
        for sha in sorted(shas):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(_SHA_LOCK, sha)
                if await conn.fetchval("SELECT 1 FROM blobs WHERE sha = $1", sha) is None:
                    await asyncio.to_thread(self.files.remove, sha)

    async def discard(self, pool: asyncpg.Pool, sha: str, size: int) -> None:
        """After a failed write: drop the file :meth:`prepare` wrote unless referenced."""
        if self.mode == "files" and not self.is_inline(size):
            await self.remove_files(pool, {sha})

    async def sweep(self, pool: asyncpg.Pool, older_than: float = ORPHAN_AGE) -> int:
        """Files mode: remove body files no row references and temporaries, both older
        than ``older_than`` seconds (left by a node that died between writing a file and
        committing its row). Younger files may belong to a transaction in progress on
        some node and are left alone; each removal re-checks under the SHA's lock.
        Returns how many files went."""
        files = self.files
        if files is None:
            return 0
        cutoff = time.time() - older_than

        def candidates() -> list[Path]:
            out = []
            for path in files.walk():
                try:
                    if path.stat().st_mtime >= cutoff:
                        continue
                except OSError:
                    continue
                if path.name.startswith(".tmp-") or is_blob_name(path.name):
                    out.append(path)
            return out

        removed = 0
        for path in await asyncio.to_thread(candidates):
            if not is_blob_name(path.name):
                await asyncio.to_thread(path.unlink, True)
                removed += 1
                continue
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(_SHA_LOCK, path.name)
                if await conn.fetchval("SELECT 1 FROM blobs WHERE sha = $1", path.name) is None:
                    await asyncio.to_thread(path.unlink, True)
                    removed += 1
        return removed

    async def open_body(self, pool: asyncpg.Pool, sha: str, prefix: bytes) -> Body:
        row = await pool.fetchrow("SELECT size, data FROM blobs WHERE sha = $1", sha)
        if row is None:
            raise NotFound(f"no body {sha}")
        if row["data"] is not None:
            return InlineBody(prefix, bytes(row["data"]))
        if self.mode == "files":
            assert self.files is not None
            return FileBody(prefix, self.files.path(sha), int(row["size"]))
        return ChunkBody(pool, sha, prefix, int(row["size"]))


class ChunkBody:
    """``prefix`` + a body kept in ``blob_chunks``, fetched a chunk at a time."""

    def __init__(self, pool: asyncpg.Pool, sha: str, prefix: bytes, body_size: int) -> None:
        self._pool = pool
        self._sha = sha
        self._prefix = prefix
        self._body_size = body_size
        self.size = len(prefix) + body_size

    async def _chunk_rows(self, first: int, last: int) -> list[bytes]:
        try:
            rows = await self._pool.fetch(
                "SELECT seq, data FROM blob_chunks WHERE sha = $1 AND seq BETWEEN $2 AND $3"
                " ORDER BY seq",
                self._sha,
                first,
                last,
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise TemporaryStoreError(f"reading message body: {exc}") from exc
        if [r["seq"] for r in rows] != list(range(first, last + 1)):
            raise TemporaryStoreError(f"message body {self._sha[:12]} is gone or incomplete")
        return [bytes(r["data"]) for r in rows]

    async def read(self, offset: int = 0, length: int = -1) -> bytes:
        start, end = _clip(self.size, offset, length)
        return b"".join([piece async for piece in self.chunks(start, end - start, 4 * CHUNK)])

    async def chunks(
        self, offset: int = 0, length: int = -1, chunk: int = 65536
    ) -> AsyncIterator[bytes]:
        start, end = _clip(self.size, offset, length)
        chunk = max(chunk, 1)
        plen = len(self._prefix)
        pos = start
        while pos < end and pos < plen:
            stop = min(end, plen, pos + chunk)
            yield self._prefix[pos:stop]
            pos = stop
        while pos < end:
            want = min(chunk, end - pos)
            body_pos = pos - plen
            first, last = body_pos // CHUNK, (body_pos + want - 1) // CHUNK
            data = b"".join(await self._chunk_rows(first, last))
            skip = body_pos - first * CHUNK
            piece = data[skip : skip + want]
            if not piece:
                raise TemporaryStoreError("message body is shorter than recorded")
            yield piece
            pos += len(piece)
