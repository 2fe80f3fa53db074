"""Both ends of ``correo store copy`` for each backend (see ``postgres_copy``).

:class:`SqliteSide` reads or writes a SQLite database and its blob directory with plain
``sqlite3`` (in a worker thread); :class:`PostgresSide` reads or writes a PostgreSQL
database through an opened :class:`~correo.store.postgres.PostgresStore` (its pool for
writes, one REPEATABLE READ connection as the source snapshot). Opening either side
applies pending migrations, so the destination may be a brand-new database.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from correo.config import Settings
from correo.store.blobs import BlobFiles
from correo.store.postgres import PostgresStore, store_for
from correo.store.postgres_blobs import CHUNK
from correo.store.postgres_copy import BATCH_ROWS, SERIAL_TABLES
from correo.store.sqlite_schema import connect, migrate

_PG_TYPES = {
    "bigint": int,
    "integer": int,
    "double precision": float,
    "text": str,
    "bytea": bytes,
}


class SqliteSide:
    """A SQLite installation (``data_dir/correo.db`` and ``blob_dir``)."""

    def __init__(self, db_path: Path, blob_dir: Path, inline_threshold: int) -> None:
        self.db_path = db_path
        self.files = BlobFiles(blob_dir)
        self.inline_threshold = inline_threshold
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SqliteSide:
        return cls(settings.db_path, settings.blob_dir, settings.storage.inline_threshold)

    async def open(self, *, source: bool) -> None:
        def run() -> sqlite3.Connection:
            if source and not self.db_path.exists():
                raise FileNotFoundError(f"{self.db_path}: no such database")
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.db_path)
            migrate(conn)
            if source:
                conn.execute("BEGIN")  # one snapshot for the whole copy (WAL)
            return conn

        self._conn = await asyncio.to_thread(run)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "not open"
        return self._conn

    async def columns(self, table: str) -> list[str]:
        rows = await asyncio.to_thread(
            lambda: self.conn.execute(f"PRAGMA table_info({table})").fetchall()
        )
        return [str(r[1]) for r in rows]

    async def count(self, table: str) -> int:
        return await self.scalar(f"SELECT COUNT(*) FROM {table}")

    async def scalar(self, sql: str) -> int:
        row = await asyncio.to_thread(lambda: self.conn.execute(sql).fetchone())
        return int(row[0])

    async def batches(
        self, table: str, columns: list[str], order: tuple[str, ...]
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        cur = self.conn.cursor()
        sql = f"SELECT {', '.join(columns)} FROM {table} ORDER BY {', '.join(order)}"
        await asyncio.to_thread(cur.execute, sql)
        try:
            while True:
                rows = await asyncio.to_thread(cur.fetchmany, BATCH_ROWS)
                if not rows:
                    return
                yield [tuple(r) for r in rows]
        finally:
            cur.close()

    async def body(self, sha: str, inline: bytes | None) -> bytes:
        if inline is not None:
            return inline
        return await asyncio.to_thread(self.files.path(sha).read_bytes)

    def _write(self, fn: Any) -> Any:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def insert(
        self, table: str, columns: list[str], key: tuple[str, ...], rows: list[tuple[Any, ...]]
    ) -> None:
        marks = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
        if table == "counters":
            sql += " ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)"
        else:
            sql += " ON CONFLICT DO NOTHING"
        await asyncio.to_thread(self._write, lambda c: c.executemany(sql, rows))

    async def existing_blobs(self, shas: list[str]) -> set[str]:
        def run() -> set[str]:
            marks = ", ".join("?" for _ in shas)
            sql = f"SELECT sha FROM blobs WHERE sha IN ({marks})"
            return {str(r[0]) for r in self.conn.execute(sql, shas)}

        return await asyncio.to_thread(run) if shas else set()

    async def put_blobs(self, rows: list[tuple[str, int, int, bytes, bytes]]) -> None:
        def run() -> None:
            for sha, _size, _refs, body, _meta in rows:
                if len(body) > self.inline_threshold:
                    self.files.write(sha, body)  # fsynced before the row commits
            self._write(
                lambda c: c.executemany(
                    "INSERT INTO blobs (sha, size, refcount, data, meta) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    [
                        (
                            sha,
                            size,
                            refs,
                            body if len(body) <= self.inline_threshold else None,
                            meta,
                        )
                        for sha, size, refs, body, meta in rows
                    ],
                )
            )

        await asyncio.to_thread(run)

    async def account_keys(self) -> dict[int, str]:
        rows = await asyncio.to_thread(
            lambda: self.conn.execute("SELECT id, address FROM accounts").fetchall()
        )
        return {int(i): str(a) for i, a in rows}

    async def finish(self) -> None:
        return None


class PostgresSide:
    """A PostgreSQL installation, opened as a store (migrated, pooled)."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.inline_threshold = store.inline_threshold
        self._snap: asyncpg.Connection | None = None
        self._snap_tx: Any = None
        self._types: dict[str, dict[str, type]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresSide:
        return cls(store_for(settings))

    async def open(self, *, source: bool) -> None:
        await self.store.open()
        if source:
            self._snap = await asyncpg.connect(self.store.url)
            self._snap_tx = self._snap.transaction(isolation="repeatable_read", readonly=True)
            await self._snap_tx.start()

    async def close(self) -> None:
        if self._snap is not None:
            snap, self._snap = self._snap, None
            await self._snap_tx.rollback()
            await snap.close()
        await self.store.close()

    def _reader(self) -> asyncpg.Connection | asyncpg.Pool:
        return self._snap if self._snap is not None else self.store.pool

    async def _column_types(self, table: str) -> dict[str, type]:
        if table not in self._types:
            rows = await self._reader().fetch(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = $1"
                " ORDER BY ordinal_position",
                table,
            )
            self._types[table] = {
                str(r["column_name"]): _PG_TYPES.get(str(r["data_type"]), str) for r in rows
            }
        return self._types[table]

    async def columns(self, table: str) -> list[str]:
        return list(await self._column_types(table))

    async def count(self, table: str) -> int:
        return await self.scalar(f"SELECT COUNT(*) FROM {table}")

    async def scalar(self, sql: str) -> int:
        return int(await self._reader().fetchval(sql))

    async def batches(
        self, table: str, columns: list[str], order: tuple[str, ...]
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        snap = self._snap
        assert snap is not None, "not opened as a source"
        cols = ", ".join(columns)
        collated = ", ".join(
            f'{c} COLLATE "C"' if c in ("name", "source", "sha") else c for c in order
        )
        cursor = await snap.cursor(f"SELECT {cols} FROM {table} ORDER BY {collated}")
        while True:
            rows = await cursor.fetch(BATCH_ROWS)
            if not rows:
                return
            yield [tuple(r) for r in rows]

    async def body(self, sha: str, inline: bytes | None) -> bytes:
        if inline is not None:
            return inline
        files = self.store.blobs.files
        if self.store.blobs.mode == "files" and files is not None:
            return await asyncio.to_thread(files.path(sha).read_bytes)
        assert self._snap is not None
        rows = await self._snap.fetch(
            "SELECT data FROM blob_chunks WHERE sha = $1 ORDER BY seq", sha
        )
        return b"".join(bytes(r["data"]) for r in rows)

    async def insert(
        self, table: str, columns: list[str], key: tuple[str, ...], rows: list[tuple[Any, ...]]
    ) -> None:
        types = await self._column_types(table)
        casts = [types[c] for c in columns]
        values = [
            tuple(None if v is None else cast(v) for v, cast in zip(row, casts, strict=True))
            for row in rows
        ]
        marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
        if table == "counters":
            sql += (
                f" ON CONFLICT (name) DO UPDATE SET value = GREATEST({table}.value, EXCLUDED.value)"
            )
        else:
            sql += f" ON CONFLICT ({', '.join(key)}) DO NOTHING"
        async with self.store.pool.acquire() as conn, conn.transaction():
            await conn.executemany(sql, values)

    async def existing_blobs(self, shas: list[str]) -> set[str]:
        rows = await self.store.pool.fetch(
            "SELECT sha FROM blobs WHERE sha = ANY($1::text[])", shas
        )
        return {str(r["sha"]) for r in rows}

    async def put_blobs(self, rows: list[tuple[str, int, int, bytes, bytes]]) -> None:
        blobs = self.store.blobs
        for sha, _size, _refs, body, _meta in rows:
            await blobs.prepare(sha, body)  # files mode: the file, fsynced
        async with self.store.pool.acquire() as conn, conn.transaction():
            for sha, size, refs, body, meta in rows:
                inline = blobs.is_inline(len(body))
                inserted = await conn.fetchval(
                    "INSERT INTO blobs (sha, size, refcount, data, meta)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
                    sha,
                    size,
                    refs,
                    body if inline else None,
                    meta,
                )
                if inserted and not inline and blobs.mode == "database":
                    await conn.executemany(
                        "INSERT INTO blob_chunks (sha, seq, data) VALUES ($1, $2, $3)",
                        [
                            (sha, i, body[o : o + CHUNK])
                            for i, o in enumerate(range(0, len(body), CHUNK))
                        ],
                    )

    async def account_keys(self) -> dict[int, str]:
        rows = await self.store.pool.fetch("SELECT id, address FROM accounts")
        return {int(r["id"]): str(r["address"]) for r in rows}

    async def finish(self) -> None:
        """Move each id sequence past the copied ids."""
        async with self.store.pool.acquire() as conn:
            for table in SERIAL_TABLES:
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                )


def side_for(settings: Settings) -> SqliteSide | PostgresSide:
    if settings.storage.backend == "postgresql":
        return PostgresSide.from_settings(settings)
    if settings.storage.backend == "sqlite":
        return SqliteSide.from_settings(settings)
    raise ValueError(f"unknown storage backend {settings.storage.backend!r}")
