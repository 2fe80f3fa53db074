"""Message write jobs for the SQLite store: deliver, append, flags, copy/move, expunge.

Each function runs on the writer thread inside the group-commit transaction
(``sqlite_writer``); it raises a :class:`StoreError` to have its own SAVEPOINT rolled
back. Every change bumps the mailbox MODSEQ and writes the change log (RFC 7162 §3.1).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

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
    OverQuota,
    QueueRequest,
    TooManyFlags,
)
from correo.store.sqlite_rows import (
    DELETED,
    SEEN,
    add_blob_ref,
    add_refs,
    bump_modseq,
    clean_flags,
    decode_flags,
    encode_flags,
    release_blob,
    selectable_mailbox,
    uid_list,
)
from correo.store.sqlite_writer import WriteTx

log = logging.getLogger(__name__)


def _quota_room(tx: WriteTx, account_id: int) -> tuple[int, int] | None:
    """(quota, used) of the account, or None when it does not exist."""
    row = tx.conn.execute("SELECT quota, used FROM accounts WHERE id = ?", (account_id,))
    found = row.fetchone()
    return (int(found[0]), int(found[1])) if found else None


def check_quota(tx: WriteTx, account_id: int, extra: int, single: int) -> None:
    """Raise :class:`OverQuota` when ``extra`` more bytes do not fit (quota 0 = none)."""
    room = _quota_room(tx, account_id)
    if room is None:
        raise NotFound(f"no account {account_id}")
    quota, used = room
    if quota and used + extra > quota:
        raise OverQuota(message_alone_exceeds=single > quota)


_Head = tuple[int, int]
"""A mailbox's (uidnext, highestmodseq) as read inside the writing transaction."""

_DELIVERY_MAILBOX = (
    "COALESCE((SELECT id FROM mailboxes WHERE account_id = {acct} AND name = ?"
    " AND selectable = 1), (SELECT id FROM mailboxes WHERE account_id = {acct}"
    " AND name = ? AND selectable = 1))"
)
"""The named mailbox, or INBOX when that one is missing or \\Noselect."""

_TARGET_SQL = (
    "SELECT a.quota, a.used, m.id, m.uidnext, m.highestmodseq FROM accounts AS a"
    f" LEFT JOIN mailboxes AS m ON m.id = {_DELIVERY_MAILBOX.format(acct='a.id')}"
    " WHERE a.id = ?"
)
"""Quota, usage and delivery mailbox of an account in one statement (one GIL release and
one VM run instead of two)."""

_MAILBOX_SQL = (
    "SELECT id, uidnext, highestmodseq FROM mailboxes"
    f" WHERE id = {_DELIVERY_MAILBOX.format(acct='?1')}"
)
"""The delivery mailbox alone; parameters: account id (``?1``), wanted name, INBOX."""


def _wanted(name: str) -> str:
    """The normalised delivery mailbox name; INBOX for a name that is not valid."""
    if name == names.INBOX:  # nearly every delivery: already normal
        return name
    try:
        return names.normalize(name)
    except InvalidName:
        return names.INBOX


def _insert(
    tx: WriteTx,
    mailbox_id: int,
    account_id: int,
    head: _Head,
    sha: str,
    prefix: bytes,
    flags: frozenset[str],
    internaldate: float,
    size: int,
) -> tuple[int, int]:
    """Link one message into a mailbox whose (uidnext, highestmodseq) is ``head``; returns
    (uid, modseq): the mailbox's UIDNEXT, and its MODSEQ + 1 (RFC 7162 §3.1.1).
    Counters, change log and the account's ``used`` are updated; the blob reference is
    the caller's business.

    ``head`` was read earlier in the same write transaction; the UPDATE re-checks it
    rather than reading it back with RETURNING (cheaper), so a stale head fails loudly
    instead of reusing a UID."""
    uid, modseq = head[0], head[1] + 1
    unseen = 0 if SEEN in flags else 1
    cur = tx.conn.execute(
        "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1,"
        " n_exists = n_exists + 1, n_unseen = n_unseen + ?, size = size + ?"
        " WHERE id = ? AND uidnext = ? AND highestmodseq = ?",
        (unseen, size, mailbox_id, uid, head[1]),
    )
    if cur.rowcount != 1:
        raise RuntimeError(f"mailbox {mailbox_id} changed under its own write transaction")
    text = encode_flags(flags)
    tx.conn.execute(
        "INSERT INTO messages (mailbox_id, uid, modseq, flags, internaldate, size, blob_id,"
        " prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (mailbox_id, uid, modseq, text, internaldate, size, sha, prefix),
    )
    tx.conn.execute(
        "INSERT INTO changes (mailbox_id, modseq, uid, kind, flags) VALUES (?, ?, ?, 'added', ?)",
        (mailbox_id, modseq, uid, text),
    )
    tx.conn.execute("UPDATE accounts SET used = used + ? WHERE id = ?", (size, account_id))
    tx.notify(mailbox_id, modseq)
    return uid, modseq


