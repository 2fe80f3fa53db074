""":class:`~correo.store.queue.QueueStore` over the SQLite store.

Writes are jobs on the store's group-commit writer (``SqliteStore._write``); short reads
use its read-only connection on the loop thread (``SqliteStore._now``). Claiming is one
``UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING``: SQLite serialises writers, so two
processes can never lease the same row (PostgreSQL will use ``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from correo.store.base import NotFound
from correo.store.queue import (
    DsnAction,
    QueuedMessage,
    QueuedRecipient,
    QueueEntry,
    RecipientResult,
    RecipientState,
)
from correo.store.sqlite import SqliteStore
from correo.store.sqlite_rows import release_queue_blob
from correo.store.sqlite_writer import WriteTx

_OPEN = "('pending', 'deferred')"
MESSAGE_COLUMNS = "id, blob_id, sender, envid, ret, smtputf8, body_8bit, prefix, size, created"
RECIPIENT_COLUMNS = (
    "id, queue_id, address, domain, orcpt, notify, state, attempts, next_attempt,"
    " last_error, status, remote_mta, delay_warned, dsn_pending, lease_owner, lease_until"
)


def _message(row: Sequence[Any]) -> QueuedMessage:
    return QueuedMessage(
        id=row[0],
        blob_id=row[1],
        sender=row[2],
        envid=row[3],
        ret=row[4],
        smtputf8=bool(row[5]),
        body_8bit=bool(row[6]),
        prefix=bytes(row[7]),
        size=row[8],
        created=row[9],
    )


def _recipient(row: Sequence[Any]) -> QueuedRecipient:
    return QueuedRecipient(
        id=row[0],
        queue_id=row[1],
        address=row[2],
        domain=row[3],
        orcpt=row[4],
        notify=frozenset(n for n in row[5].split(",") if n),
        state=RecipientState(row[6]),
        attempts=row[7],
        next_attempt=row[8],
        last_error=row[9],
        status=row[10],
        remote_mta=row[11],
        delay_warned=bool(row[12]),
        dsn_pending=DsnAction(row[13]) if row[13] else None,
        lease_owner=row[14],
        lease_until=row[15],
    )


def _entries(conn: sqlite3.Connection, recipients: list[QueuedRecipient]) -> list[QueueEntry]:
    """Join recipients with their messages, grouped by message in first-seen order."""
    by_queue: dict[int, list[QueuedRecipient]] = {}
    for r in recipients:
        by_queue.setdefault(r.queue_id, []).append(r)
    if not by_queue:
        return []
    ids = ",".join(str(int(q)) for q in by_queue)
    messages = {
        row[0]: _message(row)
        for row in conn.execute(f"SELECT {MESSAGE_COLUMNS} FROM queue_messages WHERE id IN ({ids})")
    }
    return [QueueEntry(messages[q], tuple(rs)) for q, rs in by_queue.items() if q in messages]


def finish_done(tx: WriteTx, queue_ids: Sequence[int]) -> list[int]:
    """Remove the messages among ``queue_ids`` whose recipients are all final with no
    report owed, releasing their body reference; returns the removed ids."""
    done: list[int] = []
    for queue_id in dict.fromkeys(queue_ids):
        row = tx.conn.execute(
            "SELECT 1 FROM queue_recipients WHERE queue_id = ? AND"
            f" (state IN {_OPEN} OR dsn_pending IS NOT NULL) LIMIT 1",
            (queue_id,),
        ).fetchone()
        if row is None:
            release_queue_blob(tx, queue_id)
            done.append(queue_id)
    return done


def _claim(tx: WriteTx, owner: str, now: float, lease: float, limit: int) -> list[QueueEntry]:
    rows = tx.conn.execute(
        "UPDATE queue_recipients SET lease_owner = ?, lease_until = ? WHERE id IN"
        f" (SELECT id FROM queue_recipients WHERE state IN {_OPEN} AND next_attempt <= ?"
        " AND (lease_until IS NULL OR lease_until < ?) ORDER BY next_attempt, id LIMIT ?)"
        f" RETURNING {RECIPIENT_COLUMNS}",
        (owner, now + lease, now, now, limit),
    ).fetchall()
    recipients = sorted((_recipient(r) for r in rows), key=lambda r: r.id)
    return _entries(tx.conn, recipients)


def _record(tx: WriteTx, owner: str, results: Sequence[RecipientResult], now: float) -> int:
    applied = 0
    touched: list[int] = []
    for res in results:
        row = tx.conn.execute(
            "UPDATE queue_recipients SET state = ?, status = ?, last_error = ?,"
            " remote_mta = COALESCE(?, remote_mta), attempts = attempts + ?,"
            " next_attempt = COALESCE(?, next_attempt),"
            " dsn_pending = COALESCE(?, dsn_pending),"
            " delay_warned = MAX(delay_warned, ?), lease_owner = NULL, lease_until = NULL,"
            " updated = ?"
            f" WHERE id = ? AND lease_owner = ? AND state IN {_OPEN} RETURNING queue_id",
            (
                res.state.value,
                res.status,
                res.diagnostic,
                res.remote_mta,
                int(res.count_attempt),
                res.next_attempt,
                res.dsn.value if res.dsn else None,
                int(res.delay_warned),
                now,
                res.recipient_id,
                owner,
            ),
        ).fetchone()
        if row is not None:
            applied += 1
            touched.append(int(row[0]))
    finish_done(tx, touched)
    return applied


def _reports_sent(tx: WriteTx, sent: Sequence[tuple[int, DsnAction]]) -> None:
    touched: list[int] = []
    for recipient_id, action in sent:
        row = tx.conn.execute(
            "UPDATE queue_recipients SET dsn_pending = NULL WHERE id = ? AND dsn_pending = ?"
            " RETURNING queue_id",
            (recipient_id, action.value),
        ).fetchone()
        if row is not None:
            touched.append(int(row[0]))
    finish_done(tx, touched)


def _drop_reports(tx: WriteTx, queue_id: int) -> None:
    tx.conn.execute(
        "UPDATE queue_recipients SET dsn_pending = NULL WHERE queue_id = ?", (queue_id,)
    )
    finish_done(tx, [queue_id])


def _retry(tx: WriteTx, queue_id: int | None, now: float) -> int:
    sql = f"UPDATE queue_recipients SET next_attempt = ?, updated = ? WHERE state IN {_OPEN}"
    params: tuple[Any, ...] = (now, now)
    if queue_id is not None:
        sql += " AND queue_id = ?"
        params += (queue_id,)
    return tx.conn.execute(sql, params).rowcount


def _bounce(tx: WriteTx, queue_id: int, diagnostic: str, now: float) -> int:
    if tx.conn.execute("SELECT 1 FROM queue_messages WHERE id = ?", (queue_id,)).fetchone() is None:
        raise NotFound(f"no queued message {queue_id}")
    count = tx.conn.execute(
        "UPDATE queue_recipients SET state = 'failed', status = '5.0.0', last_error = ?,"
        " dsn_pending = 'failed', lease_owner = NULL, lease_until = NULL, updated = ?"
        f" WHERE queue_id = ? AND state IN {_OPEN}",
        (diagnostic, now, queue_id),
    ).rowcount
    finish_done(tx, [queue_id])
    return count


def _remove(tx: WriteTx, queue_id: int) -> bool:
    if tx.conn.execute("SELECT 1 FROM queue_messages WHERE id = ?", (queue_id,)).fetchone() is None:
        return False
    release_queue_blob(tx, queue_id)
    return True


class SqliteQueueStore:
    """The queue methods of one open :class:`SqliteStore`."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    async def claim_due(self, owner: str, now: float, lease: float, limit: int) -> list[QueueEntry]:
        return await self.store._write(lambda tx: _claim(tx, owner, now, lease, limit))

    async def renew_lease(self, owner: str, until: float) -> int:
        def job(tx: WriteTx) -> int:
            return tx.conn.execute(
                "UPDATE queue_recipients SET lease_until = ?"
                f" WHERE lease_owner = ? AND state IN {_OPEN}",
                (until, owner),
            ).rowcount

        return await self.store._write(job)

    async def release(self, owner: str, recipient_ids: Sequence[int]) -> None:
        ids = [(i, owner) for i in recipient_ids]

        def job(tx: WriteTx) -> None:
            tx.conn.executemany(
                "UPDATE queue_recipients SET lease_owner = NULL, lease_until = NULL"
                " WHERE id = ? AND lease_owner = ?",
                ids,
            )

        if ids:
            await self.store._write(job)

    async def record(self, owner: str, results: Sequence[RecipientResult], now: float) -> int:
        items = tuple(results)
        return await self.store._write(lambda tx: _record(tx, owner, items, now))

    async def next_due_time(self, owner: str) -> float | None:
        """Index-only work however long the queue: the first unleased row per state in
        ``next_attempt`` order, and the leases of others (few: only rows in flight)."""

        def read(conn: sqlite3.Connection) -> float | None:
            times = [
                row[0]
                for state in ("pending", "deferred")
                for row in conn.execute(
                    "SELECT next_attempt FROM queue_recipients WHERE state = ?"
                    " AND lease_owner IS NULL ORDER BY next_attempt LIMIT 1",
                    (state,),
                )
            ]
            row = conn.execute(
                "SELECT MIN(MAX(next_attempt, lease_until)) FROM queue_recipients"
                " WHERE lease_owner IS NOT NULL AND lease_owner != ?"
                f" AND +state IN {_OPEN}",
                (owner,),
            ).fetchone()
            if row[0] is not None:
                times.append(row[0])
            return float(min(times)) if times else None

        return self.store._now(read)

    async def read_body(self, message: QueuedMessage) -> bytes:
        row = self.store._now(
            lambda c: c.execute(
                "SELECT data FROM blobs WHERE sha = ?", (message.blob_id,)
            ).fetchone()
        )
        if row is None:
            raise NotFound(f"queued message {message.id}: no body {message.blob_id[:12]}")
        if row[0] is not None:
            return bytes(row[0])
        path: Path = self.store.blobs.path(message.blob_id)
        return await asyncio.to_thread(path.read_bytes)

    async def owed_reports(self, limit: int) -> list[QueueEntry]:
        def read(conn: sqlite3.Connection) -> list[QueueEntry]:
            rows = conn.execute(
                f"SELECT {RECIPIENT_COLUMNS} FROM queue_recipients"
                " WHERE dsn_pending IS NOT NULL ORDER BY queue_id, id LIMIT ?",
                (limit,),
            ).fetchall()
            return _entries(conn, [_recipient(r) for r in rows])

        return self.store._now(read)

    async def reports_sent(self, sent: Sequence[tuple[int, DsnAction]]) -> None:
        items = tuple(sent)
        if items:
            await self.store._write(lambda tx: _reports_sent(tx, items))

    async def drop_reports(self, queue_id: int) -> None:
        await self.store._write(lambda tx: _drop_reports(tx, queue_id))

    async def list_entries(self) -> list[QueueEntry]:
        def read(conn: sqlite3.Connection) -> list[QueueEntry]:
            rows = conn.execute(
                f"SELECT {RECIPIENT_COLUMNS} FROM queue_recipients ORDER BY queue_id, id"
            ).fetchall()
            return _entries(conn, [_recipient(r) for r in rows])

        return await self.store._thread(read)

    async def get_entry(self, queue_id: int) -> QueueEntry | None:
        def read(conn: sqlite3.Connection) -> QueueEntry | None:
            rows = conn.execute(
                f"SELECT {RECIPIENT_COLUMNS} FROM queue_recipients WHERE queue_id = ? ORDER BY id",
                (queue_id,),
            ).fetchall()
            found = _entries(conn, [_recipient(r) for r in rows])
            return found[0] if found else None

        return self.store._now(read)

    async def retry(self, queue_id: int | None, now: float) -> int:
        return await self.store._write(lambda tx: _retry(tx, queue_id, now))

    async def bounce(self, queue_id: int, diagnostic: str, now: float) -> int:
        return await self.store._write(lambda tx: _bounce(tx, queue_id, diagnostic, now))

    async def remove(self, queue_id: int) -> bool:
        return await self.store._write(lambda tx: _remove(tx, queue_id))
