"""Copy a whole installation between stores: SQLite → PostgreSQL, back, or alike.

``correo store copy --from A --to B`` (``correo.cli_store``) drives :func:`copy_store`.
The tables are the same on both backends (``postgres_schema`` translates the SQLite
migrations), so the copy is table by table, row for row, keeping every id, UIDVALIDITY,
UID, MODSEQ, flag, change-log row and queue entry: IMAP clients keep their caches and
CONDSTORE/QRESYNC state (RFC 7162 §3.1), and POP3 UIDLs stay the same.

* Order follows the foreign keys: counters, domains, accounts, aliases, mailboxes,
  subscriptions, bodies, messages, change log, queue. Maildrop locks are transient and
  not copied.
* Bodies are re-stored as the destination keeps them (inline up to its threshold, else
  files or ``blob_chunks``); a body file is fsynced before the row that names it commits.
* Resumable: every batch is its own transaction and inserts skip rows whose key is
  already there, so an interrupted copy is simply run again (bodies already copied are
  not read again).
* The source is read in one snapshot (a read transaction held for the whole copy). Stop
  the server first: mail delivered during the copy may be missing, and the final check
  says so.
* At the end, row counts per table and the sums of quota usage and body references are
  compared; any difference is reported.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("counters", ("name",)),
    ("domains", ("name",)),
    ("accounts", ("id",)),
    ("aliases", ("source",)),
    ("mailboxes", ("id",)),
    ("subscriptions", ("account_id", "name")),
    ("blobs", ("sha",)),
    ("messages", ("mailbox_id", "uid")),
    ("changes", ("mailbox_id", "modseq", "uid")),
    ("queue_messages", ("id",)),
    ("queue_recipients", ("id",)),
)
"""Copied tables in foreign-key order, with their primary keys."""

SERIAL_TABLES = ("accounts", "mailboxes", "queue_messages", "queue_recipients")
"""Tables whose ids come from a sequence on PostgreSQL (moved past the copied ids)."""

BATCH_ROWS = 500
BATCH_BODY_BYTES = 16 * 1024 * 1024
"""A batch of bodies is committed once it holds this many bytes (bounds memory)."""

CHECKS: tuple[tuple[str, str], ...] = (
    ("accounts.used", "SELECT COALESCE(SUM(used), 0) FROM accounts"),
    ("blobs.refcount", "SELECT COALESCE(SUM(refcount), 0) FROM blobs"),
    ("mailboxes.uidnext", "SELECT COALESCE(SUM(uidnext), 0) FROM mailboxes"),
    ("mailboxes.highestmodseq", "SELECT COALESCE(SUM(highestmodseq), 0) FROM mailboxes"),
)
"""Sums compared after the copy, beside the row counts."""


class CopyError(Exception):
    """The copy cannot proceed (destination holds other data, bad configuration)."""


class Source(Protocol):
    async def columns(self, table: str) -> list[str]: ...
    async def count(self, table: str) -> int: ...
    def batches(
        self, table: str, columns: list[str], order: tuple[str, ...]
    ) -> AsyncIterator[list[tuple[Any, ...]]]: ...
    async def body(self, sha: str, inline: bytes | None) -> bytes: ...
    async def scalar(self, sql: str) -> int: ...


class Destination(Protocol):
    inline_threshold: int

    async def columns(self, table: str) -> list[str]: ...
    async def count(self, table: str) -> int: ...
    async def scalar(self, sql: str) -> int: ...
    async def insert(
        self, table: str, columns: list[str], key: tuple[str, ...], rows: list[tuple[Any, ...]]
    ) -> None: ...
    async def existing_blobs(self, shas: list[str]) -> set[str]: ...
    async def put_blobs(self, rows: list[tuple[str, int, int, bytes, bytes]]) -> None:
        """(sha, size, refcount, body, meta) rows, bodies stored the destination's way."""

    async def account_keys(self) -> dict[int, str]: ...
    async def finish(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Verification:
    table: str
    source: int
    destination: int

    @property
    def ok(self) -> bool:
        return self.source == self.destination


Progress = Callable[[int], None]


async def totals(src: Source) -> dict[str, int]:
    """Rows per copied table in the source (for the progress bar)."""
    return {table: await src.count(table) for table, _key in TABLES}


async def check_destination(src: Source, dst: Destination) -> None:
    """Refuse a destination whose accounts are not (a prefix of) the source's: copying
    would silently skip rows whose ids another installation already uses."""
    theirs = await dst.account_keys()
    if not theirs:
        return
    ours: dict[int, str] = {}
    async for batch in src.batches("accounts", ["id", "address"], ("id",)):
        ours.update((int(i), str(a)) for i, a in batch)
    foreign = {i: a for i, a in theirs.items() if ours.get(i) != a}
    if foreign:
        sample = ", ".join(sorted(foreign.values())[:3])
        raise CopyError(
            f"the destination already holds {len(foreign)} other account(s) ({sample});"
            " copy into an empty database"
        )


async def copy_store(src: Source, dst: Destination, progress: Progress) -> list[Verification]:
    """Copy every table (see the module docstring); returns the final comparison."""
    await check_destination(src, dst)
    for table, key in TABLES:
        have = set(await dst.columns(table))
        columns = [c for c in await src.columns(table) if c in have]
        if table == "blobs":
            await _copy_blobs(src, dst, columns, progress)
            continue
        async for batch in src.batches(table, columns, key):
            await dst.insert(table, columns, key, batch)
            progress(len(batch))
    await dst.finish()
    return await verify(src, dst)


async def _copy_blobs(
    src: Source, dst: Destination, columns: list[str], progress: Progress
) -> None:
    wanted = ["sha", "size", "refcount", "data", "meta"]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise CopyError(f"blobs table lacks {', '.join(missing)}")
    async for batch in src.batches("blobs", wanted, ("sha",)):
        have = await dst.existing_blobs([str(r[0]) for r in batch])
        pending: list[tuple[str, int, int, bytes, bytes]] = []
        size = 0
        for sha, body_size, refcount, data, meta in batch:
            if sha in have:
                continue
            body = await src.body(str(sha), None if data is None else bytes(data))
            if len(body) != int(body_size):
                raise CopyError(f"body {str(sha)[:12]}: {len(body)} bytes, {body_size} recorded")
            pending.append((str(sha), int(body_size), int(refcount), body, bytes(meta)))
            size += len(body)
            if size >= BATCH_BODY_BYTES:
                await dst.put_blobs(pending)
                pending, size = [], 0
        if pending:
            await dst.put_blobs(pending)
        progress(len(batch))


async def verify(src: Source, dst: Destination) -> list[Verification]:
    out = [
        Verification(table, await src.count(table), await dst.count(table))
        for table, _key in TABLES
    ]
    for name, sql in CHECKS:
        out.append(Verification(name, await src.scalar(sql), await dst.scalar(sql)))
    return out
