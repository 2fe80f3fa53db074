"""Fixtures for the store contract suite.

``store`` yields an opened :class:`correo.store.base.Store` for each backend in
``BACKENDS`` (SQLite, and PostgreSQL on the throwaway cluster of ``tests/pgcluster.py``);
only this file knows how a backend is built — the tests stay unchanged.

Other fixtures: ``make_message(body, meta=None)`` → an ``IncomingMessage`` (a str body
gets CRLF line ends); ``account`` → ``alice@example.org`` with its default mailboxes;
``sqlite_store`` → the SQLite backend itself, for tests of its own machinery.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from correo.store.base import Account, IncomingMessage, Store
from correo.store.sqlite import SqliteStore

BACKENDS = ["sqlite", "postgresql"]
INLINE_THRESHOLD = 8192


def message(body: bytes | str, meta: dict[str, object] | None = None) -> IncomingMessage:
    """An ``IncomingMessage`` for ``body`` (CRLF line ends added when given a str)."""
    data = body.replace("\n", "\r\n").encode() if isinstance(body, str) else body
    return IncomingMessage(
        data=data,
        meta=json.dumps(meta or {"size": len(data)}).encode(),
    )


async def _open_backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "sqlite":
        store = SqliteStore(
            tmp_path / "correo.db", tmp_path / "blobs", inline_threshold=INLINE_THRESHOLD
        )
        await store.open()
        return store
    if kind == "postgresql":
        from pg_backend import make_pg_store  # skips cleanly when asyncpg is absent

        return await make_pg_store(request.getfixturevalue("postgres_dsn"), tmp_path)
    raise AssertionError(kind)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await _open_backend(request.param, tmp_path, request)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def make_message() -> Callable[..., IncomingMessage]:
    return message


@pytest.fixture
async def account(store: Store) -> Account:
    await store.add_domain("example.org")
    return await store.add_account("alice@example.org", "hash-a")


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """The SQLite backend itself, for tests of its own machinery (blobs, crashes)."""
    s = SqliteStore(tmp_path / "correo.db", tmp_path / "blobs", inline_threshold=INLINE_THRESHOLD)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
