"""Row helpers and locks shared by the PostgreSQL write jobs, plus the small jobs that
need nothing else (\\Recent claims, POP3 maildrop locks).

Lock order, kept by every job so that transactions queue instead of deadlocking:
accounts (by id), then mailboxes (by id), then bodies, then queue rows.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from correo.store.base import Mailbox, NotFound, OverQuota
from correo.store.postgres_blobs import PgTx
from correo.store.sqlite_rows import MAILBOX_COLUMNS, mailbox

NOW_SQL = "extract(epoch FROM clock_timestamp())::float8"
"""The database's clock: one clock for every node (leases, locks, limits)."""


# --------------------------------------------------------------------------- rows & locks


async def get_mailbox_by_id(
    conn: asyncpg.Connection, mailbox_id: int, *, lock: bool = False
) -> Mailbox | None:
    sql = f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = $1"
    row = await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), mailbox_id)
    return mailbox(row) if row else None


async def selectable_mailbox(conn: asyncpg.Connection, mailbox_id: int, *, lock: bool) -> Mailbox:
    """The mailbox (row-locked when ``lock``), or NotFound when missing or \\Noselect."""
    mb = await get_mailbox_by_id(conn, mailbox_id, lock=lock)
    if mb is None or not mb.selectable:
        raise NotFound(f"no mailbox {mailbox_id}")
    return mb


async def lock_accounts(conn: asyncpg.Connection, ids: Iterable[int]) -> dict[int, tuple[int, int]]:
    """Row-lock accounts in id order; account_id → (quota, used) of those that exist."""
    rows = await conn.fetch(
        "SELECT id, quota, used FROM accounts WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
        sorted(set(ids)),
    )
    return {int(r["id"]): (int(r["quota"]), int(r["used"])) for r in rows}


async def lock_mailboxes(conn: asyncpg.Connection, ids: Iterable[int]) -> dict[int, Mailbox]:
    """Row-lock mailboxes in id order (after any account locks)."""
    rows = await conn.fetch(
        f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = ANY($1::bigint[]) ORDER BY id"
        " FOR UPDATE",
        sorted(set(ids)),
    )
    return {int(r["id"]): mailbox(r) for r in rows}


async def account_of(conn: asyncpg.Connection, mailbox_id: int) -> int:
    """The owner of a mailbox (never changes, so read without a lock)."""
    found = await conn.fetchval("SELECT account_id FROM mailboxes WHERE id = $1", mailbox_id)
    if found is None:
        raise NotFound(f"no mailbox {mailbox_id}")
    return int(found)


async def lock_for_mailbox(conn: asyncpg.Connection, mailbox_id: int) -> Mailbox:
    """Lock the owning account then the mailbox; NotFound if gone or \\Noselect."""
    await lock_accounts(conn, [await account_of(conn, mailbox_id)])
    return await selectable_mailbox(conn, mailbox_id, lock=True)


async def bump_modseq(conn: asyncpg.Connection, mailbox_id: int) -> int:
    """Next MODSEQ of the mailbox (RFC 7162 §3.1.1), written to ``highestmodseq``."""
    found = await conn.fetchval(
        "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = $1"
        " RETURNING highestmodseq",
        mailbox_id,
    )
    if found is None:
        raise NotFound(f"no mailbox {mailbox_id}")
    return int(found)


async def next_uidvalidity(conn: asyncpg.Connection) -> int:
    """A UIDVALIDITY never handed out before in this database (RFC 3501 §2.3.1.1): the
    later of the database clock and the last value + 1 (the counter row is locked by the
    upsert, so nodes never hand out the same one)."""
    value = await conn.fetchval(
        "INSERT INTO counters AS c (name, value)"
        f" VALUES ('uidvalidity', floor({NOW_SQL})::bigint)"
        " ON CONFLICT (name) DO UPDATE SET value = GREATEST(c.value + 1, EXCLUDED.value)"
        " RETURNING value"
    )
    if int(value) >= 2**32:
        raise OverflowError("UIDVALIDITY space exhausted")
    return int(value)


def check_room(room: tuple[int, int] | None, account_id: int, extra: int, single: int) -> None:
    """Raise :class:`OverQuota` when ``extra`` more bytes do not fit (quota 0 = none)."""
    if room is None:
        raise NotFound(f"no account {account_id}")
    quota, used = room
    if quota and used + extra > quota:
        raise OverQuota(message_alone_exceeds=single > quota)


async def claim_recent(tx: PgTx, mailbox_id: int) -> int:
    """RFC 3501 §2.3.2 \\Recent: the first session to look (on any node) claims them."""
    old = await tx.conn.fetchval(
        "SELECT first_recent_uid FROM mailboxes WHERE id = $1 FOR UPDATE", mailbox_id
    )
    if old is None:
        raise NotFound(f"no mailbox {mailbox_id}")
    await tx.conn.execute(
        "UPDATE mailboxes SET first_recent_uid = uidnext WHERE id = $1", mailbox_id
    )
    return int(old)


async def lock_maildrop(tx: PgTx, account_id: int, owner: str, ttl: float) -> bool:
    """RFC 1939 §8 exclusive maildrop across nodes: take (or refresh our own, or an
    expired) lock; expiry is judged by the database clock, the same for every node."""
    got = await tx.conn.fetchval(
        f"WITH clock AS (SELECT {NOW_SQL} AS t)"
        " INSERT INTO maildrop_locks AS l (account_id, owner, expires)"
        " SELECT $1, $2, t + $3 FROM clock"
        " ON CONFLICT (account_id) DO UPDATE SET owner = EXCLUDED.owner,"
        " expires = EXCLUDED.expires WHERE l.owner = EXCLUDED.owner"
        " OR l.expires <= (SELECT t FROM clock) RETURNING owner",
        account_id,
        owner,
        float(ttl),
    )
    return bool(got == owner)


async def unlock_maildrop(tx: PgTx, account_id: int, owner: str) -> None:
    await tx.conn.execute(
        "DELETE FROM maildrop_locks WHERE account_id = $1 AND owner = $2", account_id, owner
    )
