"""Message write jobs for the PostgreSQL store: deliver, append, flags, copy/move, expunge.

Each function runs inside one transaction (``PostgresStore._write``). The rules are the
SQLite backend's (``sqlite_messages``): every change bumps the mailbox MODSEQ and writes
the change log (RFC 7162 §3.1); what differs is concurrency, since several nodes write:

* UIDs and MODSEQs are allocated by ``UPDATE mailboxes … RETURNING`` on a row this
  transaction has locked (``SELECT … FOR UPDATE``) and keeps locked until it commits, so
  per mailbox, allocation order is commit order: no client can see UID 11 committed and
  UID 10 appear later (a sequence could not promise that).
* Row locks are always taken in one order (accounts by id, then mailboxes by id, then
  bodies), so transactions queue behind each other instead of deadlocking; quota checks
  read ``accounts.used`` under that lock, so two nodes cannot both fill the last bytes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import asyncpg

from correo.store import names
from correo.store.base import (
    MAX_FLAGS,
    CopyResult,
    DeliveryResult,
    FlagMode,
    FlagUpdate,
    IncomingMessage,
    InvalidName,
    LocalDelivery,
    Mailbox,
    NotFound,
    QueueRequest,
    TooManyFlags,
)
from correo.store.postgres_blobs import PgTx
from correo.store.postgres_rows import (
    account_of,
    bump_modseq,
    check_room,
    lock_accounts,
    lock_for_mailbox,
    lock_mailboxes,
    selectable_mailbox,
)
from correo.store.sqlite_messages import apply_flags, recipient_rows
from correo.store.sqlite_rows import (
    DELETED,
    SEEN,
    clean_flags,
    decode_flags,
    encode_flags,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- inserting


_LINK_ONE = (
    "WITH mb AS (UPDATE mailboxes SET uidnext = uidnext + 1,"
    " highestmodseq = highestmodseq + 1, n_exists = n_exists + 1,"
    " n_unseen = n_unseen + $2, size = size + $3 WHERE id = $1 AND selectable = 1"
    " RETURNING id, uidnext - 1 AS uid, highestmodseq AS modseq, account_id, uidvalidity),"
    " ins AS (INSERT INTO messages (mailbox_id, uid, modseq, flags, internaldate, size,"
    " blob_id, prefix) SELECT id, uid, modseq, $4, $5, $3, $6, $7 FROM mb),"
    " log AS (INSERT INTO changes (mailbox_id, modseq, uid, kind, flags)"
    " SELECT id, modseq, uid, 'added', $4 FROM mb),"
    " used AS (UPDATE accounts SET used = used + $3 WHERE id = (SELECT account_id FROM mb))"
    " SELECT uid, modseq, uidvalidity FROM mb"
)
"""One round trip: next UID and MODSEQ (taking the mailbox row lock, held to commit),
counters, the message row, its change-log row and the account's usage. Every other row
lock it needs (the account) the caller already holds, so the order of the sub-statements
cannot matter."""


async def _link(
    tx: PgTx,
    mailbox_id: int,
    sha: str,
    prefix: bytes,
    flags: frozenset[str],
    internaldate: float,
    size: int,
) -> tuple[int, int, int]:
    """Link one message into a selectable mailbox whose account row this transaction
    has locked; returns (uid, modseq, uidvalidity). The body reference is the caller's
    business."""
    row = await tx.conn.fetchrow(
        _LINK_ONE,
        mailbox_id,
        0 if SEEN in flags else 1,
        size,
        encode_flags(flags),
        internaldate,
        sha,
        prefix,
    )
    if row is None:
        raise NotFound(f"no mailbox {mailbox_id}")
    tx.notify(mailbox_id, int(row["modseq"]))
    return int(row["uid"]), int(row["modseq"]), int(row["uidvalidity"])


async def _link_many(
    tx: PgTx, sha: str, items: Sequence[tuple[int, bytes, frozenset[str], int]], now: float
) -> list[int]:
    """Link one body into several mailboxes ``(mailbox_id, prefix, flags, size)`` in four
    round trips whatever their number (a message to 50 local users); returns the UIDs in
    ``items`` order. The accounts must be locked; the mailboxes are locked here, in id
    order, and each gets one new MODSEQ for all its new messages."""
    boxes = await lock_mailboxes(tx.conn, (m for m, *_rest in items))
    per_box: dict[int, list[int]] = {}
    for mailbox_id, _prefix, flags, size in items:
        mb = boxes.get(mailbox_id)
        if mb is None or not mb.selectable:
            raise NotFound(f"no mailbox {mailbox_id}")
        n, unseen, total = per_box.get(mailbox_id, [0, 0, 0])
        per_box[mailbox_id] = [n + 1, unseen + (SEEN not in flags), total + size]
    ids = sorted(per_box)
    heads = await tx.conn.fetch(
        "UPDATE mailboxes m SET uidnext = m.uidnext + d.n, highestmodseq = m.highestmodseq + 1,"
        " n_exists = m.n_exists + d.n, n_unseen = m.n_unseen + d.unseen, size = m.size + d.size"
        " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])"
        " AS d(id, n, unseen, size) WHERE m.id = d.id"
        " RETURNING m.id, m.uidnext - d.n AS first, m.highestmodseq AS modseq",
        ids,
        [per_box[i][0] for i in ids],
        [per_box[i][1] for i in ids],
        [per_box[i][2] for i in ids],
    )
    next_uid = {int(h["id"]): int(h["first"]) for h in heads}
    modseq = {int(h["id"]): int(h["modseq"]) for h in heads}
    uids: list[int] = []
    for mailbox_id, *_rest in items:
        uids.append(next_uid[mailbox_id])
        next_uid[mailbox_id] += 1
    texts = [encode_flags(flags) for _m, _p, flags, _s in items]
    await tx.conn.execute(
        "WITH items AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[],"
        " $4::text[], $5::bigint[], $6::bytea[]) AS t(mailbox_id, uid, modseq, flags, size,"
        " prefix)), ins AS (INSERT INTO messages (mailbox_id, uid, modseq, flags,"
        " internaldate, size, blob_id, prefix) SELECT mailbox_id, uid, modseq, flags, $7,"
        " size, $8, prefix FROM items) INSERT INTO changes (mailbox_id, modseq, uid, kind,"
        " flags) SELECT mailbox_id, modseq, uid, 'added', flags FROM items",
        [m for m, *_rest in items],
        uids,
        [modseq[m] for m, *_rest in items],
        texts,
        [size for *_rest, size in items],
        [prefix for _m, prefix, _f, _s in items],
        now,
        sha,
    )
    used: dict[int, int] = {}
    for mailbox_id, *_rest, size in items:
        owner = boxes[mailbox_id].account_id
        used[owner] = used.get(owner, 0) + size
    await tx.conn.execute(
        "UPDATE accounts a SET used = a.used + d.size"
        " FROM unnest($1::bigint[], $2::bigint[]) AS d(id, size) WHERE a.id = d.id",
        list(used),
        list(used.values()),
    )
    for mailbox_id in ids:
        tx.notify(mailbox_id, modseq[mailbox_id])
    return uids


async def _delivery_mailboxes(
    conn: asyncpg.Connection, local: Sequence[LocalDelivery]
) -> dict[tuple[int, str], int]:
    """(account_id, normalised name) → id of the selectable mailboxes deliveries may
    use, in one query. Read under the accounts' locks, which every change to an
    account's mailboxes takes too, so the answer holds until commit."""
    wanted = {names.INBOX}
    for target in local:
        try:
            wanted.add(names.normalize(target.mailbox))
        except InvalidName:
            continue
    rows = await conn.fetch(
        "SELECT account_id, name, id FROM mailboxes WHERE account_id = ANY($1::bigint[])"
        " AND name = ANY($2::text[]) AND selectable = 1",
        sorted({t.account_id for t in local}),
        sorted(wanted),
    )
    return {(int(r["account_id"]), str(r["name"])): int(r["id"]) for r in rows}


