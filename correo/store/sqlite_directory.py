"""Directory write jobs for the SQLite store: domains, accounts, aliases.

Addresses are stored lower-cased. An address is either an account or an alias, never
both; accounts and aliases exist only in local domains (``NotFound`` otherwise).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from correo.store.base import Account, Alias, AlreadyExists, Domain, NotFound
from correo.store.sqlite_mailboxes import create_defaults, remove_all
from correo.store.sqlite_rows import ACCOUNT_COLUMNS, account, next_id
from correo.store.sqlite_writer import WriteTx


def normalize_domain(name: str) -> str:
    """``Example.COM.`` → ``example.com``; ValueError when it cannot be a domain."""
    text = name.strip().rstrip(".").lower()
    if not text or "@" in text or any(c.isspace() for c in text):
        raise ValueError(f"not a domain name: {name!r}")
    return text


def normalize_address(address: str, *, catch_all: bool = False) -> str:
    """``User@Example.com`` → ``user@example.com``; ``@domain`` only when ``catch_all``."""
    text = address.strip().lower()
    local, at, dom = text.rpartition("@")
    if not at or (not local and not catch_all) or any(c.isspace() for c in text):
        raise ValueError(f"not an address: {address!r}")
    return f"{local}@{normalize_domain(dom)}"


def _require_domain(tx: WriteTx, name: str) -> None:
    if tx.conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone() is None:
        raise NotFound(f"{name} is not a local domain")


def _taken(tx: WriteTx, address: str) -> bool:
    if tx.conn.execute("SELECT 1 FROM accounts WHERE address = ?", (address,)).fetchone():
        return True
    return (
        tx.conn.execute("SELECT 1 FROM aliases WHERE source = ?", (address,)).fetchone() is not None
    )


def add_domain(tx: WriteTx, name: str) -> Domain:
    name = normalize_domain(name)
    now = time.time()
    row = tx.conn.execute(
        "INSERT INTO domains (name, created) VALUES (?, ?) ON CONFLICT DO NOTHING RETURNING name",
        (name, now),
    ).fetchone()
    if row is None:
        raise AlreadyExists(f"domain {name} exists")
    return Domain(name=name, created=now)


def remove_domain(tx: WriteTx, name: str, force: bool) -> None:
    """Refuses (AlreadyExists) while accounts or aliases remain, unless ``force``, which
    removes them with all their mail."""
    name = normalize_domain(name)
    _require_domain(tx, name)
    ids = [r[0] for r in tx.conn.execute("SELECT id FROM accounts WHERE domain = ?", (name,))]
    n_aliases = tx.conn.execute("SELECT COUNT(*) FROM aliases WHERE domain = ?", (name,))
    if (ids or n_aliases.fetchone()[0]) and not force:
        raise AlreadyExists(f"domain {name} still has accounts or aliases")
    for account_id in ids:
        _remove_account(tx, int(account_id))
    tx.conn.execute("DELETE FROM aliases WHERE domain = ?", (name,))
    tx.conn.execute("DELETE FROM domains WHERE name = ?", (name,))


def add_account(tx: WriteTx, address: str, password_hash: str, quota: int) -> Account:
    """New account with its default mailboxes (``sqlite_mailboxes.DEFAULT_MAILBOXES``)."""
    address = normalize_address(address)
    domain = address.rpartition("@")[2]
    _require_domain(tx, domain)
    if _taken(tx, address):
        raise AlreadyExists(f"{address} exists")
    now = time.time()
    row = tx.conn.execute(
        "INSERT INTO accounts (id, address, domain, password_hash, quota, created)"
        f" VALUES (?, ?, ?, ?, ?, ?) RETURNING {ACCOUNT_COLUMNS}",
        (next_id(tx.conn, "accounts"), address, domain, password_hash, max(int(quota), 0), now),
    ).fetchone()
    created = account(row)
    create_defaults(tx, created.id)
    return created


def _account_id(tx: WriteTx, address: str) -> int:
    row = tx.conn.execute(
        "SELECT id FROM accounts WHERE address = ?", (normalize_address(address),)
    ).fetchone()
    if row is None:
        raise NotFound(f"no account {address}")
    return int(row[0])


def _remove_account(tx: WriteTx, account_id: int) -> None:
    remove_all(tx, account_id)
    tx.conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))


def remove_account(tx: WriteTx, address: str) -> None:
    _remove_account(tx, _account_id(tx, address))


def update_account(tx: WriteTx, address: str, column: str, value: object) -> None:
    """Set one of ``password_hash``, ``disabled``, ``quota``."""
    if column not in ("password_hash", "disabled", "quota"):
        raise ValueError(column)
    account_id = _account_id(tx, address)
    tx.conn.execute(f"UPDATE accounts SET {column} = ? WHERE id = ?", (value, account_id))


def add_alias(tx: WriteTx, source: str, targets: Sequence[str]) -> Alias:
    """``user@domain`` or ``@domain`` (catch-all) → targets (local or remote addresses)."""
    source = normalize_address(source, catch_all=True)
    cleaned = tuple(dict.fromkeys(normalize_address(t) for t in targets))
    if not cleaned:
        raise ValueError("an alias needs at least one target")
    domain = source.rpartition("@")[2]
    _require_domain(tx, domain)
    if _taken(tx, source):
        raise AlreadyExists(f"{source} exists")
    tx.conn.execute(
        "INSERT INTO aliases (source, domain, targets, created) VALUES (?, ?, ?, ?)",
        (source, domain, json.dumps(list(cleaned)), time.time()),
    )
    return Alias(source=source, targets=cleaned)


def remove_alias(tx: WriteTx, source: str) -> None:
    source = normalize_address(source, catch_all=True)
    if (
        tx.conn.execute("DELETE FROM aliases WHERE source = ? RETURNING 1", (source,)).fetchone()
        is None
    ):
        raise NotFound(f"no alias {source}")
