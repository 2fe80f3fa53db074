"""The storage interface: directory, mailboxes, messages, change log, queue.

Protocol code sees only this module; SQL lives in the backends (``sqlite.py``, later
``postgres.py``), and both pass the same contract suite (``tests/store``).

Conventions
-----------
* Addresses are stored lower-cased (``local@domain``); lookups are case-insensitive.
* Mailbox names are Unicode strings with ``/`` as the hierarchy separator; ``INBOX`` is
  case-insensitive and always spelled ``INBOX``. The IMAP layer converts modified UTF-7.
* Every change to a mailbox bumps its MODSEQ and writes a change-log row (added, flags,
  expunged) so sessions compute their untagged updates from ``changes_since``
  (DESIGN.md principle 5; RFC 7162 needs no schema change later).
* A message's size includes its per-recipient ``prefix`` (``Return-Path:``,
  ``Delivered-To:`` lines); the shared body lives once in the blob store.
* Durability: when ``deliver``, ``append``, ``expunge`` and friends return, the change is
  committed (``synchronous=FULL``) and any new blob fsynced with its directory.
"""

from __future__ import annotations

import enum
import hashlib
from array import array
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class StoreError(Exception):
    """Base class for store failures the protocols turn into replies."""


class TemporaryStoreError(StoreError):
    """The store cannot take the write now (locked, I/O error): answer 4xx / NO."""


class DiskFullError(TemporaryStoreError):
    """No space left: SMTP 452 4.3.1, IMAP NO [LIMIT]/[SERVERBUG]."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class OverQuota(StoreError):
    """The account's quota would be exceeded (SMTP 452 4.2.2, IMAP NO [OVERQUOTA])."""

    def __init__(self, message: str = "over quota", *, message_alone_exceeds: bool = False):
        super().__init__(message)
        self.message_alone_exceeds = message_alone_exceeds
        """True when the message by itself is larger than the quota (552 5.2.2)."""


MAX_FLAGS = 128
"""Most flags and keywords one message may carry: an explicit limit on what a client
can make the store keep (RFC 9051 §2.3.2 lets a server refuse new keywords)."""


class TooManyFlags(StoreError):
    """A STORE or APPEND would give a message more than :data:`MAX_FLAGS` flags."""


class InvalidName(StoreError):
    """A mailbox name the store refuses (empty level, ``.``/``..``, control char)."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Domain:
    name: str
    created: float


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    address: str
    password_hash: str
    quota: int
    """Bytes; 0 means unlimited."""
    used: int
    """Bytes currently stored (sum of message sizes over all mailboxes)."""
    disabled: bool
    created: float

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class Alias:
    source: str
    """``user@domain`` or ``@domain`` for a catch-all."""
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    account_id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None
    """RFC 6154 attribute such as ``\\Sent``, or None."""
    selectable: bool
    """False for a ``\\Noselect`` placeholder left by deleting a parent (RFC 3501 §6.3.4)."""
    exists: int
    unseen: int
    size: int
    first_recent_uid: int
    """UIDs at or above this are \\Recent and not yet claimed by any session."""


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """The compact per-message row a selected view needs (no metadata, no body)."""

    uid: int
    modseq: int
    flags: frozenset[str]
    internaldate: float
    """Seconds since the epoch (UTC)."""
    size: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message in one mailbox, with the parse-once metadata (``correo.mail.message``)."""

    mailbox_id: int
    uid: int
    modseq: int
    flags: frozenset[str]
    internaldate: float
    size: int
    blob_id: str
    """SHA-256 hex of the shared body."""
    prefix: bytes
    """Per-recipient header lines prepended when the message is read."""
    meta: bytes
    """JSON metadata from ``correo.mail.message.MessageMeta.to_json()``."""


@dataclass(frozen=True, slots=True)
class MailboxSnapshot:
    """What SELECT/EXAMINE answer (RFC 3501 §6.3.1) without loading message rows:
    from ``Store.mailbox_view``, consistent as of ``highestmodseq``."""

    mailbox_id: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    uids: array[int]
    """Every UID in ascending order (``array('I')``: 4 octets a message); the caller
    may keep it (a fresh array each call)."""
    unseen: int
    """Messages without ``\\Seen``."""
    first_unseen: int | None
    """Sequence number of the first message without ``\\Seen`` (RFC 3501 §7.1 UNSEEN)."""
    first_recent_uid: int
    """The mailbox's \\Recent watermark (``Mailbox.first_recent_uid``)."""
    keywords: frozenset[str]
    """Keywords (non-system flags) set on any message, for FLAGS/PERMANENTFLAGS; may also
    hold keywords no message carries any more (RFC 3501 §7.2.6 allows listing them)."""


class MessageRow(NamedTuple):
    """The per-message columns FETCH of metadata needs (``ImapFastPaths.message_rows``):
    a plain tuple, as cheap to build as a database row."""

    uid: int
    modseq: int
    flags: frozenset[str]
    internaldate: float
    size: int
    blob_id: str


