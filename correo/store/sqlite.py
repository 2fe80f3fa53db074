"""The embedded store: SQLite (stdlib ``sqlite3``) plus a content-addressed blob directory.

Layout of the work:

* ``sqlite_writer``: one thread owns the write connection and group-commits every job
  waiting (one transaction, a SAVEPOINT per job, one fsync) — DESIGN.md principle 4.
* ``sqlite_directory`` / ``sqlite_mailboxes`` / ``sqlite_messages``: the write jobs.
* reads: short queries run on the event loop thread on a read-only connection (WAL lets
  them proceed while the writer commits; no transaction is held across an await);
  whole-mailbox reads run on a reader thread with its own connection.
* ``blobs``: bodies above ``storage.inline_threshold`` as files; smaller ones inline in
  the ``blobs`` table, which saves a file fsync per message.

Several processes may serve one database: ``correo serve`` and its SMTP worker processes
(``correo.workers``); their writer threads, and the CLI, take turns on SQLite's own lock
(a blocking ``flock`` around each batch was tried: it made batches smaller and delivery
slower than SQLite's busy waiting, which lets jobs pile up into bigger group commits).
Only a process alone on the blob directory sweeps it (the main process, at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

from correo.store import names
from correo.store import sqlite_bodies as bodies
from correo.store import sqlite_directory as directory
from correo.store import sqlite_mailboxes as mailboxes
from correo.store import sqlite_messages as messages
from correo.store import sqlite_rows as rows
from correo.store import sqlite_views as views
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
    MailboxSnapshot,
    MessageInfo,
    MessageRow,
    MessageText,
    QueueRequest,
    StoredMessage,
    Subscription,
    TemporaryStoreError,
)
from correo.store.blobs import BlobFiles, os_error
from correo.store.events import EventHub
from correo.store.sqlite_schema import connect, map_error, migrate
from correo.store.sqlite_writer import Writer, WriteTx

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_NAME = "correo.db"


class SqliteStore:
    """``Store`` over SQLite. Build with :func:`correo.store.open_store` or
    ``SqliteStore(db_path, blob_dir)`` then ``await store.open()``."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        blob_dir: str | os.PathLike[str],
        *,
        inline_threshold: int = 8192,
    ) -> None:
        self.db_path = Path(db_path)
        self.blobs = BlobFiles(Path(blob_dir))
        self.inline_threshold = inline_threshold
        self.events = EventHub()
        self._writer: Writer | None = None
        self._read: sqlite3.Connection | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._reader_conn: sqlite3.Connection | None = None
        self._lock_file: IO[bytes] | None = None
        self.swept = 0
        """Orphan blob files removed by the last ``open``."""

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create/migrate the schema, sweep uncommitted blobs, start the writer thread."""
        await asyncio.to_thread(self._open_sync)
        assert self._writer is not None
        self._writer.start()

    def _open_sync(self) -> None:
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self.blobs.root.mkdir(parents=True, exist_ok=True)
            wconn = connect(self.db_path)
            migrate(wconn)
            self._lock_file = open(self.blobs.root / ".lock", "ab")
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            if alone:
                self.swept = self.blobs.sweep(self._referenced_in(wconn))
                if self.swept:
                    log.info("removed %d uncommitted blob files", self.swept)
            fcntl.flock(self._lock_file, fcntl.LOCK_SH)
        except sqlite3.Error as exc:
            raise map_error(exc) from exc
        except OSError as exc:
            raise os_error(exc, "opening the store") from exc
        self._writer = Writer(wconn, self.blobs, self.events)
        self._read = connect(self.db_path, readonly=True)
        self._reader_conn = connect(self.db_path, readonly=True)
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="correo-store-reader")

    @staticmethod
    def _referenced_in(conn: sqlite3.Connection) -> Callable[[str], bool]:
        def referenced(sha: str) -> bool:
            row = conn.execute("SELECT 1 FROM blobs WHERE sha = ?", (sha,)).fetchone()
            return row is not None

        return referenced

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        if self._reader_pool is not None:
            self._reader_pool.shutdown(wait=True)
            self._reader_pool = None
        for conn in (self._read, self._reader_conn):
            if conn is not None:
                conn.close()
        self._read = self._reader_conn = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    async def backup(self, dest: str) -> None:
        """Consistent snapshot into ``dest``: ``correo.db`` by the SQLite online backup
        API and the referenced blob files (hard-linked, copied across filesystems).
        Runs on the writer between batches, so no blob file can go meanwhile; writes
        wait for it."""
        target = Path(dest)

        def run(tx: WriteTx) -> None:
            target.mkdir(parents=True, exist_ok=True)
            out = sqlite3.connect(target / DB_NAME)
            try:
                tx.conn.backup(out)
                shas = [r[0] for r in out.execute("SELECT sha FROM blobs WHERE data IS NULL")]
            finally:
                out.close()
            copied = BlobFiles(target / "blobs")
            for sha in shas:
                src, dst = self.blobs.path(sha), copied.path(sha)
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.exists():
                    continue
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)

        await self._write_exclusive(run)

    # ------------------------------------------------------------------ plumbing

    async def _write(self, fn: Callable[[WriteTx], T]) -> T:
        if self._writer is None:
            raise TemporaryStoreError("store is not open")
        return await self._writer.run(fn)

    async def _write_exclusive(self, fn: Callable[[WriteTx], T]) -> T:
        if self._writer is None:
            raise TemporaryStoreError("store is not open")
        return await self._writer.run_exclusive(fn)

    def _q(self) -> sqlite3.Connection:
        if self._read is None:
            raise TemporaryStoreError("store is not open")
        return self._read

    def _now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A short read on the loop thread, in one read transaction."""
        conn = self._q()
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise map_error(exc) from exc

    def _row(self, sql: str, params: tuple[object, ...]) -> Any:
        """One row of a single-statement read on the loop thread. In autocommit mode one
        statement is its own read transaction, so no BEGIN/COMMIT round trips: these are
        the per-RCPT directory lookups of the SMTP hot path."""
        try:
            return self._q().execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise map_error(exc) from exc

    async def highest_modseqs(self, mailbox_ids: Sequence[int]) -> dict[int, int]:
        """Current HIGHESTMODSEQ of each mailbox that still exists (for re-announcing
        watched mailboxes after a worker died before reporting its changes)."""
        ids = list(dict.fromkeys(mailbox_ids))
        out: dict[int, int] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            sql = (
                f"SELECT id, highestmodseq FROM mailboxes WHERE id IN ({','.join('?' * len(part))})"
            )
            try:
                rows = self._q().execute(sql, part).fetchall()  # one statement: one snapshot
            except sqlite3.Error as exc:
                raise map_error(exc) from exc
            out.update((int(r[0]), int(r[1])) for r in rows)
        return out

    async def _thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read that may touch many rows, on the reader thread."""
        if self._reader_pool is None or self._reader_conn is None:
            raise TemporaryStoreError("store is not open")
        conn = self._reader_conn

        def run() -> T:
            try:
                conn.execute("BEGIN")
                try:
                    return fn(conn)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise map_error(exc) from exc

        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, run)

    # ------------------------------------------------------------------ directory

    async def add_domain(self, name: str) -> Domain:
        return await self._write(lambda tx: directory.add_domain(tx, name))

    async def list_domains(self) -> list[Domain]:
        return self._now(
            lambda c: [
                rows.domain(r) for r in c.execute("SELECT name, created FROM domains ORDER BY name")
            ]
        )

    async def is_local_domain(self, name: str) -> bool:
        try:
            key = directory.normalize_domain(name)
        except ValueError:
            return False
        return self._row("SELECT 1 FROM domains WHERE name = ?", (key,)) is not None

    async def remove_domain(self, name: str, *, force: bool = False) -> None:
        await self._write(lambda tx: directory.remove_domain(tx, name, force))

    async def add_account(self, address: str, password_hash: str, quota: int = 0) -> Account:
        return await self._write(
            lambda tx: directory.add_account(tx, address, password_hash, quota)
        )

    async def get_account(self, address: str) -> Account | None:
        try:
            key = directory.normalize_address(address)
        except ValueError:
            return None
        return self._account_where("address = ?", key)

    async def get_account_by_id(self, account_id: int) -> Account | None:
        return self._account_where("id = ?", account_id)

    def _account_where(self, where: str, value: object) -> Account | None:
        sql = f"SELECT {rows.ACCOUNT_COLUMNS} FROM accounts WHERE {where}"
        found = self._row(sql, (value,))
        return rows.account(found) if found else None

    async def list_accounts(self, domain: str | None = None) -> list[Account]:
        sql = f"SELECT {rows.ACCOUNT_COLUMNS} FROM accounts"
        params: tuple[object, ...] = ()
        if domain is not None:
            sql += " WHERE domain = ?"
            params = (directory.normalize_domain(domain),)
        return self._now(
            lambda c: [rows.account(r) for r in c.execute(sql + " ORDER BY address", params)]
        )

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
            key = directory.normalize_address(source, catch_all=True)
        except ValueError:
            return None
        found = self._row("SELECT source, targets FROM aliases WHERE source = ?", (key,))
        return rows.alias(found) if found else None

    async def list_aliases(self, domain: str | None = None) -> list[Alias]:
        sql = "SELECT source, targets FROM aliases"
        params: tuple[object, ...] = ()
        if domain is not None:
            sql += " WHERE domain = ?"
            params = (directory.normalize_domain(domain),)
        return self._now(
            lambda c: [rows.alias(r) for r in c.execute(sql + " ORDER BY source", params)]
        )

    async def remove_alias(self, source: str) -> None:
        await self._write(lambda tx: directory.remove_alias(tx, source))

    # ------------------------------------------------------------------ mailboxes

    async def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        sql = f"SELECT {rows.MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = ? ORDER BY name"
        return self._now(lambda c: [rows.mailbox(r) for r in c.execute(sql, (account_id,))])

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        """INBOX in any case finds INBOX (RFC 3501 §5.1); an invalid name finds nothing."""
        try:
            key = names.normalize(name)
        except InvalidName:
            return None
        sql = f"SELECT {rows.MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = ? AND name = ?"
        found = self._now(lambda c: c.execute(sql, (account_id, key)).fetchone())
        return rows.mailbox(found) if found else None

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        return self._now(lambda c: rows.get_mailbox_by_id(c, mailbox_id))

    async def create_mailbox(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> Mailbox:
        return await self._write(lambda tx: mailboxes.create(tx, account_id, name, special_use))

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        await self._write(lambda tx: mailboxes.delete(tx, account_id, name))

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        await self._write(lambda tx: mailboxes.rename(tx, account_id, old, new))

    async def list_subscriptions(self, account_id: int) -> list[str]:
        sql = "SELECT name FROM subscriptions WHERE account_id = ? ORDER BY name"
        return self._now(lambda c: [r[0] for r in c.execute(sql, (account_id,))])

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        await self._write(lambda tx: mailboxes.set_subscribed(tx, account_id, name, subscribed))

    # ------------------------------------------------------------------ messages

    async def _prepare(self, message: IncomingMessage) -> None:
        """Write a big body's file (fsynced) before the transaction."""
        if len(message.data) > self.inline_threshold:
            await asyncio.to_thread(self.blobs.write, message.sha256, message.data)

    async def deliver(
        self,
        message: IncomingMessage,
        local: Sequence[LocalDelivery],
        queue: QueueRequest | Sequence[QueueRequest] | None = None,
    ) -> DeliveryResult:
        await self._prepare(message)
        targets = tuple(local)
        requests = messages.queue_requests(queue)
        limit = self.inline_threshold
        try:
            return await self._write(
                lambda tx: messages.deliver(tx, message, targets, requests, limit)
            )
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
        limit = self.inline_threshold
        try:
            return await self._write(
                lambda tx: messages.append(tx, mailbox_id, message, flags, when, limit)
            )
        except Exception:
            await self._discard(message)
            raise

    async def _discard(self, message: IncomingMessage) -> None:
        """After a failed write, drop the body file ``_prepare`` wrote, unless a committed
        row references it (the writer re-checks under its lock; best effort: the sweep
        at the next open catches what this misses)."""
        if len(message.data) <= self.inline_threshold or self._writer is None:
            return
        with contextlib.suppress(Exception):
            await self._write(lambda tx: tx.drop_file(message.sha256))

    async def message_infos(self, mailbox_id: int) -> list[MessageInfo]:
        sql = (
            "SELECT uid, modseq, flags, internaldate, size FROM messages"
            " WHERE mailbox_id = ? ORDER BY uid"
        )
        return await self._thread(lambda c: [rows.info(r) for r in c.execute(sql, (mailbox_id,))])

    async def get_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[StoredMessage]:
        sql = (
            "SELECT m.uid, m.modseq, m.flags, m.internaldate, m.size, m.blob_id, m.prefix, b.meta"
            " FROM messages m JOIN blobs b ON b.sha = m.blob_id WHERE m.mailbox_id = ?"
            " AND m.uid IN (SELECT value FROM json_each(?)) ORDER BY m.uid"
        )
        wanted = rows.uid_list(uids)

        def read(c: sqlite3.Connection) -> list[StoredMessage]:
            return [
                StoredMessage(
                    mailbox_id=mailbox_id,
                    uid=r[0],
                    modseq=r[1],
                    flags=rows.decode_flags(r[2]),
                    internaldate=r[3],
                    size=r[4],
                    blob_id=r[5],
                    prefix=bytes(r[6]),
                    meta=bytes(r[7]),
                )
                for r in c.execute(sql, (mailbox_id, wanted))
            ]

        if len(uids) <= 64:
            return self._now(read)
        return await self._thread(read)

    async def open_body(self, message: StoredMessage) -> Body:
        return bodies.open_body(self._q(), self.blobs, self.inline_threshold, message)

    async def open_bodies(self, mailbox_id: int, uids: Sequence[int]) -> dict[int, Body]:
        """Optional, beyond the ``Store`` protocol: the bodies of up to
        ``sqlite_bodies.MAX_BATCH`` messages in one query, by uid (expunged ones left
        out). POP3 opens the next few messages a client will RETR with it."""
        return bodies.open_bodies(self._q(), self.blobs, mailbox_id, uids)

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
        """Change-log rows after ``modseq`` in modseq (then uid) order. The log is
        compacted: per uid it keeps its ADDED row and its latest FLAGS row, and once the
        message is expunged only the EXPUNGED row, so a caller can see EXPUNGED for a
        uid it never saw added (ignore it) but never misses a change."""
        sql = (
            "SELECT kind, uid, modseq, flags FROM changes WHERE mailbox_id = ? AND modseq > ?"
            " ORDER BY modseq, uid"
        )
        return await self._thread(
            lambda c: [
                Change(ChangeKind(r[0]), r[1], r[2], rows.decode_flags(r[3]))
                for r in c.execute(sql, (mailbox_id, modseq))
            ]
        )

    async def claim_recent(self, mailbox_id: int) -> int:
        return await self._write(lambda tx: messages.claim_recent(tx, mailbox_id))

    def watch(self, mailbox_id: int, listener: MailboxListener) -> Subscription:
        return self.events.subscribe(mailbox_id, listener)

    # ------------------------------------------------------------------ IMAP fast paths

    async def mailbox_view(self, mailbox_id: int) -> MailboxSnapshot:
        """``ImapFastPaths.mailbox_view``: the persisted compact view (``sqlite_views``)."""
        return await views.mailbox_view(self, mailbox_id)

    async def message_rows(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageRow]:
        wanted = tuple(uids)
        return await self._thread(lambda c: views.message_rows(c, mailbox_id, wanted))

    async def blob_metas(self, blob_ids: Sequence[str]) -> dict[str, bytes]:
        wanted = tuple(blob_ids)
        return await self._thread(lambda c: views.blob_metas(c, wanted))

    async def message_texts(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageText]:
        wanted = tuple(uids)
        return await self._thread(lambda c: views.message_texts(c, mailbox_id, wanted))

    # ------------------------------------------------------------------ POP3 lock

    async def lock_maildrop(self, account_id: int, owner: str, ttl: float) -> bool:
        return await self._write(lambda tx: messages.lock_maildrop(tx, account_id, owner, ttl))

    async def unlock_maildrop(self, account_id: int, owner: str) -> None:
        await self._write(lambda tx: messages.unlock_maildrop(tx, account_id, owner))
