"""How PostgreSQL and asyncpg failures reach the protocols (``correo.store.base`` errors).

DESIGN.md principle 7: a database problem is a temporary failure (SMTP 4xx, IMAP NO,
POP3 -ERR), never an exception escaping a session. Which failures are worth running a
transaction again for is decided here too (``PostgresStore._write``).
"""

from __future__ import annotations

import asyncpg

from correo.store.base import AlreadyExists, DiskFullError, StoreError, TemporaryStoreError

RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
CONNECTION_LOST = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # asyncpg noticing the loss mid-operation
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    ConnectionError,
)
"""The connection died (server restart, failover, terminated backend, network)."""


def map_error(exc: BaseException) -> BaseException:
    """Store errors pass; a full disk becomes DiskFullError; a unique violation (two
    nodes creating the same name at once) AlreadyExists; other database or connection
    failures TemporaryStoreError (answered 4xx / NO by the protocols)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, asyncpg.DiskFullError):
        return DiskFullError(f"database: {exc}")
    if isinstance(exc, asyncpg.UniqueViolationError):
        return AlreadyExists(f"already exists ({exc.constraint_name})")
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError | TimeoutError):
        return TemporaryStoreError(f"database: {exc}")
    if isinstance(exc, asyncpg.InternalClientError):
        return TemporaryStoreError(f"database: {exc}")
    return exc