def _target_mailbox(found: dict[tuple[int, str], int], target: LocalDelivery) -> int | None:
    """The named mailbox, else INBOX when it is missing or \\Noselect (as on SQLite)."""
    try:
        wanted = names.normalize(target.mailbox)
    except InvalidName:
        wanted = names.INBOX
    return found.get((target.account_id, wanted), found.get((target.account_id, names.INBOX)))


async def deliver(
    tx: PgTx,
    message: IncomingMessage,
    local: Sequence[LocalDelivery],
    queue: Sequence[QueueRequest],
) -> DeliveryResult:
    """Store once, link into each recipient's mailbox, queue remote recipients (one
    entry, with its own body reference, per request with recipients), in one
    transaction. Over-quota accounts are skipped (RFC 5321 §4.5.3.1.10); accounts that
    vanished are logged and skipped. Same rules as ``sqlite_messages.deliver``.

    Round trips: lock the accounts, find the mailboxes, count the body reference, link
    (one for a single recipient, four for any number), so a mailbox row is held for
    little more than a round trip plus the commit."""
    now = time.time()
    body_size = len(message.data)
    rooms = await lock_accounts(tx.conn, (t.account_id for t in local))
    found = await _delivery_mailboxes(tx.conn, local) if rooms else {}
    over: list[int] = []
    planned: list[tuple[LocalDelivery, int, int]] = []
    for target in local:
        size = len(target.prefix) + body_size
        room = rooms.get(target.account_id)
        if room is None:
            log.warning("deliver: account %d no longer exists; skipped", target.account_id)
            continue
        quota, current = room
        if quota and current + size > quota:
            if target.account_id not in over:
                over.append(target.account_id)
            continue
        mailbox_id = _target_mailbox(found, target)
        if mailbox_id is None:
            log.warning("deliver: account %d has no INBOX; skipped", target.account_id)
            continue
        rooms[target.account_id] = (quota, current + size)
        planned.append((target, mailbox_id, size))
    requests = [r for r in queue if r.recipients]
    refs = len(planned) + len(requests)
    if refs:
        await tx.blobs.add_ref(tx, message.sha256, message.data, message.meta, refs)
    delivered: tuple[tuple[int, int, int], ...] = ()
    if len(planned) == 1:
        target, mailbox_id, size = planned[0]
        uid, _modseq, _uv = await _link(
            tx, mailbox_id, message.sha256, target.prefix, clean_flags(target.flags), now, size
        )
        delivered = ((target.account_id, mailbox_id, uid),)
    elif planned:
        items = [(m, t.prefix, clean_flags(t.flags), size) for t, m, size in planned]
        uids = await _link_many(tx, message.sha256, items, now)
        delivered = tuple(
            (t.account_id, m, uid) for (t, m, _s), uid in zip(planned, uids, strict=True)
        )
    queue_ids = tuple([await _enqueue(tx, message, request, now) for request in requests])
    return DeliveryResult(
        delivered=delivered,
        over_quota=tuple(over),
        queue_id=queue_ids[0] if queue_ids else None,
        queue_ids=queue_ids,
    )


