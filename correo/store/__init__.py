"""Storage: the ``Store`` interface (``base``) and its backends.

``open_store(settings)`` builds the backend named by ``[storage] backend`` and opens it.
"""

from __future__ import annotations

from correo.config import Settings
from correo.store.base import Store


async def open_store(settings: Settings) -> Store:
    """Build and open the configured store (``await store.close()`` when done)."""
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

        return await open_postgres_store(settings)
    raise ValueError(f"unknown storage backend {backend!r}")


__all__ = ["open_store"]