def queue_requests(
    queue: QueueRequest | Sequence[QueueRequest] | None,
) -> tuple[QueueRequest, ...]:
    """``Store.deliver``'s ``queue`` argument as the non-empty requests, in order."""
    if queue is None:
        return ()
    requests = (queue,) if isinstance(queue, QueueRequest) else tuple(queue)
    return tuple(r for r in requests if r.recipients)


def deliver(
    tx: WriteTx,
    message: IncomingMessage,
    local: Sequence[LocalDelivery],
    queue: Sequence[QueueRequest],
    inline_threshold: int,
) -> DeliveryResult:
    """Store once, link into each recipient's mailbox, queue remote recipients; all in
    the caller's transaction. Over-quota accounts are skipped (RFC 5321 §4.5.3.1.10 lets
    the SMTP layer answer 452 per recipient); accounts that vanished are logged and
    skipped. Each request of ``queue`` (see :func:`queue_requests`) with recipients
    becomes one queue entry holding one body reference."""
    now = time.time()
    body_size = len(message.data)
    delivered: list[tuple[int, int, int]] = []
    over: list[int] = []
    planned: list[tuple[LocalDelivery, int, int]] = []
    used: dict[int, tuple[int, int]] = {}
    heads: dict[int, _Head] = {}
    conn = tx.conn
    for target in local:
        size = len(target.prefix) + body_size
        wanted = _wanted(target.mailbox)
        room = used.get(target.account_id)
        if room is None:
            row = conn.execute(_TARGET_SQL, (wanted, names.INBOX, target.account_id)).fetchone()
            if row is None:
                log.warning("deliver: account %d no longer exists; skipped", target.account_id)
                continue
            room = (int(row[0]), int(row[1]))
            box = row[2:]
        else:  # a second target for the account: its quota is known, look up the mailbox
            box = conn.execute(_MAILBOX_SQL, (target.account_id, wanted, names.INBOX)).fetchone()
        quota, current = room
        if quota and current + size > quota:
            if target.account_id not in over:
                over.append(target.account_id)
            continue
        if box is None or box[0] is None:
            log.warning("deliver: account %d has no INBOX; skipped", target.account_id)
            continue
        mailbox_id = int(box[0])
        heads.setdefault(mailbox_id, (int(box[1]), int(box[2])))
        used[target.account_id] = (quota, current + size)
        planned.append((target, mailbox_id, size))
    requests = [r for r in queue if r.recipients]
    refs = len(planned) + len(requests)
    if refs:
        add_blob_ref(tx, message.sha256, message.data, message.meta, refs, inline_threshold)
    elif body_size > inline_threshold:
        tx.drop_file(message.sha256)  # written before the job; gone unless referenced
    for target, mailbox_id, size in planned:
        flags = clean_flags(target.flags)
        head = heads[mailbox_id]
        uid, modseq = _insert(
            tx,
            mailbox_id,
            target.account_id,
            head,
            message.sha256,
            target.prefix,
            flags,
            now,
            size,
        )
        heads[mailbox_id] = (uid + 1, modseq)
        delivered.append((target.account_id, mailbox_id, uid))
    queue_ids = tuple(_enqueue(tx, message, request, now) for request in requests)
    return DeliveryResult(
        delivered=tuple(delivered),
        over_quota=tuple(over),
        queue_id=queue_ids[0] if queue_ids else None,
        queue_ids=queue_ids,
    )


