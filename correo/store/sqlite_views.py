"""IMAP read paths of the SQLite store: the persisted compact view SELECT answers from,
and batched reads for FETCH and SEARCH (``ImapFastPaths`` in ``base.py``).

SELECT (RFC 3501 §6.3.1) needs every UID, the number of unseen messages, the first
unseen one, and the keywords in use. Loading 100,000 message rows for that costs tens
of milliseconds; instead each mailbox has one ``mailbox_views`` row: the UIDs and the
unseen UIDs as packed little-endian ``uint32`` arrays, the keywords, and the MODSEQ they
are current as of. A SELECT reads that row and folds in the change log since its MODSEQ
(``changes``: per UID its ADDED row, its latest FLAGS row, or only EXPUNGED — DESIGN.md
principle 5), which the writer keeps anyway, so no write path has to maintain the view.
When the folded-in tail grows past :data:`PERSIST_AFTER` changes, or the row is missing
or disagrees with the mailbox's counters (``n_exists``, ``n_unseen``), the view is
rebuilt or re-saved through the writer.

The table (migration ``0003_mailbox_views.sql``) is a cache of data the ``messages``
table holds, safe to empty at any time. It relies on the change
log keeping every row above a saved view's MODSEQ (true today: rows are only replaced
by later ones, or dropped with the mailbox); whoever adds pruning of old ``changes``
rows must delete the ``mailbox_views`` rows older than what it prunes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from array import array
from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from correo.store.base import (
    MailboxSnapshot,
    MessageRow,
    MessageText,
    NotFound,
    StoredMessage,
    StoreError,
)
from correo.store.sqlite_rows import decode_flags, uid_list
from correo.store.sqlite_writer import WriteTx

if TYPE_CHECKING:
    from correo.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

PERSIST_AFTER = 512
"""Re-save a mailbox's view once this many change-log rows are folded in at SELECT."""
REBUILD_AFTER = 50_000
"""Rebuild from the messages table rather than fold in more change-log rows than this."""
FEW = 256
"""Up to this many insertions/removals are done in place; more rebuild the array."""

_SEEN = "\\Seen"
_MESSAGE_COLUMNS = "m.uid, m.modseq, m.flags, m.internaldate, m.size, m.blob_id, m.prefix"

assert array("I").itemsize == 4, "packed UIDs are 32-bit"


def _pack(uids: array[int]) -> bytes:
    if sys.byteorder == "little":
        return uids.tobytes()
    swapped = array("I", uids)  # pragma: no cover - big-endian hosts
    swapped.byteswap()  # pragma: no cover
    return swapped.tobytes()  # pragma: no cover


def _unpack(data: bytes) -> array[int]:
    out = array("I")
    out.frombytes(data)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        out.byteswap()
    return out


@dataclass(slots=True)
class ViewState:
    """One mailbox's compact view as of ``modseq``."""

    uidvalidity: int
    modseq: int
    uids: array[int]
    unseen: array[int]
    """UIDs without \\Seen, ascending."""
    keywords: set[str]


@dataclass(frozen=True, slots=True)
class _MailboxRow:
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    exists: int
    unseen: int
    first_recent_uid: int


def _keywords(flags_text: str) -> Iterable[str]:
    return (f for f in flags_text.split() if f[0] != "\\")


def _is_seen(flags_text: str) -> bool:
    return _SEEN in flags_text.split()


def _int_array(csv: str | None) -> array[int]:
    """UIDs from ``group_concat`` (ascending: sorted, as the aggregate's order is not
    guaranteed by SQLite)."""
    if not csv:
        return array("I")
    return array("I", sorted(map(int, csv.split(","))))


def build(conn: sqlite3.Connection, mailbox_id: int, uidvalidity: int, modseq: int) -> ViewState:
    """The view from the messages table (three narrow aggregate scans)."""
    uids = conn.execute(
        "SELECT group_concat(uid) FROM messages WHERE mailbox_id = ?", (mailbox_id,)
    ).fetchone()[0]
    unseen = conn.execute(
        "SELECT group_concat(uid) FROM messages WHERE mailbox_id = ?"
        " AND instr(' ' || flags || ' ', ' \\Seen ') = 0",
        (mailbox_id,),
    ).fetchone()[0]
    keywords: set[str] = set()
    for (text,) in conn.execute(
        "SELECT DISTINCT flags FROM messages WHERE mailbox_id = ?", (mailbox_id,)
    ):
        keywords.update(_keywords(text))
    return ViewState(uidvalidity, modseq, _int_array(uids), _int_array(unseen), keywords)


