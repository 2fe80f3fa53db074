""":class:`~correo.store.queue.QueueStore` over the PostgreSQL store, for several nodes.

The rules are ``queue_sqlite``'s (see ``correo.store.queue``); what several nodes add:

* ``claim_due`` picks rows with ``FOR UPDATE SKIP LOCKED`` inside the ``UPDATE`` that
  leases them, so two nodes claiming at once never wait for each other and never get the
  same recipient; a node that dies stops renewing and its rows are claimable again once
  ``lease_until`` passes (at-least-once delivery).
* ``record`` is fenced: it changes a row only while it is still leased to the caller and
  not final, so a node whose lease was taken over cannot overwrite the new holder's work.
* Removing a finished message locks the ``queue_messages`` row first, so two nodes
  finishing the last two recipients of one message at once cannot both conclude that the
  other is still pending (READ COMMITTED would let them).

Times (``now``, leases) come from the runner's clock, as on SQLite: nodes need their
clocks in sync (NTP), which a lease of a minute tolerates easily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from correo.store.base import NotFound
from correo.store.postgres import PostgresStore
from correo.store.postgres_blobs import PgTx
from correo.store.queue import (
    DsnAction,
    QueuedMessage,
    QueuedRecipient,
    QueueEntry,
    RecipientResult,
)
from correo.store.queue_sqlite import MESSAGE_COLUMNS, RECIPIENT_COLUMNS, _message, _recipient

_OPEN = "('pending', 'deferred')"


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 3``."""
    tail = status.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0


async def _entries(conn: asyncpg.Connection, recipients: list[QueuedRecipient]) -> list[QueueEntry]:
    """Join recipients with their messages, grouped by message in first-seen order."""
    by_queue: dict[int, list[QueuedRecipient]] = {}
    for r in recipients:
        by_queue.setdefault(r.queue_id, []).append(r)
    if not by_queue:
        return []
    rows = await conn.fetch(
        f"SELECT {MESSAGE_COLUMNS} FROM queue_messages WHERE id = ANY($1::bigint[])",
        list(by_queue),
    )
    messages = {int(row[0]): _message(row) for row in rows}
    return [QueueEntry(messages[q], tuple(rs)) for q, rs in by_queue.items() if q in messages]


async def _delete_message(tx: PgTx, queue_id: int) -> None:
    sha = await tx.conn.fetchval("SELECT blob_id FROM queue_messages WHERE id = $1", queue_id)
    if sha is None:
        return
    await tx.conn.execute("DELETE FROM queue_recipients WHERE queue_id = $1", queue_id)
    await tx.conn.execute("DELETE FROM queue_messages WHERE id = $1", queue_id)
    await tx.blobs.release(tx, str(sha))


async def finish_done(tx: PgTx, queue_ids: Sequence[int]) -> list[int]:
    """Remove the messages among ``queue_ids`` whose recipients are all final with no
    report owed (locking each message row first), releasing their body reference."""
    done: list[int] = []
    for queue_id in sorted(set(queue_ids)):
        if (
            await tx.conn.fetchval(
                "SELECT 1 FROM queue_messages WHERE id = $1 FOR UPDATE", queue_id
            )
            is None
        ):
            continue
        busy = await tx.conn.fetchval(
            "SELECT 1 FROM queue_recipients WHERE queue_id = $1 AND"
            f" (state IN {_OPEN} OR dsn_pending IS NOT NULL) LIMIT 1",
            queue_id,
        )
        if busy is None:
            await _delete_message(tx, queue_id)
            done.append(queue_id)
    return done