async def _enqueue(tx: PgTx, message: IncomingMessage, queue: QueueRequest, now: float) -> int:
    """Rows for the queue runner, due now (RFC 5321 §4.5.4.1); as on SQLite."""
    queue_id = await tx.conn.fetchval(
        "INSERT INTO queue_messages (blob_id, sender, envid, ret, smtputf8, body_8bit, prefix,"
        " size, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        message.sha256,
        queue.sender,
        queue.envid,
        queue.ret,
        int(queue.smtputf8),
        int(queue.body_8bit),
        queue.prefix,
        len(queue.prefix) + len(message.data),
        now,
    )
    await tx.conn.executemany(
        "INSERT INTO queue_recipients (queue_id, address, domain, orcpt, notify, next_attempt,"
        " updated) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        recipient_rows(queue_id, queue, now),
    )
    return int(queue_id)


async def append(
    tx: PgTx,
    mailbox_id: int,
    message: IncomingMessage,
    flags: frozenset[str],
    internaldate: float,
) -> tuple[int, int]:
    """RFC 9051 §6.3.12 APPEND: (uidvalidity, uid), or OverQuota / NotFound."""
    account_id = await account_of(tx.conn, mailbox_id)
    rooms = await lock_accounts(tx.conn, [account_id])
    size = len(message.data)
    check_room(rooms.get(account_id), account_id, size, size)
    await tx.blobs.add_ref(tx, message.sha256, message.data, message.meta, 1)
    uid, _modseq, uidvalidity = await _link(
        tx, mailbox_id, message.sha256, b"", clean_flags(flags), internaldate, size
    )
    return uidvalidity, uid


# --------------------------------------------------------------------------- flags


