"""Building PostgreSQL stores for the tests: one fresh database per test.

``make_pg_store(postgres_dsn, tmp_path)`` is what ``conftest.py``'s backend fixture calls
for the ``postgresql`` parameter; ``fresh_database`` gives a test its own empty database
(``CREATE DATABASE`` through an admin connection), so tests are isolated — including
their LISTEN/NOTIFY traffic — and need no cleanup (the whole cluster is throwaway).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from pgcluster import require_postgres

try:
    import asyncpg
except ImportError:  # the optional "postgresql" extra is not installed
    if require_postgres():
        raise
    pytest.skip("asyncpg not installed (pip install 'correo[postgresql]')", allow_module_level=True)

from correo.store.postgres import PostgresStore

INLINE_THRESHOLD = 8192


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` instead."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def fresh_database(postgres_dsn: str) -> str:
    """Create an empty database ``t_<random>``; returns its DSN."""
    name = "t_" + secrets.token_hex(6)
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(postgres_dsn, name)


async def make_pg_store(
    postgres_dsn: str, tmp_path: Path, *, url: str | None = None, **options: Any
) -> PostgresStore:
    """An opened :class:`PostgresStore` on a fresh database (or on ``url``, to build a
    second node on the same one). ``options`` go to the constructor
    (``blobs="files"``, ``blob_dir=...``, ``pool_size=...``)."""
    options.setdefault("inline_threshold", INLINE_THRESHOLD)
    store = PostgresStore(url or await fresh_database(postgres_dsn), **options)
    await store.open()
    return store