def _load(conn: sqlite3.Connection, mailbox_id: int) -> ViewState | None:
    row = conn.execute(
        "SELECT uidvalidity, modseq, uids, unseen, keywords FROM mailbox_views"
        " WHERE mailbox_id = ?",
        (mailbox_id,),
    ).fetchone()
    if row is None:
        return None
    return ViewState(
        row[0], row[1], _unpack(row[2]), _unpack(row[3]), set(row[4].split()) if row[4] else set()
    )


def _remove(arr: array[int], gone: set[int]) -> array[int]:
    if not gone:
        return arr
    if len(gone) <= FEW:
        for u in gone:
            i = bisect_left(arr, u)
            if i < len(arr) and arr[i] == u:
                del arr[i]
        return arr
    return array("I", [u for u in arr if u not in gone])


def _insert(arr: array[int], new: list[int]) -> array[int]:
    if not new:
        return arr
    if len(new) <= FEW:
        for u in new:
            i = bisect_left(arr, u)
            if i == len(arr) or arr[i] != u:
                insort(arr, u)
        return arr
    return array("I", sorted(set(arr).union(new)))


def catch_up(
    state: ViewState, changes: Sequence[tuple[str, int, int, str]], highestmodseq: int
) -> ViewState:
    """Fold change-log rows ``(kind, uid, modseq, flags)`` (modseq order) into ``state``."""
    added: list[int] = []
    gone: set[int] = set()
    flags: dict[int, str] = {}
    last = state.uids[-1] if state.uids else 0
    for kind, uid, _modseq, text in changes:
        if kind == "added":
            if uid > last:
                added.append(uid)
                last = uid
            flags[uid] = text
        elif kind == "flags":
            flags[uid] = text
        elif kind == "expunged":
            gone.add(uid)
            flags.pop(uid, None)
    uids = _remove(state.uids, gone)
    uids.extend(added)
    now_seen: set[int] = set(gone)
    now_unseen: list[int] = []
    for uid, text in flags.items():
        if _is_seen(text):
            now_seen.add(uid)
        else:
            now_unseen.append(uid)
        state.keywords.update(_keywords(text))
    unseen = _insert(_remove(state.unseen, now_seen), sorted(now_unseen))
    return ViewState(state.uidvalidity, highestmodseq, uids, unseen, state.keywords)


def read_view(
    conn: sqlite3.Connection, mailbox_id: int
) -> tuple[MailboxSnapshot, ViewState | None]:
    """The SELECT snapshot, in the caller's read transaction; with the state to save
    when it should be persisted (rebuilt, or a long change-log tail folded in)."""
    found = conn.execute(
        "SELECT uidvalidity, uidnext, highestmodseq, n_exists, n_unseen, first_recent_uid"
        " FROM mailboxes WHERE id = ?",
        (mailbox_id,),
    ).fetchone()
    if found is None:
        raise NotFound(f"no mailbox {mailbox_id}")
    mb = _MailboxRow(*found)
    state = _load(conn, mailbox_id)
    save = False
    if state is not None and (
        state.uidvalidity != mb.uidvalidity or state.modseq > mb.highestmodseq
    ):
        state = None
    if state is not None and state.modseq < mb.highestmodseq:
        changes = conn.execute(
            "SELECT kind, uid, modseq, flags FROM changes WHERE mailbox_id = ? AND modseq > ?"
            " ORDER BY modseq, uid LIMIT ?",
            (mailbox_id, state.modseq, REBUILD_AFTER + 1),
        ).fetchall()
        if len(changes) > REBUILD_AFTER:
            state = None
        else:
            state = catch_up(state, changes, mb.highestmodseq)
            save = len(changes) >= PERSIST_AFTER
    if state is not None and (len(state.uids) != mb.exists or len(state.unseen) != mb.unseen):
        log.info("mailbox %d: saved view disagrees with the counters; rebuilding", mailbox_id)
        state = None
    if state is None:
        state = build(conn, mailbox_id, mb.uidvalidity, mb.highestmodseq)
        save = True
    first_unseen = bisect_left(state.uids, state.unseen[0]) + 1 if state.unseen else None
    snapshot = MailboxSnapshot(
        mailbox_id=mailbox_id,
        uidvalidity=mb.uidvalidity,
        uidnext=mb.uidnext,
        highestmodseq=mb.highestmodseq,
        uids=array("I", state.uids),
        unseen=len(state.unseen),
        first_unseen=first_unseen,
        first_recent_uid=mb.first_recent_uid,
        keywords=frozenset(state.keywords),
    )
    return snapshot, (state if save else None)