async def _claim(tx: PgTx, owner: str, now: float, lease: float, limit: int) -> list[QueueEntry]:
    rows = await tx.conn.fetch(
        "UPDATE queue_recipients SET lease_owner = $1, lease_until = $2 WHERE id IN"
        f" (SELECT id FROM queue_recipients WHERE state IN {_OPEN} AND next_attempt <= $3"
        " AND (lease_until IS NULL OR lease_until < $3) ORDER BY next_attempt, id LIMIT $4"
        f" FOR UPDATE SKIP LOCKED) RETURNING {RECIPIENT_COLUMNS}",
        owner,
        now + lease,
        now,
        limit,
    )
    recipients = sorted((_recipient(r) for r in rows), key=lambda r: r.id)
    return await _entries(tx.conn, recipients)


async def _record(tx: PgTx, owner: str, results: Sequence[RecipientResult], now: float) -> int:
    touched: list[int] = []
    for res in sorted(results, key=lambda r: r.recipient_id):
        queue_id = await tx.conn.fetchval(
            "UPDATE queue_recipients SET state = $1, status = $2, last_error = $3,"
            " remote_mta = COALESCE($4, remote_mta), attempts = attempts + $5,"
            " next_attempt = COALESCE($6, next_attempt),"
            " dsn_pending = COALESCE($7, dsn_pending),"
            " delay_warned = GREATEST(delay_warned, $8), lease_owner = NULL,"
            " lease_until = NULL, updated = $9"
            f" WHERE id = $10 AND lease_owner = $11 AND state IN {_OPEN} RETURNING queue_id",
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
        )
        if queue_id is not None:
            touched.append(int(queue_id))
    await finish_done(tx, touched)
    return len(touched)


async def _reports_sent(tx: PgTx, sent: Sequence[tuple[int, DsnAction]]) -> None:
    touched: list[int] = []
    for recipient_id, action in sorted(sent, key=lambda s: s[0]):
        queue_id = await tx.conn.fetchval(
            "UPDATE queue_recipients SET dsn_pending = NULL WHERE id = $1 AND dsn_pending = $2"
            " RETURNING queue_id",
            recipient_id,
            action.value,
        )
        if queue_id is not None:
            touched.append(int(queue_id))
    await finish_done(tx, touched)


async def _drop_reports(tx: PgTx, queue_id: int) -> None:
    await tx.conn.execute(
        "UPDATE queue_recipients SET dsn_pending = NULL WHERE queue_id = $1", queue_id
    )
    await finish_done(tx, [queue_id])


async def _retry(tx: PgTx, queue_id: int | None, now: float) -> int:
    sql = f"UPDATE queue_recipients SET next_attempt = $1, updated = $1 WHERE state IN {_OPEN}"
    params: list[Any] = [now]
    if queue_id is not None:
        sql += " AND queue_id = $2"
        params.append(queue_id)
    return _count(await tx.conn.execute(sql, *params))


async def _bounce(tx: PgTx, queue_id: int, diagnostic: str, now: float) -> int:
    if await tx.conn.fetchval("SELECT 1 FROM queue_messages WHERE id = $1", queue_id) is None:
        raise NotFound(f"no queued message {queue_id}")
    status = await tx.conn.execute(
        "UPDATE queue_recipients SET state = 'failed', status = '5.0.0', last_error = $1,"
        " dsn_pending = 'failed', lease_owner = NULL, lease_until = NULL, updated = $2"
        f" WHERE queue_id = $3 AND state IN {_OPEN}",
        diagnostic,
        now,
        queue_id,
    )
    await finish_done(tx, [queue_id])
    return _count(status)


async def _remove(tx: PgTx, queue_id: int) -> bool:
    # recipients before the message row: the order record() and finish_done() lock in
    await tx.conn.execute(
        "SELECT id FROM queue_recipients WHERE queue_id = $1 ORDER BY id FOR UPDATE", queue_id
    )
    if (
        await tx.conn.fetchval("SELECT 1 FROM queue_messages WHERE id = $1 FOR UPDATE", queue_id)
        is None
    ):
        return False
    await _delete_message(tx, queue_id)
    return True


