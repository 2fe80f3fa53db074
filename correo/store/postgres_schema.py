"""PostgreSQL schema: the SQLite migrations translated, plus PostgreSQL-only ones.

The tables are defined once, in ``schema/NNNN_*.sql`` (SQLite). :func:`translate` turns
that SQL into PostgreSQL with a handful of type substitutions, so both backends have the
same tables and columns (``correo store copy`` relies on it). The differences, all here:

* ``INTEGER PRIMARY KEY`` (SQLite's rowid alias) → ``BIGSERIAL PRIMARY KEY``;
* ``INTEGER`` → ``BIGINT`` (SQLite integers are 64-bit), ``REAL`` → ``DOUBLE PRECISION``,
  ``BLOB`` → ``BYTEA``;
* ``WITHOUT ROWID`` (a SQLite storage option) is dropped.

Booleans stay ``BIGINT`` 0/1 as on SQLite, so the row code is shared. Tables only the
PostgreSQL backend needs (chunked bodies, shared login-failure counters) are in
``schema_pg/NNNN_*.sql``, written in PostgreSQL directly.

Migrations are recorded in ``schema_version (series, version)``: series ``shared`` for
the translated files, ``pg`` for the others. Each runs in its own transaction under a
transaction-level advisory lock, so several nodes starting at once apply it once.
"""

from __future__ import annotations

import re
import time
from importlib import resources

import asyncpg

_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
MIGRATION_LOCK = 0x636F7272656F
"""``pg_advisory_xact_lock`` key held while migrating ("correo" in hex)."""

_SUBSTITUTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT ROWID\s*;"), ");"),
)


def translate(sqlite_sql: str) -> str:
    """PostgreSQL DDL for a SQLite migration (see the module docstring for the list)."""
    out = sqlite_sql
    for pattern, replacement in _SUBSTITUTIONS:
        out = pattern.sub(replacement, out)
    return out


def _files(package_dir: str) -> list[tuple[int, str, str]]:
    found: list[tuple[int, str, str]] = []
    for entry in resources.files("correo.store").joinpath(package_dir).iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    return found


def migrations() -> list[tuple[str, int, str, str]]:
    """(series, version, file name, PostgreSQL script) in the order they apply: every
    shared migration, then the PostgreSQL-only ones."""
    shared = [("shared", n, name, translate(sql)) for n, name, sql in _files("schema")]
    pg_only = [("pg", n, name, sql) for n, name, sql in _files("schema_pg")]
    return shared + pg_only


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply what is missing; returns how many migrations were applied now."""
    async with conn.transaction():  # IF NOT EXISTS alone races with another node
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (series TEXT NOT NULL,"
            " version BIGINT NOT NULL, name TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL,"
            " PRIMARY KEY (series, version))"
        )
    applied = 0
    for series, number, name, script in migrations():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            done = await conn.fetchval(
                "SELECT 1 FROM schema_version WHERE series = $1 AND version = $2", series, number
            )
            if done:
                continue
            await conn.execute(script)  # a multi-statement script: simple query protocol
            await conn.execute(
                "INSERT INTO schema_version (series, version, name, applied)"
                " VALUES ($1, $2, $3, $4)",
                series,
                number,
                name,
                time.time(),
            )
            applied += 1
    return applied