def save_view(tx: WriteTx, mailbox_id: int, state: ViewState) -> None:
    """Writer job: persist ``state`` unless the mailbox changed identity or a newer view
    is already saved; drop views of mailboxes that are gone."""
    row = tx.conn.execute("SELECT uidvalidity FROM mailboxes WHERE id = ?", (mailbox_id,))
    found = row.fetchone()
    if found is None or found[0] != state.uidvalidity:
        return
    tx.conn.execute(
        "INSERT INTO mailbox_views (mailbox_id, uidvalidity, modseq, uids, unseen, keywords)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (mailbox_id) DO UPDATE SET"
        " uidvalidity = excluded.uidvalidity, modseq = excluded.modseq, uids = excluded.uids,"
        " unseen = excluded.unseen, keywords = excluded.keywords"
        " WHERE excluded.modseq > mailbox_views.modseq"
        " OR excluded.uidvalidity != mailbox_views.uidvalidity",
        (
            mailbox_id,
            state.uidvalidity,
            state.modseq,
            _pack(state.uids),
            _pack(state.unseen),
            " ".join(sorted(state.keywords)),
        ),
    )
    tx.conn.execute("DELETE FROM mailbox_views WHERE mailbox_id NOT IN (SELECT id FROM mailboxes)")


async def mailbox_view(store: SqliteStore, mailbox_id: int) -> MailboxSnapshot:
    """``ImapFastPaths.mailbox_view`` for :class:`SqliteStore`."""
    snapshot, state = await store._thread(lambda c: read_view(c, mailbox_id))
    if state is not None:
        try:
            await store._write(lambda tx: save_view(tx, mailbox_id, state))
        except StoreError as exc:  # a cache: SELECT is answered all the same
            log.warning("mailbox %d: could not save its view: %s", mailbox_id, exc)
    return snapshot


# --------------------------------------------------------------------------- FETCH / SEARCH


def _stored(mailbox_id: int, r: Sequence[Any], meta: bytes) -> StoredMessage:
    return StoredMessage(
        mailbox_id=mailbox_id,
        uid=r[0],
        modseq=r[1],
        flags=decode_flags(r[2]),
        internaldate=r[3],
        size=r[4],
        blob_id=r[5],
        prefix=bytes(r[6]),
        meta=meta,
    )


def message_rows(
    conn: sqlite3.Connection, mailbox_id: int, uids: Sequence[int]
) -> list[MessageRow]:
    """Messages of ``uids`` in UID order, without metadata or prefix (no ``blobs`` join)."""
    sql = (
        "SELECT uid, modseq, flags, internaldate, size, blob_id FROM messages"
        " WHERE mailbox_id = ? AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid"
    )
    flag_sets: dict[str, frozenset[str]] = {}  # a few distinct flag sets: decode each once
    out: list[MessageRow] = []
    for uid, modseq, text, date, size, blob_id in conn.execute(sql, (mailbox_id, uid_list(uids))):
        flags = flag_sets.get(text)
        if flags is None:
            flags = flag_sets[text] = decode_flags(text)
        out.append(MessageRow(uid, modseq, flags, date, size, blob_id))
    return out


def blob_metas(conn: sqlite3.Connection, blob_ids: Sequence[str]) -> dict[str, bytes]:
    sql = "SELECT sha, meta FROM blobs WHERE sha IN (SELECT value FROM json_each(?))"
    return {r[0]: bytes(r[1]) for r in conn.execute(sql, (json.dumps(sorted(set(blob_ids))),))}


def message_texts(
    conn: sqlite3.Connection, mailbox_id: int, uids: Sequence[int]
) -> list[MessageText]:
    """Messages of ``uids`` with metadata and, for bodies held inline, their bytes.

    Two queries rather than a join: the rows, then each distinct body once (a body
    shared by many messages is read once; measured 2-3x faster than the join)."""
    sql = (
        f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE m.mailbox_id = ?"
        " AND m.uid IN (SELECT value FROM json_each(?)) ORDER BY m.uid"
    )
    rows = conn.execute(sql, (mailbox_id, uid_list(uids))).fetchall()
    shas = json.dumps(sorted({r[5] for r in rows}))
    bodies = {
        sha: (bytes(meta), None if data is None else bytes(data))
        for sha, meta, data in conn.execute(
            "SELECT sha, meta, data FROM blobs WHERE sha IN (SELECT value FROM json_each(?))",
            (shas,),
        )
    }
    out: list[MessageText] = []
    for r in rows:
        found = bodies.get(r[5])
        if found is None:  # the body row is missing: nothing to search
            continue
        msg = _stored(mailbox_id, r, found[0])
        out.append(MessageText(msg, None if found[1] is None else msg.prefix + found[1]))
    return out