def _enqueue(tx: WriteTx, message: IncomingMessage, queue: QueueRequest, now: float) -> int:
    """Rows for the queue runner: one ``queue_messages`` holding a body reference, one
    ``queue_recipients`` per remote recipient, due now (RFC 5321 §4.5.4.1)."""
    row = tx.conn.execute(
        "INSERT INTO queue_messages (blob_id, sender, envid, ret, smtputf8, body_8bit, prefix,"
        " size, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            message.sha256,
            queue.sender,
            queue.envid,
            queue.ret,
            int(queue.smtputf8),
            int(queue.body_8bit),
            queue.prefix,
            len(queue.prefix) + len(message.data),
            now,
        ),
    ).fetchone()
    queue_id = int(row[0])
    tx.conn.executemany(
        "INSERT INTO queue_recipients (queue_id, address, domain, orcpt, notify, next_attempt,"
        " updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
        recipient_rows(queue_id, queue, now),
    )
    return queue_id


def append(
    tx: WriteTx,
    mailbox_id: int,
    message: IncomingMessage,
    flags: frozenset[str],
    internaldate: float,
    inline_threshold: int,
) -> tuple[int, int]:
    """RFC 9051 §6.3.12 APPEND: (uidvalidity, uid), or OverQuota / NotFound."""
    mb = selectable_mailbox(tx.conn, mailbox_id)
    size = len(message.data)
    check_quota(tx, mb.account_id, size, size)
    add_blob_ref(tx, message.sha256, message.data, message.meta, 1, inline_threshold)
    head = (mb.uidnext, mb.highestmodseq)
    cleaned = clean_flags(flags)
    uid, _ = _insert(
        tx, mailbox_id, mb.account_id, head, message.sha256, b"", cleaned, internaldate, size
    )
    return mb.uidvalidity, uid


def apply_flags(mode: FlagMode, current: frozenset[str], flags: frozenset[str]) -> frozenset[str]:
    """RFC 9051 §6.4.6: FLAGS replaces, +FLAGS adds, -FLAGS removes (both backends)."""
    if mode is FlagMode.SET:
        return flags
    if mode is FlagMode.ADD:
        return current | flags
    return current - flags


def recipient_rows(
    queue_id: int, queue: QueueRequest, now: float
) -> list[tuple[int, str, str, str | None, str, float, float]]:
    """``queue_recipients`` rows of one queue request (both backends): queue id,
    address, domain, ORCPT, NOTIFY list, next attempt (now), updated."""
    return [
        (
            queue_id,
            r.address,
            r.address.rpartition("@")[2].lower(),
            r.orcpt,
            ",".join(sorted(r.notify)),
            now,
            now,
        )
        for r in queue.recipients
    ]


