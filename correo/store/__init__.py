"""Storage: the ``Store`` interface (``base``) and its backends.

``open_store(settings)`` builds the backend named by ``[storage] backend`` and opens it.
"""

from __future__ import annotations

from correo.config import Settings
from correo.store.base import Store


async def open_store(settings: Settings, *, listen: bool = True) -> Store:
    """Build and open the configured store (``await store.close()`` when done).

    ``listen=False``: a process that never watches mailboxes (an SMTP worker) need not
    hear of other processes' changes (PostgreSQL: no LISTEN connection)."""
    backend = settings.storage.backend
    if backend == "sqlite":
        from correo.store.sqlite import SqliteStore

        store = SqliteStore(
            settings.db_path,
            settings.blob_dir,
            inline_threshold=settings.storage.inline_threshold,
        )
        await store.open()
        return store
    if backend == "postgresql":
        from correo.store.postgres import open_postgres_store

        return await open_postgres_store(settings, listen=listen)
    raise ValueError(f"unknown storage backend {backend!r}")


__all__ = ["open_store"]