class PostgresQueueStore:
    """The queue methods of one open :class:`PostgresStore`."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def claim_due(self, owner: str, now: float, lease: float, limit: int) -> list[QueueEntry]:
        return await self.store._write(lambda tx: _claim(tx, owner, now, lease, limit))

    async def renew_lease(self, owner: str, until: float) -> int:
        async def job(tx: PgTx) -> int:
            return _count(
                await tx.conn.execute(
                    "UPDATE queue_recipients SET lease_until = $1"
                    f" WHERE lease_owner = $2 AND state IN {_OPEN}",
                    until,
                    owner,
                )
            )

        return await self.store._write(job)

    async def release(self, owner: str, recipient_ids: Sequence[int]) -> None:
        ids = sorted({int(i) for i in recipient_ids})

        async def job(tx: PgTx) -> None:
            await tx.conn.execute(
                "UPDATE queue_recipients SET lease_owner = NULL, lease_until = NULL"
                " WHERE id = ANY($1::bigint[]) AND lease_owner = $2",
                ids,
                owner,
            )

        if ids:
            await self.store._write(job)

    async def record(self, owner: str, results: Sequence[RecipientResult], now: float) -> int:
        items = tuple(results)
        return await self.store._write(lambda tx: _record(tx, owner, items, now))

    async def next_due_time(self, owner: str) -> float | None:
        found = await self.store._read(
            lambda c: c.fetchval(
                "SELECT MIN(GREATEST(next_attempt, COALESCE(lease_until, 0)))"
                f" FROM queue_recipients WHERE state IN {_OPEN}"
                " AND (lease_owner IS NULL OR lease_owner != $1)",
                owner,
            )
        )
        return None if found is None else float(found)

    async def read_body(self, message: QueuedMessage) -> bytes:
        try:
            body = await self.store.open_body_of(message.blob_id)
            return await body.read()
        except NotFound:
            raise NotFound(f"queued message {message.id}: no body {message.blob_id[:12]}") from None

    async def owed_reports(self, limit: int) -> list[QueueEntry]:
        async def read(conn: asyncpg.Connection) -> list[QueueEntry]:
            rows = await conn.fetch(
                f"SELECT {RECIPIENT_COLUMNS} FROM queue_recipients"
                " WHERE dsn_pending IS NOT NULL ORDER BY queue_id, id LIMIT $1",
                limit,
            )
            return await _entries(conn, [_recipient(r) for r in rows])

        return await self.store._read(read)

    async def reports_sent(self, sent: Sequence[tuple[int, DsnAction]]) -> None:
        items = tuple(sent)
        if items:
            await self.store._write(lambda tx: _reports_sent(tx, items))

    async def drop_reports(self, queue_id: int) -> None:
        await self.store._write(lambda tx: _drop_reports(tx, queue_id))

    async def list_entries(self) -> list[QueueEntry]:
        async def read(conn: asyncpg.Connection) -> list[QueueEntry]:
            rows = await conn.fetch(
                f"SELECT {RECIPIENT_COLUMNS} FROM queue_recipients ORDER BY queue_id, id"
            )
            return await _entries(conn, [_recipient(r) for r in rows])

        return await self.store._read(read)

    async def get_entry(self, queue_id: int) -> QueueEntry | None:
        async def read(conn: asyncpg.Connection) -> QueueEntry | None:
            rows = await conn.fetch(
                f"SELECT {RECIPIENT_COLUMNS} FROM queue_recipients WHERE queue_id = $1 ORDER BY id",
                queue_id,
            )
            found = await _entries(conn, [_recipient(r) for r in rows])
            return found[0] if found else None

        return await self.store._read(read)

    async def retry(self, queue_id: int | None, now: float) -> int:
        return await self.store._write(lambda tx: _retry(tx, queue_id, now))

    async def bounce(self, queue_id: int, diagnostic: str, now: float) -> int:
        return await self.store._write(lambda tx: _bounce(tx, queue_id, diagnostic, now))

    async def remove(self, queue_id: int) -> bool:
        return await self.store._write(lambda tx: _remove(tx, queue_id))
