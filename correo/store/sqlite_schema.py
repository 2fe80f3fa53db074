"""SQLite connections, error mapping and versioned migrations (``schema/NNNN_*.sql``)."""

from __future__ import annotations

import re
import sqlite3
import time
from importlib import resources
from pathlib import Path

from correo.store.base import DiskFullError, TemporaryStoreError

BUSY_TIMEOUT_MS = 10_000
_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_DISK_FULL_CODES = frozenset({sqlite3.SQLITE_FULL})


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT ourselves), WAL,
    ``synchronous=FULL`` so a COMMIT that returned survives a power loss."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -16000")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    return conn


def map_error(exc: sqlite3.Error) -> TemporaryStoreError:
    """SQLITE_FULL → :class:`DiskFullError`; any other database error is temporary."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _DISK_FULL_CODES:
        return DiskFullError(f"database: {exc}")
    return TemporaryStoreError(f"database: {exc}")


def _migrations() -> list[tuple[int, str, str]]:
    found: list[tuple[int, str, str]] = []
    for entry in resources.files("correo.store").joinpath("schema").iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    return found


def _statements(script: str) -> list[str]:
    """Split a migration into statements (each complete per ``sqlite3.complete_statement``)."""
    out: list[str] = []
    current: list[str] = []
    for line in script.splitlines(keepends=True):
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        text = "".join(current)
        if sqlite3.complete_statement(text):
            out.append(text.strip())
            current = []
    if "".join(current).strip():
        raise ValueError("migration ends with an incomplete statement")
    return out


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than the database's version; return the version.

    Each migration runs in its own ``BEGIN IMMEDIATE`` transaction with its version row,
    so two processes opening at once apply it once and a failure leaves no trace.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
    )
    version = 0
    for number, name, script in _migrations():
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            if row[0] < number:
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, name, applied) VALUES (?, ?, ?)",
                    (number, name, time.time()),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        version = number
    return version