async def set_flags(
    tx: PgTx,
    mailbox_id: int,
    uids: Sequence[int],
    flags: frozenset[str],
    mode: FlagMode,
    unchanged_since: int | None,
) -> list[FlagUpdate]:
    """RFC 9051 §6.4.6 STORE; with ``unchanged_since`` (RFC 7162 §3.1.3) messages whose
    modseq is greater are left alone. Only changed messages get the new modseq."""
    await selectable_mailbox(tx.conn, mailbox_id, lock=True)
    wanted = clean_flags(flags)
    rows = await tx.conn.fetch(
        "SELECT uid, modseq, flags FROM messages WHERE mailbox_id = $1"
        " AND uid = ANY($2::bigint[]) ORDER BY uid",
        mailbox_id,
        sorted({int(u) for u in uids}),
    )
    changed: list[tuple[int, frozenset[str]]] = []
    unseen_delta = 0
    for r in rows:
        if unchanged_since is not None and r["modseq"] > unchanged_since:
            continue
        old = decode_flags(r["flags"])
        new = apply_flags(mode, old, wanted)
        if len(new) > MAX_FLAGS:
            raise TooManyFlags(f"a message may carry at most {MAX_FLAGS} flags and keywords")
        if new != old:
            changed.append((int(r["uid"]), new))
            unseen_delta += (SEEN in old) - (SEEN in new)
    if not changed:
        return []
    modseq = await bump_modseq(tx.conn, mailbox_id)
    await tx.conn.executemany(
        "UPDATE messages SET flags = $1, modseq = $2 WHERE mailbox_id = $3 AND uid = $4",
        [(encode_flags(new), modseq, mailbox_id, uid) for uid, new in changed],
    )
    changed_uids = [uid for uid, _ in changed]
    await tx.conn.execute(
        "DELETE FROM changes WHERE mailbox_id = $1 AND uid = ANY($2::bigint[]) AND kind = 'flags'",
        mailbox_id,
        changed_uids,
    )
    await tx.conn.executemany(
        "INSERT INTO changes (mailbox_id, modseq, uid, kind, flags)"
        " VALUES ($1, $2, $3, 'flags', $4)",
        [(mailbox_id, modseq, uid, encode_flags(new)) for uid, new in changed],
    )
    if unseen_delta:
        await tx.conn.execute(
            "UPDATE mailboxes SET n_unseen = n_unseen + $1 WHERE id = $2", unseen_delta, mailbox_id
        )
    tx.notify(mailbox_id, modseq)
    return [FlagUpdate(uid, modseq, new) for uid, new in changed]


# --------------------------------------------------------------------------- removing


async def remove_rows(tx: PgTx, mb: Mailbox, rows: Sequence[Any], *, release: bool) -> list[int]:
    """Delete message rows (uid, flags, size, blob_id) from a locked mailbox with EXPUNGED
    log rows, counters and quota; ``release`` drops the body references too."""
    if not rows:
        return []
    uids = [int(r[0]) for r in rows]
    modseq = await bump_modseq(tx.conn, mb.id)
    await tx.conn.execute(
        "DELETE FROM messages WHERE mailbox_id = $1 AND uid = ANY($2::bigint[])", mb.id, uids
    )
    await tx.conn.execute(
        "DELETE FROM changes WHERE mailbox_id = $1 AND uid = ANY($2::bigint[])", mb.id, uids
    )
    await tx.conn.executemany(
        "INSERT INTO changes (mailbox_id, modseq, uid, kind) VALUES ($1, $2, $3, 'expunged')",
        [(mb.id, modseq, uid) for uid in uids],
    )
    size = sum(int(r[2]) for r in rows)
    unseen = sum(1 for r in rows if SEEN not in decode_flags(r[1]))
    await tx.conn.execute(
        "UPDATE mailboxes SET n_exists = n_exists - $1, n_unseen = n_unseen - $2,"
        " size = size - $3 WHERE id = $4",
        len(rows),
        unseen,
        size,
        mb.id,
    )
    await tx.conn.execute("UPDATE accounts SET used = used - $1 WHERE id = $2", size, mb.account_id)
    if release:
        for sha, count in sorted(Counter(str(r[3]) for r in rows).items()):
            await tx.blobs.release(tx, sha, count)
    tx.notify(mb.id, modseq)
    return uids


async def expunge(tx: PgTx, mailbox_id: int, uids: Sequence[int] | None) -> list[int]:
    """RFC 9051 §6.4.3 EXPUNGE / RFC 4315 §2.1 UID EXPUNGE: \\Deleted messages go."""
    mb = await lock_for_mailbox(tx.conn, mailbox_id)
    sql = "SELECT uid, flags, size, blob_id FROM messages WHERE mailbox_id = $1"
    params: list[Any] = [mailbox_id]
    if uids is not None:
        sql += " AND uid = ANY($2::bigint[])"
        params.append(sorted({int(u) for u in uids}))
    rows = [
        r for r in await tx.conn.fetch(sql + " ORDER BY uid", *params) if DELETED in r[1].split()
    ]
    return await remove_rows(tx, mb, rows, release=True)


