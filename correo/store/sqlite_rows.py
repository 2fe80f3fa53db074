"""Row ↔ record helpers shared by the SQLite modules (flags text, mailbox rows, refcounts)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from correo.store.base import (
    MAX_FLAGS,
    Account,
    Alias,
    Domain,
    Mailbox,
    MessageInfo,
    NotFound,
    TooManyFlags,
)
from correo.store.sqlite_writer import WriteTx

SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
"""RFC 9051 §2.3.2 system flags, spelled canonically; ``\\Recent`` is session state and is
never stored."""
SEEN = "\\Seen"
DELETED = "\\Deleted"

MAILBOX_COLUMNS = (
    "id, account_id, name, uidvalidity, uidnext, highestmodseq, special_use, selectable,"
    " n_exists, n_unseen, size, first_recent_uid"
)
ACCOUNT_COLUMNS = "id, address, password_hash, quota, used, disabled, created"


def clean_flags(flags: Iterable[str]) -> frozenset[str]:
    """System flags in their canonical case; ``\\Recent`` and empty strings dropped."""
    out: set[str] = set()
    for flag in flags:
        if not flag:
            continue
        if flag.startswith("\\"):
            lower = flag.lower()
            if lower == "\\recent":
                continue
            flag = SYSTEM_FLAGS.get(lower, flag)
        out.add(flag)
    if len(out) > MAX_FLAGS:
        raise TooManyFlags(f"a message may carry at most {MAX_FLAGS} flags and keywords")
    return frozenset(out)


def encode_flags(flags: frozenset[str]) -> str:
    return " ".join(sorted(flags))


def decode_flags(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


def uid_list(uids: Iterable[int]) -> str:
    """A JSON array for ``uid IN (SELECT value FROM json_each(?))`` (no variable limit)."""
    return json.dumps(sorted({int(u) for u in uids}))


def mailbox(row: Sequence[Any]) -> Mailbox:
    return Mailbox(
        id=row[0],
        account_id=row[1],
        name=row[2],
        uidvalidity=row[3],
        uidnext=row[4],
        highestmodseq=row[5],
        special_use=row[6],
        selectable=bool(row[7]),
        exists=row[8],
        unseen=row[9],
        size=row[10],
        first_recent_uid=row[11],
    )


def account(row: Sequence[Any]) -> Account:
    return Account(
        id=row[0],
        address=row[1],
        password_hash=row[2],
        quota=row[3],
        used=row[4],
        disabled=bool(row[5]),
        created=row[6],
    )


def domain(row: Sequence[Any]) -> Domain:
    return Domain(name=row[0], created=row[1])


def alias(row: Sequence[Any]) -> Alias:
    return Alias(source=row[0], targets=tuple(json.loads(row[1])))


def info(row: Sequence[Any]) -> MessageInfo:
    return MessageInfo(
        uid=row[0], modseq=row[1], flags=decode_flags(row[2]), internaldate=row[3], size=row[4]
    )


def get_mailbox_by_id(conn: sqlite3.Connection, mailbox_id: int) -> Mailbox | None:
    row = conn.execute(f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = ?", (mailbox_id,))
    found = row.fetchone()
    return mailbox(found) if found else None


def selectable_mailbox(conn: sqlite3.Connection, mailbox_id: int) -> Mailbox:
    """The mailbox, or NotFound when missing or \\Noselect."""
    mb = get_mailbox_by_id(conn, mailbox_id)
    if mb is None or not mb.selectable:
        raise NotFound(f"no mailbox {mailbox_id}")
    return mb


def bump_modseq(conn: sqlite3.Connection, mailbox_id: int) -> int:
    """Next MODSEQ of the mailbox (RFC 7162 §3.1.1), written to ``highestmodseq``."""
    row = conn.execute(
        "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ?"
        " RETURNING highestmodseq",
        (mailbox_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no mailbox {mailbox_id}")
    return int(row[0])


def next_id(conn: sqlite3.Connection, table: str) -> int:
    """A row id never used before in ``table`` ("accounts" or "mailboxes").

    SQLite hands out max(rowid) + 1 for an ``INTEGER PRIMARY KEY`` without AUTOINCREMENT,
    so deleting the newest account or mailbox would let the next one take its id, and a
    session still holding the old id would reach the new owner's mail. The last id is
    remembered in ``counters`` instead (and never below the table's current maximum,
    e.g. after ``correo store copy`` inserted explicit ids)."""
    name = f"{table}.id"
    row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    top = conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
    value = max(int(row[0]) if row else 0, int(top)) + 1
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?)"
        " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        (name, value),
    )
    return value


def next_uidvalidity(conn: sqlite3.Connection, now: float) -> int:
    """A UIDVALIDITY never handed out before in this database (RFC 3501 §2.3.1.1): the
    later of the clock and the last value + 1, remembered in ``counters``."""
    row = conn.execute("SELECT value FROM counters WHERE name = 'uidvalidity'").fetchone()
    last = int(row[0]) if row else 0
    value = max(last + 1, int(now))
    if value >= 2**32:
        raise OverflowError("UIDVALIDITY space exhausted")
    conn.execute(
        "INSERT INTO counters (name, value) VALUES ('uidvalidity', ?)"
        " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        (value,),
    )
    return value


# ``typeof(data) = 'null'`` rather than ``data IS NULL``: SQLite 3.40 answers 0 for the
# latter in the RETURNING clause of an upsert/update on a WITHOUT ROWID table.


def add_blob_ref(
    tx: WriteTx, sha: str, data: bytes, meta: bytes, refs: int, inline_threshold: int
) -> None:
    """Count ``refs`` more references to a body, inserting its row if new.

    A new row for a body kept as a file makes sure the file is there (written by the
    caller before the job, or now if a concurrent expunge removed it meanwhile). An
    inline body never needs that, so its upsert asks nothing back: RETURNING costs an
    ephemeral table per statement, a third of the upsert's CPU for a 4 KB body.
    """
    if len(data) <= inline_threshold:
        tx.conn.execute(
            "INSERT INTO blobs (sha, size, refcount, data, meta) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(sha) DO UPDATE SET refcount = refcount + excluded.refcount",
            (sha, len(data), refs, data, meta),
        )
        return
    row = tx.conn.execute(
        "INSERT INTO blobs (sha, size, refcount, data, meta) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(sha) DO UPDATE SET refcount = refcount + excluded.refcount"
        " RETURNING refcount, typeof(data) = 'null'",
        (sha, len(data), refs, None, meta),
    ).fetchone()
    if row[0] == refs and row[1]:
        tx.blobs.write(sha, data)


def add_refs(tx: WriteTx, sha: str, refs: int) -> None:
    """More references to a body that already has a row (copy)."""
    tx.conn.execute("UPDATE blobs SET refcount = refcount + ? WHERE sha = ?", (refs, sha))


def release_blob(tx: WriteTx, sha: str, refs: int = 1) -> None:
    """Drop references; at zero the row goes and its file is removed after commit."""
    row = tx.conn.execute(
        "UPDATE blobs SET refcount = refcount - ? WHERE sha = ?"
        " RETURNING refcount, typeof(data) = 'null'",
        (refs, sha),
    ).fetchone()
    if row is not None and row[0] <= 0:
        tx.conn.execute("DELETE FROM blobs WHERE sha = ?", (sha,))
        if row[1]:
            tx.drop_file(sha)


def release_queue_blob(tx: WriteTx, queue_id: int) -> None:
    """Delete a queue message and its recipients, releasing its body reference.

    For the queue runner once every recipient reached a final state.
    """
    row = tx.conn.execute("SELECT blob_id FROM queue_messages WHERE id = ?", (queue_id,)).fetchone()
    if row is None:
        return
    tx.conn.execute("DELETE FROM queue_recipients WHERE queue_id = ?", (queue_id,))
    tx.conn.execute("DELETE FROM queue_messages WHERE id = ?", (queue_id,))
    release_blob(tx, row[0])
