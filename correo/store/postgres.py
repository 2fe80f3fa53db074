"""The store for several nodes: PostgreSQL through an asyncpg connection pool.

Selected with ``[storage] backend = "postgresql"`` and ``url``; build it with
:func:`open_postgres_store` (``correo.store.open_store`` does). Any number of correo
nodes may share one database; they share nothing else (bodies are in the database by
default, ``postgres_blobs``).

Layout of the work:

* every write is one transaction on a pooled connection (``_write``); concurrency comes
  from the pool (``[storage] pool_size``) and PostgreSQL's own group commit; the COMMIT
  has returned (``synchronous_commit = on``) before a write call does (DESIGN.md
  principle 4). A transaction that loses a deadlock or serialisation race is retried.
* ``postgres_directory`` / ``postgres_messages`` / ``postgres_rows``: the write jobs,
  with the SQLite backend's rules and a fixed row-lock order (UID/MODSEQ allocation is
  ordered by commit); ``postgres_errors``: what callers see when the database fails;
* ``postgres_schema``: the SQLite migrations translated, plus ``schema_pg/``;
* ``postgres_events``: ``pg_notify`` in each transaction, one LISTEN connection per node
  feeding the in-process ``EventHub``;
* ``postgres_queue``: the outbound queue (``FOR UPDATE SKIP LOCKED`` + leases);
* ``postgres_copy`` / ``postgres_copy_io``: ``correo store copy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from correo.config import Settings
from correo.store import names
from correo.store import postgres_directory as directory
from correo.store import postgres_messages as messages
from correo.store import postgres_rows as pgrows
from correo.store.base import (
    Account,
    Alias,
    Body,
    Change,
    ChangeKind,
    CopyResult,
    DeliveryResult,
    Domain,
    FlagMode,
    FlagUpdate,
    IncomingMessage,
    InvalidName,
    LocalDelivery,
    Mailbox,
    MailboxListener,
    MessageInfo,
    QueueRequest,
    Store,
    StoredMessage,
    Subscription,
    TemporaryStoreError,
)
from correo.store.blobs import BlobFiles
from correo.store.events import EventHub
from correo.store.postgres_blobs import PgBlobs, PgTx
from correo.store.postgres_errors import CONNECTION_LOST, RETRYABLE, map_error
from correo.store.postgres_events import CHANNEL, Listener, Relay, payload
from correo.store.postgres_schema import migrate
from correo.store.sqlite_directory import normalize_address, normalize_domain
from correo.store.sqlite_messages import queue_requests
from correo.store.sqlite_rows import (
    ACCOUNT_COLUMNS,
    MAILBOX_COLUMNS,
    account,
    alias,
    decode_flags,
    domain,
    info,
    mailbox,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRIES = 8
"""Attempts for a transaction aborted by a deadlock or serialisation failure."""
_SERVER_SETTINGS = {"synchronous_commit": "on", "application_name": "correo"}
LISTEN_APPLICATION = "correo-listen"
COMMAND_TIMEOUT = 60.0
"""Seconds a statement may take before the call fails (TemporaryStoreError) instead of
hanging a session on a stuck database."""


class PostgresStore:
    """``Store`` over PostgreSQL. ``PostgresStore(url, ...)`` then ``await store.open()``."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        blobs: str = "database",
        blob_dir: str | Path | None = None,
        inline_threshold: int = 8192,
    ) -> None:
        self.url = url
        self.pool_size = max(2, pool_size)
        files = BlobFiles(Path(blob_dir)) if blobs == "files" and blob_dir is not None else None
        self.blobs = PgBlobs(blobs, inline_threshold, files)
        self.inline_threshold = inline_threshold
        self.events = EventHub()
        self.relay = Relay(self.events)
        self._pool: asyncpg.Pool | None = None
        self.listener: Listener | None = None
        self.sweeper: asyncio.Task[int] | None = None
        self.retried = 0
        """Transactions run again after a deadlock, serialisation failure or dead
        connection (for tests and benchmarks)."""

    # ------------------------------------------------------------------ lifecycle

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, server_settings=_SERVER_SETTINGS, timeout=10)

    async def _connect_listener(self) -> asyncpg.Connection:
        """The LISTEN connection, named ``correo-listen`` in ``pg_stat_activity``."""
        settings = {**_SERVER_SETTINGS, "application_name": LISTEN_APPLICATION}
        return await asyncpg.connect(self.url, server_settings=settings, timeout=10)

    async def open(self, *, listen: bool = True) -> None:
        """Migrate the schema (once, whichever node gets there first), open the pool and
        the LISTEN connection. ``listen=False`` (an SMTP worker process, which only
        writes: its commits still NOTIFY the others) leaves out LISTEN and the orphan file
        sweep, both the main process's business."""
        try:
            if self.blobs.files is not None:
                await asyncio.to_thread(self.blobs.files.root.mkdir, parents=True, exist_ok=True)
            conn = await self._connect()
            try:
                await migrate(conn)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                server_settings=_SERVER_SETTINGS,
                timeout=10,
                command_timeout=COMMAND_TIMEOUT,
            )
            if not listen:
                return
            self.listener = Listener(self.relay, self._connect_listener, self._highest)
            await self.listener.start()
            if self.blobs.files is not None:
                self.sweeper = asyncio.create_task(self._sweep(), name="correo-pg-sweep")
        except BaseException as exc:
            await self.close()
            mapped = map_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def _sweep(self) -> int:
        """Files mode, at open: orphan body files (see ``PgBlobs.sweep``), in the
        background so a large directory does not delay serving."""
        try:
            removed = await self.blobs.sweep(self.pool)
        except Exception as exc:
            log.warning("blob sweep failed: %s", exc)
            return 0
        if removed:
            log.info("removed %d orphan blob files", removed)
        return removed

    async def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper
            self.sweeper = None
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 10)
            except TimeoutError:
                pool.terminate()

    async def backup(self, dest: str) -> None:
        """Not done by correo for PostgreSQL: use pg_dump / pg_basebackup, which operators
        already run (the README's "Scaling out" section says how)."""
        raise TemporaryStoreError(
            "backup of a PostgreSQL store: use pg_dump or pg_basebackup"
            " (or `correo store copy` to a SQLite configuration)"
        )

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise TemporaryStoreError("store is not open")
        return self._pool

    # ------------------------------------------------------------------ plumbing

    async def _write(self, fn: Callable[[PgTx], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction; announce its mailbox changes (``pg_notify`` in
        the transaction, the local hub after commit); return once committed.

        Retried: a transaction that lost a deadlock or serialisation race, and one whose
        pooled connection turned out dead before BEGIN completed (nothing was sent, so
        nothing can have happened). A connection lost later is TemporaryStoreError: the
        client is told to try again, the database having rolled back, or (if it was lost
        in COMMIT itself) possibly not, which at worst repeats a delivery (at least once).
        """
        pool = self.pool
        for attempt in range(RETRIES):
            tx: PgTx | None = None
            try:
                async with pool.acquire() as conn, conn.transaction():
                    tx = PgTx(conn, self.blobs)
                    result = await fn(tx)
                    if tx.changed:
                        await conn.execute(
                            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                            CHANNEL,
                            [payload(m, s) for m, s in sorted(tx.changed.items())],
                        )
            except RETRYABLE as exc:
                if attempt + 1 == RETRIES:
                    raise TemporaryStoreError(f"database: {exc}") from exc
                self.retried += 1
                await asyncio.sleep(0.005 * (attempt + 1))
                continue
            except CONNECTION_LOST as exc:
                if tx is not None or attempt + 1 == RETRIES:
                    raise TemporaryStoreError(f"database connection: {exc}") from exc
                self.retried += 1
                await asyncio.sleep(0.01 * attempt)
                continue
            except BaseException as exc:
                mapped = map_error(exc)
                if mapped is exc:
                    raise
                raise mapped from exc
            for mailbox_id, modseq in tx.changed.items():
                self.relay.publish(mailbox_id, modseq)
            if tx.dropped_files:
                try:
                    await self.blobs.remove_files(pool, tx.dropped_files)
                except Exception:
                    log.warning(
                        "could not remove %d unreferenced blob files now", len(tx.dropped_files)
                    )
            return result
        raise AssertionError("unreachable")

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run a read; retried once on a fresh connection if the pooled one was dead."""
        for attempt in range(2):
            try:
                async with self.pool.acquire() as conn:
                    return await fn(conn)
            except CONNECTION_LOST as exc:
                if attempt == 1:
                    raise TemporaryStoreError(f"database connection: {exc}") from exc
            except BaseException as exc:
                mapped = map_error(exc)
                if mapped is exc:
                    raise
                raise mapped from exc
        raise AssertionError("unreachable")

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._read(lambda c: c.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._read(lambda c: c.fetchrow(sql, *args))

    async def _highest(self, mailbox_ids: list[int]) -> dict[int, int]:
        rows = await self._fetch(
            "SELECT id, highestmodseq FROM mailboxes WHERE id = ANY($1::bigint[])", mailbox_ids
        )
        return {int(r["id"]): int(r["highestmodseq"]) for r in rows}

    # ------------------------------------------------------------------ directory

    async def add_domain(self, name: str) -> Domain:
        return await self._write(lambda tx: directory.add_domain(tx, name))

    async def list_domains(self) -> list[Domain]:
        rows = await self._fetch('SELECT name, created FROM domains ORDER BY name COLLATE "C"')
        return [domain(r) for r in rows]

    async def is_local_domain(self, name: str) -> bool:
        try:
            key = normalize_domain(name)
        except ValueError:
            return False
        return await self._fetchrow("SELECT 1 FROM domains WHERE name = $1", key) is not None

    async def remove_domain(self, name: str, *, force: bool = False) -> None:
        await self._write(lambda tx: directory.remove_domain(tx, name, force))

    async def add_account(self, address: str, password_hash: str, quota: int = 0) -> Account:
        return await self._write(
            lambda tx: directory.add_account(tx, address, password_hash, quota)
        )

    async def get_account(self, address: str) -> Account | None:
        try:
            key = normalize_address(address)
        except ValueError:
            return None
        row = await self._fetchrow(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE address = $1", key
        )
        return account(row) if row else None

    async def get_account_by_id(self, account_id: int) -> Account | None:
        row = await self._fetchrow(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1", account_id
        )
        return account(row) if row else None

    async def list_accounts(self, domain: str | None = None) -> list[Account]:
        order = ' ORDER BY address COLLATE "C"'
        if domain is None:
            rows = await self._fetch(f"SELECT {ACCOUNT_COLUMNS} FROM accounts" + order)
        else:
            rows = await self._fetch(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE domain = $1" + order,
                normalize_domain(domain),
            )
        return [account(r) for r in rows]

    async def set_password(self, address: str, password_hash: str) -> None:
        await self._write(
            lambda tx: directory.update_account(tx, address, "password_hash", password_hash)
        )

    async def set_disabled(self, address: str, disabled: bool) -> None:
        await self._write(
            lambda tx: directory.update_account(tx, address, "disabled", int(disabled))
        )

    async def set_quota(self, address: str, quota: int) -> None:
        await self._write(lambda tx: directory.update_account(tx, address, "quota", max(quota, 0)))

    async def remove_account(self, address: str) -> None:
        await self._write(lambda tx: directory.remove_account(tx, address))

    async def add_alias(self, source: str, targets: Sequence[str]) -> Alias:
        return await self._write(lambda tx: directory.add_alias(tx, source, tuple(targets)))

    async def get_alias(self, source: str) -> Alias | None:
        try:
            key = normalize_address(source, catch_all=True)
        except ValueError:
            return None
        row = await self._fetchrow("SELECT source, targets FROM aliases WHERE source = $1", key)
        return alias(row) if row else None

    async def list_aliases(self, domain: str | None = None) -> list[Alias]:
        order = ' ORDER BY source COLLATE "C"'
        if domain is None:
            rows = await self._fetch("SELECT source, targets FROM aliases" + order)
        else:
            rows = await self._fetch(
                "SELECT source, targets FROM aliases WHERE domain = $1" + order,
                normalize_domain(domain),
            )
        return [alias(r) for r in rows]

    async def remove_alias(self, source: str) -> None:
        await self._write(lambda tx: directory.remove_alias(tx, source))

    # ------------------------------------------------------------------ mailboxes

    async def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        rows = await self._fetch(
            f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = $1"
            ' ORDER BY name COLLATE "C"',
            account_id,
        )
        return [mailbox(r) for r in rows]

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        """INBOX in any case finds INBOX (RFC 3501 §5.1); an invalid name finds nothing."""
        try:
            key = names.normalize(name)
        except InvalidName:
            return None
        row = await self._fetchrow(
            f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = $1 AND name = $2",
            account_id,
            key,
        )
        return mailbox(row) if row else None

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        return await self._read(lambda c: pgrows.get_mailbox_by_id(c, mailbox_id))

    async def create_mailbox(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> Mailbox:
        return await self._write(lambda tx: directory.create(tx, account_id, name, special_use))

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        await self._write(lambda tx: directory.delete(tx, account_id, name))

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        await self._write(lambda tx: directory.rename(tx, account_id, old, new))

    async def list_subscriptions(self, account_id: int) -> list[str]:
        rows = await self._fetch(
            'SELECT name FROM subscriptions WHERE account_id = $1 ORDER BY name COLLATE "C"',
            account_id,
        )
        return [str(r["name"]) for r in rows]

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        await self._write(lambda tx: directory.set_subscribed(tx, account_id, name, subscribed))

    # ------------------------------------------------------------------ messages

    async def _prepare(self, message: IncomingMessage) -> None:
        await self.blobs.prepare(message.sha256, message.data)

    async def _discard(self, message: IncomingMessage) -> None:
        try:
            await self.blobs.discard(self.pool, message.sha256, len(message.data))
        except Exception:
            log.debug("could not discard body %s after a failed write", message.sha256[:12])

    async def deliver(
        self,
        message: IncomingMessage,
        local: Sequence[LocalDelivery],
        queue: QueueRequest | Sequence[QueueRequest] | None = None,
    ) -> DeliveryResult:
        await self._prepare(message)
        targets = tuple(local)
        requests = queue_requests(queue)
        try:
            return await self._write(lambda tx: messages.deliver(tx, message, targets, requests))
        except Exception:
            await self._discard(message)
            raise

    async def append(
        self,
        mailbox_id: int,
        message: IncomingMessage,
        flags: frozenset[str] = frozenset(),
        internaldate: float | None = None,
    ) -> tuple[int, int]:
        await self._prepare(message)
        when = time.time() if internaldate is None else internaldate
        try:
            return await self._write(
                lambda tx: messages.append(tx, mailbox_id, message, flags, when)
            )
        except Exception:
            await self._discard(message)
            raise

    async def message_infos(self, mailbox_id: int) -> list[MessageInfo]:
        rows = await self._fetch(
            "SELECT uid, modseq, flags, internaldate, size FROM messages"
            " WHERE mailbox_id = $1 ORDER BY uid",
            mailbox_id,
        )
        return [info(r) for r in rows]

    async def get_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[StoredMessage]:
        rows = await self._fetch(
            "SELECT m.uid, m.modseq, m.flags, m.internaldate, m.size, m.blob_id, m.prefix,"
            " b.meta FROM messages m JOIN blobs b ON b.sha = m.blob_id"
            " WHERE m.mailbox_id = $1 AND m.uid = ANY($2::bigint[]) ORDER BY m.uid",
            mailbox_id,
            sorted({int(u) for u in uids}),
        )
        return [
            StoredMessage(
                mailbox_id=mailbox_id,
                uid=r[0],
                modseq=r[1],
                flags=decode_flags(r[2]),
                internaldate=r[3],
                size=r[4],
                blob_id=r[5],
                prefix=bytes(r[6]),
                meta=bytes(r[7]),
            )
            for r in rows
        ]

    async def open_body(self, message: StoredMessage) -> Body:
        return await self.open_body_of(message.blob_id, message.prefix)

    async def open_body_of(self, sha: str, prefix: bytes = b"") -> Body:
        """The body ``sha`` (with ``prefix`` in front), for messages and queue entries."""
        try:
            return await self.blobs.open_body(self.pool, sha, prefix)
        except BaseException as exc:
            mapped = map_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def set_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        flags: frozenset[str],
        mode: FlagMode,
        unchanged_since: int | None = None,
    ) -> list[FlagUpdate]:
        wanted = tuple(uids)
        return await self._write(
            lambda tx: messages.set_flags(tx, mailbox_id, wanted, flags, mode, unchanged_since)
        )

    async def copy(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> CopyResult:
        wanted = tuple(uids)
        return await self._write(
            lambda tx: messages.copy(tx, src_mailbox_id, wanted, dst_mailbox_id, move=False)
        )

    async def move(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> CopyResult:
        wanted = tuple(uids)
        return await self._write(
            lambda tx: messages.copy(tx, src_mailbox_id, wanted, dst_mailbox_id, move=True)
        )

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        wanted = None if uids is None else tuple(uids)
        return await self._write(lambda tx: messages.expunge(tx, mailbox_id, wanted))

    async def delete_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        wanted = tuple(uids)
        return await self._write(lambda tx: messages.delete(tx, mailbox_id, wanted))

    async def changes_since(self, mailbox_id: int, modseq: int) -> list[Change]:
        """Change-log rows after ``modseq`` in modseq (then uid) order; compacted as on
        SQLite (``SqliteStore.changes_since``)."""
        rows = await self._fetch(
            "SELECT kind, uid, modseq, flags FROM changes WHERE mailbox_id = $1 AND modseq > $2"
            " ORDER BY modseq, uid",
            mailbox_id,
            modseq,
        )
        return [Change(ChangeKind(r[0]), r[1], r[2], decode_flags(r[3])) for r in rows]

    async def claim_recent(self, mailbox_id: int) -> int:
        return await self._write(lambda tx: pgrows.claim_recent(tx, mailbox_id))

    def watch(self, mailbox_id: int, listener: MailboxListener) -> Subscription:
        """Committed changes from this node (at once) and from others (LISTEN)."""
        return self.relay.watch(mailbox_id, listener)

    # ------------------------------------------------------------------ POP3 lock

    async def lock_maildrop(self, account_id: int, owner: str, ttl: float) -> bool:
        return await self._write(lambda tx: pgrows.lock_maildrop(tx, account_id, owner, ttl))

    async def unlock_maildrop(self, account_id: int, owner: str) -> None:
        await self._write(lambda tx: pgrows.unlock_maildrop(tx, account_id, owner))


def store_for(settings: Settings) -> PostgresStore:
    """An unopened store for ``[storage]``: bodies in the database unless
    ``blobs = "files"`` (then under ``blob_dir``, a path every node shares)."""
    s = settings.storage
    mode = s.blobs or "database"
    return PostgresStore(
        s.url,
        pool_size=s.pool_size,
        blobs=mode,
        blob_dir=settings.blob_dir if mode == "files" else None,
        inline_threshold=s.inline_threshold,
    )


async def open_postgres_store(settings: Settings, *, listen: bool = True) -> Store:
    """Build and open the PostgreSQL store (for ``correo.store.open_store``)."""
    store = store_for(settings)
    await store.open(listen=listen)
    return store


__all__ = ["PostgresStore", "map_error", "open_postgres_store", "store_for"]