async def delete(tx: PgTx, mailbox_id: int, uids: Sequence[int]) -> list[int]:
    r"""Remove exactly ``uids`` whatever their flags (RFC 1939 §6 UPDATE: POP3's deletions
    are one transaction, never a \Deleted flag left behind by a crash)."""
    mb = await lock_for_mailbox(tx.conn, mailbox_id)
    rows = await tx.conn.fetch(
        "SELECT uid, flags, size, blob_id FROM messages"
        " WHERE mailbox_id = $1 AND uid = ANY($2::bigint[]) ORDER BY uid",
        mailbox_id,
        sorted({int(u) for u in uids}),
    )
    return await remove_rows(tx, mb, rows, release=True)


async def copy(
    tx: PgTx, src_id: int, uids: Sequence[int], dst_id: int, *, move: bool
) -> CopyResult:
    """RFC 9051 §6.4.7 COPY / RFC 6851 MOVE with RFC 4315 COPYUID pairs.

    Flags, internaldate and prefix are kept; destination UIDs are allocated in
    source-uid order under one new destination modseq.
    """
    owners = [await account_of(tx.conn, src_id), await account_of(tx.conn, dst_id)]
    rooms = await lock_accounts(tx.conn, owners)
    boxes = await lock_mailboxes(tx.conn, [src_id, dst_id])
    src, dst = boxes.get(src_id), boxes.get(dst_id)
    if src is None or not src.selectable:
        raise NotFound(f"no mailbox {src_id}")
    if dst is None or not dst.selectable:
        raise NotFound(f"no mailbox {dst_id}")
    rows = await tx.conn.fetch(
        "SELECT uid, flags, size, blob_id, internaldate, prefix FROM messages"
        " WHERE mailbox_id = $1 AND uid = ANY($2::bigint[]) ORDER BY uid",
        src_id,
        sorted({int(u) for u in uids}),
    )
    if not rows:
        return CopyResult(uidvalidity=dst.uidvalidity)
    total = sum(int(r["size"]) for r in rows)
    if not (move and src.account_id == dst.account_id):
        check_room(
            rooms.get(dst.account_id), dst.account_id, total, max(int(r["size"]) for r in rows)
        )
    n = len(rows)
    unseen = sum(1 for r in rows if SEEN not in decode_flags(r["flags"]))
    head = await tx.conn.fetchrow(
        "UPDATE mailboxes SET uidnext = uidnext + $1, highestmodseq = highestmodseq + 1,"
        " n_exists = n_exists + $1, n_unseen = n_unseen + $2, size = size + $3"
        " WHERE id = $4 RETURNING uidnext - $1 AS first, highestmodseq",
        n,
        unseen,
        total,
        dst_id,
    )
    first_uid, modseq = int(head["first"]), int(head["highestmodseq"])
    pairs = tuple((int(r["uid"]), first_uid + i) for i, r in enumerate(rows))
    await tx.conn.executemany(
        "INSERT INTO messages (mailbox_id, uid, modseq, flags, internaldate, size, blob_id,"
        " prefix) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [
            (
                dst_id,
                new_uid,
                modseq,
                r["flags"],
                r["internaldate"],
                r["size"],
                r["blob_id"],
                r["prefix"],
            )
            for (_, new_uid), r in zip(pairs, rows, strict=True)
        ],
    )
    await tx.conn.executemany(
        "INSERT INTO changes (mailbox_id, modseq, uid, kind, flags)"
        " VALUES ($1, $2, $3, 'added', $4)",
        [
            (dst_id, modseq, new_uid, r["flags"])
            for (_, new_uid), r in zip(pairs, rows, strict=True)
        ],
    )
    await tx.conn.execute(
        "UPDATE accounts SET used = used + $1 WHERE id = $2", total, dst.account_id
    )
    for sha, count in sorted(Counter(str(r["blob_id"]) for r in rows).items()):
        await tx.blobs.add_refs(tx, sha, count)
    tx.notify(dst_id, modseq)
    if move:
        await remove_rows(tx, src, [tuple(r)[:4] for r in rows], release=True)
    return CopyResult(uidvalidity=dst.uidvalidity, pairs=pairs)