@dataclass(frozen=True, slots=True)
class MessageText:
    """A message with its metadata and, when the body is held in the database, its
    whole bytes (prefix included): SEARCH BODY/TEXT without one read per message."""

    message: StoredMessage
    data: bytes | None
    """``prefix + body``, or None when the body is a file (use ``Store.open_body``)."""


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message parsed once, ready to be stored (``correo.mail.message.prepare``).

    Its SHA-256, which names the blob, is computed here from ``data`` and never given:
    it cannot disagree with the body, so no store hashes the body again to check it."""

    data: bytes
    """The body with CRLF line ends, without per-recipient prefix lines."""
    meta: bytes
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())


@dataclass(frozen=True, slots=True)
class LocalDelivery:
    account_id: int
    mailbox: str = "INBOX"
    prefix: bytes = b""
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class QueueRecipient:
    """One remote recipient with its RFC 3461 parameters."""

    address: str
    orcpt: str | None = None
    notify: frozenset[str] = frozenset()
    """Subset of {"NEVER", "SUCCESS", "FAILURE", "DELAY"}; empty = not given."""


@dataclass(frozen=True, slots=True)
class QueueRequest:
    """Remote recipients of an accepted message, queued in the same transaction."""

    sender: str
    """Envelope sender, "" for the null sender ``<>``."""
    recipients: tuple[QueueRecipient, ...]
    envid: str | None = None
    ret: str | None = None
    """"FULL" or "HDRS" (RFC 3461 §4.3)."""
    smtputf8: bool = False
    body_8bit: bool = False
    prefix: bytes = b""
    """Header lines to prepend when relaying (e.g. our Received:)."""


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    delivered: tuple[tuple[int, int, int], ...]
    """(account_id, mailbox_id, uid) for each local delivery that was stored."""
    over_quota: tuple[int, ...] = ()
    """account_ids that could not take the message (quota reached after acceptance)."""
    queue_id: int | None = None
    """The first queue entry created (``queue_ids[0]``), None when nothing was queued."""
    queue_ids: tuple[int, ...] = ()
    """One queue entry per non-empty :class:`QueueRequest`, in the order given."""


class ChangeKind(enum.Enum):
    ADDED = "added"
    FLAGS = "flags"
    EXPUNGED = "expunged"


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    uid: int
    modseq: int
    flags: frozenset[str] = frozenset()


class FlagMode(enum.Enum):
    SET = "set"
    ADD = "add"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    uid: int
    modseq: int
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class CopyResult:
    uidvalidity: int
    """Of the destination mailbox (RFC 4315 COPYUID)."""
    pairs: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    """(source uid, destination uid), in source-uid order."""


class Body(Protocol):
    """Random access to a message's bytes (prefix + shared body)."""

    size: int

    async def read(self, offset: int = 0, length: int = -1) -> bytes: ...

    def chunks(
        self, offset: int = 0, length: int = -1, chunk: int = 65536
    ) -> AsyncIterator[bytes]: ...


MailboxListener = Callable[[int, int], None]
"""Called with (mailbox_id, highestmodseq) after a change commits; must not block."""


class Subscription(Protocol):
    def close(self) -> None: ...


# --------------------------------------------------------------------------- the store