def set_flags(
    tx: WriteTx,
    mailbox_id: int,
    uids: Sequence[int],
    flags: frozenset[str],
    mode: FlagMode,
    unchanged_since: int | None,
) -> list[FlagUpdate]:
    """RFC 9051 §6.4.6 STORE; with ``unchanged_since`` (RFC 7162 §3.1.3) messages whose
    modseq is greater are left alone. Only changed messages get the new modseq."""
    selectable_mailbox(tx.conn, mailbox_id)
    wanted = clean_flags(flags)
    rows = tx.conn.execute(
        "SELECT uid, modseq, flags FROM messages WHERE mailbox_id = ?"
        " AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
        (mailbox_id, uid_list(uids)),
    ).fetchall()
    changed: list[tuple[int, frozenset[str], int]] = []
    unseen_delta = 0
    for uid, modseq, text in rows:
        if unchanged_since is not None and modseq > unchanged_since:
            continue
        old = decode_flags(text)
        new = apply_flags(mode, old, wanted)
        if len(new) > MAX_FLAGS:
            raise TooManyFlags(f"a message may carry at most {MAX_FLAGS} flags and keywords")
        if new != old:
            changed.append((uid, new, (SEEN in old) - (SEEN in new)))
            unseen_delta += (SEEN in old) - (SEEN in new)
    if not changed:
        return []
    modseq = bump_modseq(tx.conn, mailbox_id)
    tx.conn.executemany(
        "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
        [(encode_flags(new), modseq, mailbox_id, uid) for uid, new, _ in changed],
    )
    tx.conn.executemany(
        "DELETE FROM changes WHERE mailbox_id = ? AND uid = ? AND kind = 'flags'",
        [(mailbox_id, uid) for uid, _, _ in changed],
    )
    tx.conn.executemany(
        "INSERT INTO changes (mailbox_id, modseq, uid, kind, flags) VALUES (?, ?, ?, 'flags', ?)",
        [(mailbox_id, modseq, uid, encode_flags(new)) for uid, new, _ in changed],
    )
    if unseen_delta:
        tx.conn.execute(
            "UPDATE mailboxes SET n_unseen = n_unseen + ? WHERE id = ?", (unseen_delta, mailbox_id)
        )
    tx.notify(mailbox_id, modseq)
    return [FlagUpdate(uid, modseq, new) for uid, new, _ in changed]


def _remove(tx: WriteTx, mb: Mailbox, rows: list[Any], *, release: bool) -> list[int]:
    """Delete message rows (uid, flags, size, blob_id) from ``mb`` with EXPUNGED log rows,
    counters and quota; ``release`` drops the body references too."""
    if not rows:
        return []
    uids = [int(r[0]) for r in rows]
    modseq = bump_modseq(tx.conn, mb.id)
    pairs = [(mb.id, uid) for uid in uids]
    tx.conn.executemany("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", pairs)
    tx.conn.executemany("DELETE FROM changes WHERE mailbox_id = ? AND uid = ?", pairs)
    tx.conn.executemany(
        "INSERT INTO changes (mailbox_id, modseq, uid, kind) VALUES (?, ?, ?, 'expunged')",
        [(mb.id, modseq, uid) for uid in uids],
    )
    size = sum(int(r[2]) for r in rows)
    unseen = sum(1 for r in rows if SEEN not in decode_flags(r[1]))
    tx.conn.execute(
        "UPDATE mailboxes SET n_exists = n_exists - ?, n_unseen = n_unseen - ?, size = size - ?"
        " WHERE id = ?",
        (len(rows), unseen, size, mb.id),
    )
    tx.conn.execute("UPDATE accounts SET used = used - ? WHERE id = ?", (size, mb.account_id))
    if release:
        for sha, count in Counter(str(r[3]) for r in rows).items():
            release_blob(tx, sha, count)
    tx.notify(mb.id, modseq)
    return uids


def expunge(tx: WriteTx, mailbox_id: int, uids: Sequence[int] | None) -> list[int]:
    """RFC 9051 §6.4.3 EXPUNGE / RFC 4315 §2.1 UID EXPUNGE: \\Deleted messages go."""
    mb = selectable_mailbox(tx.conn, mailbox_id)
    sql = "SELECT uid, flags, size, blob_id FROM messages WHERE mailbox_id = ?"
    params: tuple[Any, ...] = (mailbox_id,)
    if uids is not None:
        sql += " AND uid IN (SELECT value FROM json_each(?))"
        params += (uid_list(uids),)
    rows = [r for r in tx.conn.execute(sql + " ORDER BY uid", params) if DELETED in r[1].split()]
    return _remove(tx, mb, rows, release=True)


def delete(tx: WriteTx, mailbox_id: int, uids: Sequence[int]) -> list[int]:
    r"""Remove exactly ``uids`` whatever their flags (RFC 1939 §6 UPDATE: POP3's deletions
    are one transaction, never a \Deleted flag left behind by a crash)."""
    mb = selectable_mailbox(tx.conn, mailbox_id)
    rows = tx.conn.execute(
        "SELECT uid, flags, size, blob_id FROM messages"
        " WHERE mailbox_id = ? AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
        (mailbox_id, uid_list(uids)),
    ).fetchall()
    return _remove(tx, mb, rows, release=True)


