"""Mailbox write jobs for the SQLite store: create, delete, rename, subscribe.

RFC 3501 §6.3.3-§6.3.7 / RFC 9051 §6.3.4-§6.3.8. Names are normalised by
``correo.store.names``; UIDVALIDITY values come from a database-wide counter so a mailbox
deleted and created again never reuses one (RFC 3501 §2.3.1.1).
"""

from __future__ import annotations

import time

from correo.store import names
from correo.store.base import AlreadyExists, InvalidName, Mailbox, NotFound
from correo.store.sqlite_messages import copy
from correo.store.sqlite_rows import (
    MAILBOX_COLUMNS,
    bump_modseq,
    get_mailbox_by_id,
    mailbox,
    next_id,
    next_uidvalidity,
    release_blob,
)
from correo.store.sqlite_writer import WriteTx

DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)
"""Created with every account, with their RFC 6154 special-use attributes, subscribed."""


def find(tx: WriteTx, account_id: int, name: str) -> Mailbox | None:
    row = tx.conn.execute(
        f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = ? AND name = ?",
        (account_id, name),
    ).fetchone()
    return mailbox(row) if row else None


def _has_children(tx: WriteTx, account_id: int, name: str) -> bool:
    prefix = name + names.SEPARATOR
    row = tx.conn.execute(
        "SELECT 1 FROM mailboxes WHERE account_id = ? AND substr(name, 1, ?) = ? LIMIT 1",
        (account_id, len(prefix), prefix),
    ).fetchone()
    return row is not None


def _require_account(tx: WriteTx, account_id: int) -> None:
    if tx.conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
        raise NotFound(f"no account {account_id}")


def _insert(tx: WriteTx, account_id: int, name: str, special_use: str | None) -> Mailbox:
    uidvalidity = next_uidvalidity(tx.conn, time.time())
    row = tx.conn.execute(
        "INSERT INTO mailboxes (id, account_id, name, uidvalidity, special_use)"
        f" VALUES (?, ?, ?, ?, ?) RETURNING {MAILBOX_COLUMNS}",
        (next_id(tx.conn, "mailboxes"), account_id, name, uidvalidity, special_use),
    ).fetchone()
    return mailbox(row)


def _ensure_parents(tx: WriteTx, account_id: int, name: str) -> None:
    """RFC 3501 §6.3.3: create the superior names a CREATE (or RENAME) needs."""
    for parent in names.parents(name):
        if find(tx, account_id, parent) is None:
            _insert(tx, account_id, parent, None)


def create(tx: WriteTx, account_id: int, name: str, special_use: str | None) -> Mailbox:
    """Create ``name`` (and missing parents); a \\Noselect placeholder is revived with a
    new UIDVALIDITY; AlreadyExists when a selectable mailbox has the name."""
    name = names.normalize(name)
    _require_account(tx, account_id)
    existing = find(tx, account_id, name)
    if existing is not None:
        if existing.selectable:
            raise AlreadyExists(f"mailbox {name!r} exists")
        tx.conn.execute(
            "UPDATE mailboxes SET selectable = 1, uidvalidity = ?, uidnext = 1,"
            " highestmodseq = 1, first_recent_uid = 1, special_use = ? WHERE id = ?",
            (next_uidvalidity(tx.conn, time.time()), special_use, existing.id),
        )
        revived = get_mailbox_by_id(tx.conn, existing.id)
        assert revived is not None
        return revived
    _ensure_parents(tx, account_id, name)
    return _insert(tx, account_id, name, special_use)


def clear(tx: WriteTx, mb: Mailbox) -> None:
    """Remove every message of a mailbox (releasing bodies and quota) and its change log."""
    refs = tx.conn.execute(
        "SELECT blob_id, COUNT(*), SUM(size) FROM messages WHERE mailbox_id = ? GROUP BY blob_id",
        (mb.id,),
    ).fetchall()
    tx.conn.execute("DELETE FROM messages WHERE mailbox_id = ?", (mb.id,))
    total = 0
    for sha, count, size in refs:
        release_blob(tx, sha, int(count))
        total += int(size)
    tx.conn.execute("DELETE FROM changes WHERE mailbox_id = ?", (mb.id,))
    tx.conn.execute("UPDATE accounts SET used = used - ? WHERE id = ?", (total, mb.account_id))
    tx.conn.execute(
        "UPDATE mailboxes SET n_exists = 0, n_unseen = 0, size = 0 WHERE id = ?", (mb.id,)
    )