class Store(Protocol):
    """Everything the protocols and the CLI need from storage. All methods are safe to
    call concurrently from many sessions on one event loop."""

    # ---- lifecycle
    async def open(self) -> None:
        """Create/migrate the schema, sweep uncommitted blobs, start writer tasks."""

    async def close(self) -> None: ...

    async def backup(self, dest: str) -> None:
        """Consistent copy of the database and blobs into the directory ``dest``."""

    # ---- directory
    async def add_domain(self, name: str) -> Domain: ...
    async def list_domains(self) -> list[Domain]: ...
    async def is_local_domain(self, name: str) -> bool: ...
    async def remove_domain(self, name: str, *, force: bool = False) -> None:
        """Refuses (AlreadyExists) while accounts/aliases remain, unless ``force``."""

    async def add_account(self, address: str, password_hash: str, quota: int = 0) -> Account:
        """Also creates INBOX, Sent, Drafts, Trash, Junk, Archive (with special-use)."""

    async def get_account(self, address: str) -> Account | None: ...
    async def get_account_by_id(self, account_id: int) -> Account | None: ...
    async def list_accounts(self, domain: str | None = None) -> list[Account]: ...
    async def set_password(self, address: str, password_hash: str) -> None: ...
    async def set_disabled(self, address: str, disabled: bool) -> None: ...
    async def set_quota(self, address: str, quota: int) -> None: ...
    async def remove_account(self, address: str) -> None: ...

    async def add_alias(self, source: str, targets: Sequence[str]) -> Alias: ...
    async def get_alias(self, source: str) -> Alias | None: ...
    async def list_aliases(self, domain: str | None = None) -> list[Alias]: ...
    async def remove_alias(self, source: str) -> None: ...

    # ---- mailboxes
    async def list_mailboxes(self, account_id: int) -> list[Mailbox]: ...
    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None: ...
    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None: ...
    async def create_mailbox(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> Mailbox:
        """Creates missing parents; AlreadyExists if selectable already (a \\Noselect
        placeholder becomes selectable again with a new UIDVALIDITY)."""

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        """Removes messages; with children it stays as \\Noselect (RFC 3501 §6.3.4)."""

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        """Renames children too; renaming INBOX moves its messages (RFC 3501 §6.3.5)."""

    async def list_subscriptions(self, account_id: int) -> list[str]: ...
    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None: ...

    # ---- messages
    async def deliver(
        self,
        message: IncomingMessage,
        local: Sequence[LocalDelivery],
        queue: QueueRequest | Sequence[QueueRequest] | None = None,
    ) -> DeliveryResult:
        """Store once, link into every local recipient's mailbox, queue remote ones, all
        in one committed transaction (group commit with concurrent deliveries).
        Over-quota recipients are skipped and listed in the result, not raised.

        ``queue`` may be several requests when the copies differ in envelope sender or
        prefix (alias forwarding rewrites the sender with SRS and adds ``Delivered-To:``
        while directly relayed recipients keep the original sender): each non-empty
        request becomes its own queue entry holding its own body reference, all in the
        same transaction; ``DeliveryResult.queue_ids`` lists them in order (requests
        without recipients are skipped and get no id)."""

    async def append(
        self,
        mailbox_id: int,
        message: IncomingMessage,
        flags: frozenset[str] = frozenset(),
        internaldate: float | None = None,
    ) -> tuple[int, int]:
        """Returns (uidvalidity, uid). Raises OverQuota, NotFound."""

    async def message_infos(self, mailbox_id: int) -> list[MessageInfo]:
        """Every message in UID order."""

    async def get_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[StoredMessage]:
        """Those of ``uids`` that exist, in UID order, with metadata."""

    async def open_body(self, message: StoredMessage) -> Body: ...

    async def set_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        flags: frozenset[str],
        mode: FlagMode,
        unchanged_since: int | None = None,
    ) -> list[FlagUpdate]:
        """Only messages whose flags actually changed get a new modseq and are returned."""

    async def copy(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> CopyResult:
        """Raises OverQuota when the destination account cannot take the copies."""

    async def move(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> CopyResult:
        """Copy then expunge from the source, atomically (RFC 6851)."""

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Expunge \\Deleted messages (only among ``uids`` when given); returns UIDs."""

    async def delete_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        """Expunge exactly ``uids`` regardless of flags, atomically (POP3 UPDATE);
        returns the UIDs removed."""

    async def changes_since(self, mailbox_id: int, modseq: int) -> list[Change]:
        """Change-log rows with modseq > ``modseq`` in modseq order."""

    async def claim_recent(self, mailbox_id: int) -> int:
        """Atomically move the mailbox's first_recent_uid to uidnext and return the old
        value: UIDs >= it are \\Recent for the caller only (RFC 3501 §2.3.2)."""

    def watch(self, mailbox_id: int, listener: MailboxListener) -> Subscription:
        """Be told of committed changes to a mailbox (from any session or node)."""

    # ---- POP3 maildrop lock (RFC 1939 §8: exclusive access), across nodes
    async def lock_maildrop(self, account_id: int, owner: str, ttl: float) -> bool: ...
    async def unlock_maildrop(self, account_id: int, owner: str) -> None: ...


class ImapFastPaths(Protocol):
    """Optional store methods for IMAP SELECT, FETCH and SEARCH over large mailboxes
    (RFC 3501 §6.3.1, §6.4.4, §6.4.5). Not part of :class:`Store` so a backend without
    them still type-checks: the IMAP session finds them with ``getattr`` and falls back
    to ``message_infos`` / ``get_messages`` / ``open_body``.
    """

    async def mailbox_view(self, mailbox_id: int) -> MailboxSnapshot:
        """SELECT data from a persisted compact view kept current from the change log,
        not by loading every message row. Raises NotFound for a missing mailbox."""

    async def message_rows(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageRow]:
        """Those of ``uids`` that exist, in UID order: the per-message columns only,
        without touching the shared bodies' rows (no metadata, no prefix)."""

    async def blob_metas(self, blob_ids: Sequence[str]) -> dict[str, bytes]:
        """Parse-once metadata of the given bodies, by blob id (missing ones absent)."""

    async def message_texts(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageText]:
        """Like ``get_messages``, each with its bytes when the body is in the database
        (one query for many messages instead of an ``open_body`` each)."""