def copy(tx: WriteTx, src_id: int, uids: Sequence[int], dst_id: int, *, move: bool) -> CopyResult:
    """RFC 9051 §6.4.7 COPY / RFC 6851 MOVE with RFC 4315 COPYUID pairs.

    Flags, internaldate and prefix are kept; destination UIDs are allocated in
    source-uid order under one new destination modseq.
    """
    src = selectable_mailbox(tx.conn, src_id)
    dst = selectable_mailbox(tx.conn, dst_id)
    rows = tx.conn.execute(
        "SELECT uid, flags, size, blob_id, internaldate, prefix FROM messages"
        " WHERE mailbox_id = ? AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
        (src_id, uid_list(uids)),
    ).fetchall()
    if not rows:
        return CopyResult(uidvalidity=dst.uidvalidity)
    total = sum(int(r[2]) for r in rows)
    if not (move and src.account_id == dst.account_id):
        check_quota(tx, dst.account_id, total, max(int(r[2]) for r in rows))
    n = len(rows)
    unseen = sum(1 for r in rows if SEEN not in decode_flags(r[1]))
    head = tx.conn.execute(
        "UPDATE mailboxes SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1,"
        " n_exists = n_exists + ?, n_unseen = n_unseen + ?, size = size + ?"
        " WHERE id = ? RETURNING uidnext - ?, highestmodseq",
        (n, n, unseen, total, dst_id, n),
    ).fetchone()
    first_uid, modseq = int(head[0]), int(head[1])
    pairs = tuple((int(r[0]), first_uid + i) for i, r in enumerate(rows))
    tx.conn.executemany(
        "INSERT INTO messages (mailbox_id, uid, modseq, flags, internaldate, size, blob_id,"
        " prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (dst_id, new_uid, modseq, r[1], r[4], r[2], r[3], r[5])
            for (_, new_uid), r in zip(pairs, rows, strict=True)
        ],
    )
    tx.conn.executemany(
        "INSERT INTO changes (mailbox_id, modseq, uid, kind, flags) VALUES (?, ?, ?, 'added', ?)",
        [(dst_id, modseq, new_uid, r[1]) for (_, new_uid), r in zip(pairs, rows, strict=True)],
    )
    tx.conn.execute("UPDATE accounts SET used = used + ? WHERE id = ?", (total, dst.account_id))
    for sha, count in Counter(str(r[3]) for r in rows).items():
        add_refs(tx, sha, count)
    tx.notify(dst_id, modseq)
    if move:
        _remove(tx, src, [r[:4] for r in rows], release=True)
    return CopyResult(uidvalidity=dst.uidvalidity, pairs=pairs)


def claim_recent(tx: WriteTx, mailbox_id: int) -> int:
    """RFC 3501 §2.3.2 \\Recent: the first session to look claims the new UIDs."""
    row = tx.conn.execute(
        "SELECT first_recent_uid FROM mailboxes WHERE id = ?", (mailbox_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no mailbox {mailbox_id}")
    tx.conn.execute("UPDATE mailboxes SET first_recent_uid = uidnext WHERE id = ?", (mailbox_id,))
    return int(row[0])


def lock_maildrop(tx: WriteTx, account_id: int, owner: str, ttl: float) -> bool:
    """RFC 1939 §8 exclusive maildrop: take (or refresh our own, or an expired) lock."""
    now = time.time()
    row = tx.conn.execute(
        "INSERT INTO maildrop_locks (account_id, owner, expires) VALUES (?, ?, ?)"
        " ON CONFLICT(account_id) DO UPDATE SET owner = excluded.owner,"
        " expires = excluded.expires WHERE maildrop_locks.owner = excluded.owner"
        " OR maildrop_locks.expires <= ? RETURNING owner",
        (account_id, owner, now + ttl, now),
    ).fetchone()
    return row is not None and row[0] == owner


def unlock_maildrop(tx: WriteTx, account_id: int, owner: str) -> None:
    tx.conn.execute(
        "DELETE FROM maildrop_locks WHERE account_id = ? AND owner = ?", (account_id, owner)
    )
