"""The outbound queue's storage interface: claim with a lease, record results, report.

The rows are written by ``Store.deliver(..., queue=QueueRequest(...))`` in the same
transaction as local delivery (a 250 for a remote recipient means the row is committed).
From then on only the queue runner and the operator CLI touch them, through
:class:`QueueStore`:

* ``claim_due`` leases due recipients to one *owner* (a token unique to one runner
  process) until ``lease_until``; a process that dies simply stops renewing, and its
  recipients become due again when the lease runs out (at-least-once delivery).
* ``record`` applies results only to rows still leased to the caller and still not final
  (a fencing check): an operator's ``bounce``/``remove`` or a takeover by another node
  wins over a late result.
* A recipient that ends (or is delayed) with a report owed to the sender keeps
  ``dsn_pending`` until the report is handed to ``Store.deliver``; a message is deleted,
  and its body reference released, once every recipient is final and no report is owed.

The SQLite implementation is ``queue_sqlite``; a PostgreSQL one claims with
``FOR UPDATE SKIP LOCKED`` behind the same protocol.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class RecipientState(enum.Enum):
    PENDING = "pending"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (RecipientState.DELIVERED, RecipientState.FAILED)


class DsnAction(enum.Enum):
    """RFC 3464 §2.3.3 Action values a report can carry."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    blob_id: str
    sender: str
    """Envelope sender; "" for the null sender."""
    envid: str | None
    ret: str | None
    smtputf8: bool
    body_8bit: bool
    prefix: bytes
    size: int
    created: float


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    id: int
    queue_id: int
    address: str
    domain: str
    orcpt: str | None
    """Decoded ``addr-type;address`` (RFC 3461 §4.2), e.g. ``rfc822;bob@example.org``."""
    notify: frozenset[str]
    state: RecipientState
    attempts: int
    next_attempt: float
    last_error: str | None
    """Diagnostic of the last attempt, ``smtp; 451 4.3.0 try later`` style."""
    status: str | None
    """RFC 3463 enhanced status of the last attempt."""
    remote_mta: str | None
    delay_warned: bool
    dsn_pending: DsnAction | None
    lease_owner: str | None
    lease_until: float | None


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One queued message with (some of) its recipients."""

    message: QueuedMessage
    recipients: tuple[QueuedRecipient, ...]


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The outcome of one delivery attempt for one recipient."""

    recipient_id: int
    state: RecipientState
    status: str
    diagnostic: str
    remote_mta: str | None = None
    next_attempt: float | None = None
    """For DEFERRED: when to try again."""
    dsn: DsnAction | None = None
    """A report to owe the sender (None: none, or keep one already owed)."""
    delay_warned: bool = False
    """Set the recipient's one-time delay notice as given."""
    count_attempt: bool = True


class QueueStore(Protocol):
    """Queue storage for the runner and the CLI (SQLite now, PostgreSQL later)."""

    async def claim_due(self, owner: str, now: float, lease: float, limit: int) -> list[QueueEntry]:
        """Lease up to ``limit`` due, unleased (or lease-expired) recipients to ``owner``
        until ``now + lease``; returned grouped by message."""

    async def renew_lease(self, owner: str, until: float) -> int:
        """Extend every lease ``owner`` holds; returns how many rows it still holds."""

    async def release(self, owner: str, recipient_ids: Sequence[int]) -> None:
        """Give leased rows back unchanged (due again at once)."""

    async def record(self, owner: str, results: Sequence[RecipientResult], now: float) -> int:
        """Apply results to rows still leased to ``owner`` and not final; clears their
        lease; removes messages that are done. Returns how many rows were updated."""

    async def next_due_time(self, owner: str) -> float | None:
        """Earliest time a recipient not leased to ``owner`` becomes claimable."""

    async def read_body(self, message: QueuedMessage) -> bytes:
        """The shared body (without ``message.prefix``)."""

    async def owed_reports(self, limit: int) -> list[QueueEntry]:
        """Messages with recipients whose report is owed (only those recipients)."""

    async def reports_sent(self, sent: Sequence[tuple[int, DsnAction]]) -> None:
        """Clear ``dsn_pending`` of (recipient id, action) pairs; remove done messages."""

    async def drop_reports(self, queue_id: int) -> None:
        """Forget every report owed for a message (null sender, NOTIFY=NEVER...)."""

    # ---- operator
    async def list_entries(self) -> list[QueueEntry]: ...
    async def get_entry(self, queue_id: int) -> QueueEntry | None: ...

    async def retry(self, queue_id: int | None, now: float) -> int:
        """Make unfinished recipients (of one message, or all) due now; returns count."""

    async def bounce(self, queue_id: int, diagnostic: str, now: float) -> int:
        """Fail every unfinished recipient now, owing a failure report."""

    async def remove(self, queue_id: int) -> bool:
        """Delete a message and its recipients without any report."""


def queue_store_for(store: object) -> QueueStore:
    """The queue storage of an open store (the backend's own implementation)."""
    from correo.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        from correo.store.queue_sqlite import SqliteQueueStore

        return SqliteQueueStore(store)
    try:
        from correo.store.postgres import PostgresStore
    except ImportError:  # asyncpg not installed: cannot be a PostgreSQL store
        pass
    else:
        if isinstance(store, PostgresStore):
            from correo.store.postgres_queue import PostgresQueueStore

            return PostgresQueueStore(store)
    raise NotImplementedError(f"no queue storage for {type(store).__name__}")