def _drop(tx: WriteTx, mb: Mailbox) -> None:
    """Remove the mailbox row after telling its watchers (they find it gone)."""
    tx.notify(mb.id, bump_modseq(tx.conn, mb.id))
    clear(tx, mb)
    tx.conn.execute("DELETE FROM mailboxes WHERE id = ?", (mb.id,))


def delete(tx: WriteTx, account_id: int, name: str) -> None:
    """RFC 3501 §6.3.4 DELETE: messages go; with children the name stays as \\Noselect.

    INBOX cannot be deleted; neither can a \\Noselect name that still has children
    (both :class:`InvalidName`). Childless \\Noselect parents left behind are removed.
    """
    name = names.normalize(name)
    if names.is_inbox(name):
        raise InvalidName("INBOX cannot be deleted")
    mb = find(tx, account_id, name)
    if mb is None:
        raise NotFound(f"no mailbox {name!r}")
    if _has_children(tx, account_id, name):
        if not mb.selectable:
            raise InvalidName(f"{name!r} is \\Noselect and has children")
        tx.notify(mb.id, bump_modseq(tx.conn, mb.id))
        clear(tx, mb)
        tx.conn.execute("UPDATE mailboxes SET selectable = 0 WHERE id = ?", (mb.id,))
        return
    _drop(tx, mb)
    for parent in reversed(list(names.parents(name))):
        up = find(tx, account_id, parent)
        if up is None or up.selectable or _has_children(tx, account_id, parent):
            break
        _drop(tx, up)


def rename(tx: WriteTx, account_id: int, old: str, new: str) -> None:
    """RFC 3501 §6.3.5 RENAME: children move with it; renaming INBOX moves its messages
    to a new mailbox and leaves INBOX (and its children) in place, empty. Subscriptions
    are not changed (RFC 9051 §6.3.6)."""
    old = names.normalize(old)
    new = names.normalize(new)
    src = find(tx, account_id, old)
    if src is None:
        raise NotFound(f"no mailbox {old!r}")
    if find(tx, account_id, new) is not None or _has_children(tx, account_id, new):
        raise AlreadyExists(f"mailbox {new!r} exists")
    if names.is_inbox(new):
        raise AlreadyExists("INBOX exists")
    if names.is_descendant(new, old) and not names.is_inbox(old):
        raise InvalidName("cannot rename a mailbox into itself")
    if names.is_inbox(old):
        _ensure_parents(tx, account_id, new)
        dst = _insert(tx, account_id, new, None)
        uids = [
            r[0]
            for r in tx.conn.execute("SELECT uid FROM messages WHERE mailbox_id = ?", (src.id,))
        ]
        if uids:
            copy(tx, src.id, uids, dst.id, move=True)
        return
    _ensure_parents(tx, account_id, new)
    prefix = old + names.SEPARATOR
    moved = tx.conn.execute(
        "UPDATE mailboxes SET name = ? || substr(name, ?) WHERE account_id = ?"
        " AND (name = ? OR substr(name, 1, ?) = ?) RETURNING id",
        (new, len(old) + 1, account_id, old, len(prefix), prefix),
    ).fetchall()
    for (mailbox_id,) in moved:
        tx.notify(int(mailbox_id), bump_modseq(tx.conn, int(mailbox_id)))


def set_subscribed(tx: WriteTx, account_id: int, name: str, subscribed: bool) -> None:
    """RFC 3501 §6.3.6/§6.3.7: names only; a subscription may outlive its mailbox."""
    name = names.normalize(name)
    _require_account(tx, account_id)
    if subscribed:
        tx.conn.execute(
            "INSERT OR IGNORE INTO subscriptions (account_id, name) VALUES (?, ?)",
            (account_id, name),
        )
    else:
        tx.conn.execute(
            "DELETE FROM subscriptions WHERE account_id = ? AND name = ?", (account_id, name)
        )


def create_defaults(tx: WriteTx, account_id: int) -> None:
    for name, special_use in DEFAULT_MAILBOXES:
        _insert(tx, account_id, name, special_use)
        set_subscribed(tx, account_id, name, True)


def remove_all(tx: WriteTx, account_id: int) -> None:
    """Every mailbox, message and subscription of an account (for account removal)."""
    for row in tx.conn.execute(
        f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = ?", (account_id,)
    ).fetchall():
        _drop(tx, mailbox(row))
    tx.conn.execute("DELETE FROM subscriptions WHERE account_id = ?", (account_id,))
    tx.conn.execute("DELETE FROM maildrop_locks WHERE account_id = ?", (account_id,))
