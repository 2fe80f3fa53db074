"""Directory and mailbox write jobs for the PostgreSQL store.

Domains, accounts and aliases (addresses lower-cased; an address is an account or an
alias, never both), and mailbox create/delete/rename/subscribe (RFC 3501 §6.3.3-§6.3.7,
RFC 9051 §6.3.4-§6.3.8) with the SQLite backend's rules (``sqlite_directory``,
``sqlite_mailboxes``). Every job that changes an account's mailboxes locks the account row
first (the lock order of ``postgres_messages``), so two nodes creating, renaming or
deleting an account's mailboxes at once take turns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from correo.store import names
from correo.store.base import Account, Alias, AlreadyExists, Domain, InvalidName, Mailbox, NotFound
from correo.store.postgres_blobs import PgTx
from correo.store.postgres_messages import copy
from correo.store.postgres_rows import (
    bump_modseq,
    get_mailbox_by_id,
    lock_accounts,
    next_uidvalidity,
)
from correo.store.sqlite_directory import normalize_address, normalize_domain
from correo.store.sqlite_mailboxes import DEFAULT_MAILBOXES
from correo.store.sqlite_rows import ACCOUNT_COLUMNS, MAILBOX_COLUMNS, account, mailbox

# --------------------------------------------------------------------------- directory


async def _require_domain(tx: PgTx, name: str, *, lock: bool = False) -> None:
    sql = "SELECT 1 FROM domains WHERE name = $1" + (" FOR SHARE" if lock else "")
    if await tx.conn.fetchval(sql, name) is None:
        raise NotFound(f"{name} is not a local domain")


async def _taken(tx: PgTx, address: str) -> bool:
    found = await tx.conn.fetchval(
        "SELECT 1 FROM accounts WHERE address = $1 UNION ALL"
        " SELECT 1 FROM aliases WHERE source = $1 LIMIT 1",
        address,
    )
    return found is not None


async def _lock_address(tx: PgTx, address: str) -> None:
    """Serialise creating ``address`` as an account or alias across nodes (the two
    tables cannot share a unique index)."""
    await tx.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))", address)


async def add_domain(tx: PgTx, name: str) -> Domain:
    name = normalize_domain(name)
    now = time.time()
    got = await tx.conn.fetchval(
        "INSERT INTO domains (name, created) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING name",
        name,
        now,
    )
    if got is None:
        raise AlreadyExists(f"domain {name} exists")
    return Domain(name=name, created=now)


async def remove_domain(tx: PgTx, name: str, force: bool) -> None:
    """Refuses (AlreadyExists) while accounts or aliases remain, unless ``force``, which
    removes them with all their mail."""
    name = normalize_domain(name)
    if await tx.conn.fetchval("SELECT 1 FROM domains WHERE name = $1 FOR UPDATE", name) is None:
        raise NotFound(f"{name} is not a local domain")
    ids = [
        int(r["id"]) for r in await tx.conn.fetch("SELECT id FROM accounts WHERE domain = $1", name)
    ]
    n_aliases = await tx.conn.fetchval("SELECT COUNT(*) FROM aliases WHERE domain = $1", name)
    if (ids or n_aliases) and not force:
        raise AlreadyExists(f"domain {name} still has accounts or aliases")
    await lock_accounts(tx.conn, ids)
    for account_id in sorted(ids):
        await _remove_account(tx, account_id)
    await tx.conn.execute("DELETE FROM aliases WHERE domain = $1", name)
    await tx.conn.execute("DELETE FROM domains WHERE name = $1", name)


async def add_account(tx: PgTx, address: str, password_hash: str, quota: int) -> Account:
    """New account with its default mailboxes (``sqlite_mailboxes.DEFAULT_MAILBOXES``)."""
    address = normalize_address(address)
    domain = address.rpartition("@")[2]
    await _require_domain(tx, domain, lock=True)
    await _lock_address(tx, address)
    if await _taken(tx, address):
        raise AlreadyExists(f"{address} exists")
    row = await tx.conn.fetchrow(
        "INSERT INTO accounts (address, domain, password_hash, quota, created)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {ACCOUNT_COLUMNS}",
        address,
        domain,
        password_hash,
        max(int(quota), 0),
        time.time(),
    )
    created = account(row)
    for name, special_use in DEFAULT_MAILBOXES:
        await _insert(tx, created.id, name, special_use)
        await set_subscribed(tx, created.id, name, True)
    return created


async def _account_id(tx: PgTx, address: str, *, lock: bool = True) -> int:
    sql = "SELECT id FROM accounts WHERE address = $1" + (" FOR UPDATE" if lock else "")
    found = await tx.conn.fetchval(sql, normalize_address(address))
    if found is None:
        raise NotFound(f"no account {address}")
    return int(found)


async def _remove_account(tx: PgTx, account_id: int) -> None:
    """Every mailbox, message, subscription and lock of a (locked) account, then it."""
    for row in await tx.conn.fetch(
        f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = $1 ORDER BY id FOR UPDATE",
        account_id,
    ):
        await _drop(tx, mailbox(row))
    await tx.conn.execute("DELETE FROM subscriptions WHERE account_id = $1", account_id)
    await tx.conn.execute("DELETE FROM maildrop_locks WHERE account_id = $1", account_id)
    await tx.conn.execute("DELETE FROM accounts WHERE id = $1", account_id)


async def remove_account(tx: PgTx, address: str) -> None:
    await _remove_account(tx, await _account_id(tx, address))


async def update_account(tx: PgTx, address: str, column: str, value: object) -> None:
    """Set one of ``password_hash``, ``disabled``, ``quota``."""
    if column not in ("password_hash", "disabled", "quota"):
        raise ValueError(column)
    account_id = await _account_id(tx, address)
    await tx.conn.execute(f"UPDATE accounts SET {column} = $1 WHERE id = $2", value, account_id)


async def add_alias(tx: PgTx, source: str, targets: Sequence[str]) -> Alias:
    """``user@domain`` or ``@domain`` (catch-all) → targets (local or remote addresses)."""
    source = normalize_address(source, catch_all=True)
    cleaned = tuple(dict.fromkeys(normalize_address(t) for t in targets))
    if not cleaned:
        raise ValueError("an alias needs at least one target")
    domain = source.rpartition("@")[2]
    await _require_domain(tx, domain, lock=True)
    await _lock_address(tx, source)
    if await _taken(tx, source):
        raise AlreadyExists(f"{source} exists")
    await tx.conn.execute(
        "INSERT INTO aliases (source, domain, targets, created) VALUES ($1, $2, $3, $4)",
        source,
        domain,
        json.dumps(list(cleaned)),
        time.time(),
    )
    return Alias(source=source, targets=cleaned)


async def remove_alias(tx: PgTx, source: str) -> None:
    source = normalize_address(source, catch_all=True)
    gone = await tx.conn.fetchval("DELETE FROM aliases WHERE source = $1 RETURNING 1", source)
    if gone is None:
        raise NotFound(f"no alias {source}")


# --------------------------------------------------------------------------- mailboxes


async def find(tx: PgTx, account_id: int, name: str) -> Mailbox | None:
    row = await tx.conn.fetchrow(
        f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = $1 AND name = $2",
        account_id,
        name,
    )
    return mailbox(row) if row else None


async def _has_children(tx: PgTx, account_id: int, name: str) -> bool:
    prefix = name + names.SEPARATOR
    found = await tx.conn.fetchval(
        "SELECT 1 FROM mailboxes WHERE account_id = $1 AND substr(name, 1, $2) = $3 LIMIT 1",
        account_id,
        len(prefix),
        prefix,
    )
    return found is not None


async def _lock_account(tx: PgTx, account_id: int) -> None:
    if not await lock_accounts(tx.conn, [account_id]):
        raise NotFound(f"no account {account_id}")


async def _insert(tx: PgTx, account_id: int, name: str, special_use: str | None) -> Mailbox:
    uidvalidity = await next_uidvalidity(tx.conn)
    row = await tx.conn.fetchrow(
        "INSERT INTO mailboxes (account_id, name, uidvalidity, special_use)"
        f" VALUES ($1, $2, $3, $4) RETURNING {MAILBOX_COLUMNS}",
        account_id,
        name,
        uidvalidity,
        special_use,
    )
    return mailbox(row)


async def _ensure_parents(tx: PgTx, account_id: int, name: str) -> None:
    """RFC 3501 §6.3.3: create the superior names a CREATE (or RENAME) needs."""
    for parent in names.parents(name):
        if await find(tx, account_id, parent) is None:
            await _insert(tx, account_id, parent, None)


async def create(tx: PgTx, account_id: int, name: str, special_use: str | None) -> Mailbox:
    """Create ``name`` (and missing parents); a \\Noselect placeholder is revived with a
    new UIDVALIDITY; AlreadyExists when a selectable mailbox has the name."""
    name = names.normalize(name)
    await _lock_account(tx, account_id)
    existing = await find(tx, account_id, name)
    if existing is not None:
        if existing.selectable:
            raise AlreadyExists(f"mailbox {name!r} exists")
        await tx.conn.execute(
            "UPDATE mailboxes SET selectable = 1, uidvalidity = $1, uidnext = 1,"
            " highestmodseq = 1, first_recent_uid = 1, special_use = $2 WHERE id = $3",
            await next_uidvalidity(tx.conn),
            special_use,
            existing.id,
        )
        revived = await get_mailbox_by_id(tx.conn, existing.id)
        assert revived is not None
        return revived
    await _ensure_parents(tx, account_id, name)
    return await _insert(tx, account_id, name, special_use)


async def clear(tx: PgTx, mb: Mailbox) -> None:
    """Remove every message of a mailbox (releasing bodies and quota) and its change log."""
    refs = await tx.conn.fetch(
        "SELECT blob_id, COUNT(*) AS n, SUM(size) AS total FROM messages WHERE mailbox_id = $1"
        " GROUP BY blob_id ORDER BY blob_id",
        mb.id,
    )
    await tx.conn.execute("DELETE FROM messages WHERE mailbox_id = $1", mb.id)
    total = 0
    for r in refs:
        await tx.blobs.release(tx, r["blob_id"], int(r["n"]))
        total += int(r["total"])
    await tx.conn.execute("DELETE FROM changes WHERE mailbox_id = $1", mb.id)
    await tx.conn.execute(
        "UPDATE accounts SET used = used - $1 WHERE id = $2", total, mb.account_id
    )
    await tx.conn.execute(
        "UPDATE mailboxes SET n_exists = 0, n_unseen = 0, size = 0 WHERE id = $1", mb.id
    )


async def _drop(tx: PgTx, mb: Mailbox) -> None:
    """Remove the mailbox row after telling its watchers (they find it gone)."""
    tx.notify(mb.id, await bump_modseq(tx.conn, mb.id))
    await clear(tx, mb)
    await tx.conn.execute("DELETE FROM mailboxes WHERE id = $1", mb.id)


async def delete(tx: PgTx, account_id: int, name: str) -> None:
    """RFC 3501 §6.3.4 DELETE: messages go; with children the name stays as \\Noselect.
    INBOX and a \\Noselect name with children cannot be deleted (InvalidName)."""
    name = names.normalize(name)
    if names.is_inbox(name):
        raise InvalidName("INBOX cannot be deleted")
    await lock_accounts(tx.conn, [account_id])
    mb = await find(tx, account_id, name)
    if mb is None:
        raise NotFound(f"no mailbox {name!r}")
    if await _has_children(tx, account_id, name):
        if not mb.selectable:
            raise InvalidName(f"{name!r} is \\Noselect and has children")
        tx.notify(mb.id, await bump_modseq(tx.conn, mb.id))
        await clear(tx, mb)
        await tx.conn.execute("UPDATE mailboxes SET selectable = 0 WHERE id = $1", mb.id)
        return
    await _drop(tx, mb)
    for parent in reversed(list(names.parents(name))):
        up = await find(tx, account_id, parent)
        if up is None or up.selectable or await _has_children(tx, account_id, parent):
            break
        await _drop(tx, up)


async def rename(tx: PgTx, account_id: int, old: str, new: str) -> None:
    """RFC 3501 §6.3.5 RENAME: children move with it; renaming INBOX moves its messages
    to a new mailbox and leaves INBOX (and its children) in place, empty. Subscriptions
    are not changed (RFC 9051 §6.3.6)."""
    old = names.normalize(old)
    new = names.normalize(new)
    await lock_accounts(tx.conn, [account_id])
    src = await find(tx, account_id, old)
    if src is None:
        raise NotFound(f"no mailbox {old!r}")
    if await find(tx, account_id, new) is not None or await _has_children(tx, account_id, new):
        raise AlreadyExists(f"mailbox {new!r} exists")
    if names.is_inbox(new):
        raise AlreadyExists("INBOX exists")
    if names.is_descendant(new, old) and not names.is_inbox(old):
        raise InvalidName("cannot rename a mailbox into itself")
    if names.is_inbox(old):
        await _ensure_parents(tx, account_id, new)
        dst = await _insert(tx, account_id, new, None)
        uids = [
            int(r["uid"])
            for r in await tx.conn.fetch("SELECT uid FROM messages WHERE mailbox_id = $1", src.id)
        ]
        if uids:
            await copy(tx, src.id, uids, dst.id, move=True)
        return
    await _ensure_parents(tx, account_id, new)
    prefix = old + names.SEPARATOR
    moved = await tx.conn.fetch(
        "UPDATE mailboxes SET name = $1 || substr(name, $2) WHERE account_id = $3"
        " AND (name = $4 OR substr(name, 1, $5) = $6) RETURNING id",
        new,
        len(old) + 1,
        account_id,
        old,
        len(prefix),
        prefix,
    )
    for r in sorted(moved, key=lambda r: int(r["id"])):
        mailbox_id = int(r["id"])
        tx.notify(mailbox_id, await bump_modseq(tx.conn, mailbox_id))


async def set_subscribed(tx: PgTx, account_id: int, name: str, subscribed: bool) -> None:
    """RFC 3501 §6.3.6/§6.3.7: names only; a subscription may outlive its mailbox."""
    name = names.normalize(name)
    if await tx.conn.fetchval("SELECT 1 FROM accounts WHERE id = $1", account_id) is None:
        raise NotFound(f"no account {account_id}")
    if subscribed:
        await tx.conn.execute(
            "INSERT INTO subscriptions (account_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            account_id,
            name,
        )
    else:
        await tx.conn.execute(
            "DELETE FROM subscriptions WHERE account_id = $1 AND name = $2", account_id, name
        )
