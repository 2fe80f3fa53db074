"""The selected mailbox as one session sees it (RFC 3501 §2.3.1, §5.2, §7.4.1).

A :class:`MailboxView` maps message sequence numbers to UIDs with one compact
``array('I')`` (4 octets a message: 100,000 messages cost 400 KB) and turns the store's
change log (``Store.changes_since``) into the untagged updates this session owes its
client. It is a pure diff: no I/O, tested without a server.

Rules it enforces:

* sequence numbers change only when this session reports ``EXPUNGE``; EXPUNGE is held
  back while a FETCH, STORE or SEARCH (non-UID) runs (RFC 3501 §7.4.1), and the message
  stays addressable by its old number until then;
* ``EXISTS`` never decreases except through ``EXPUNGE`` (RFC 3501 §7.3.1);
* ``\\Recent`` is this session's only if it claimed it (``Store.claim_recent``);
* flag changes made by this session's own STORE, already answered, are not repeated.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence, Set
from dataclasses import dataclass

from correo.imap.spec import SequenceSet
from correo.store.base import Change, ChangeKind

__all__ = [
    "Exists",
    "Expunged",
    "FlagsChanged",
    "Keywords",
    "MailboxView",
    "Recent",
    "UidSet",
    "Update",
]


@dataclass(frozen=True, slots=True)
class Expunged:
    seq: int


@dataclass(frozen=True, slots=True)
class Exists:
    count: int


@dataclass(frozen=True, slots=True)
class Recent:
    count: int


@dataclass(frozen=True, slots=True)
class FlagsChanged:
    """``* seq FETCH (FLAGS (...))`` (with UID when the client asked by UID)."""

    seq: int
    uid: int
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class Keywords:
    """``* FLAGS (...)``: the set of flags in use grew (RFC 3501 §7.2.6)."""

    flags: tuple[str, ...]


Update = Expunged | Exists | Recent | FlagsChanged | Keywords

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class UidSet(Set[int]):
    """A set of UIDs kept as a sorted ``array('I')``: 4 octets a UID, built from a slice
    of the view's UIDs in microseconds (a Python ``set`` of 100,000 ints costs
    milliseconds and megabytes), membership by bisection."""

    __slots__ = ("_a",)

    def __init__(self, uids: Iterable[int] = ()) -> None:
        """``uids``: any iterable, or an ``array('I')`` already strictly ascending (a
        slice of the view's UIDs), which is copied as is."""
        if isinstance(uids, array) and uids.typecode == "I":
            self._a: array[int] = array("I", uids)
        else:
            self._a = array("I", sorted(set(uids)))

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, int):
            return False
        a = self._a
        i = bisect_left(a, uid)
        return i < len(a) and a[i] == uid

    def __iter__(self) -> Iterator[int]:
        return iter(self._a)

    def __len__(self) -> int:
        return len(self._a)

    def __repr__(self) -> str:
        return f"UidSet({list(self._a)!r})"

    def add(self, uid: int) -> None:
        a = self._a
        if not a or uid > a[-1]:
            a.append(uid)
        elif uid not in self:
            a.insert(bisect_left(a, uid), uid)

    def remove_all(self, uids: Iterable[int]) -> None:
        gone = set(uids)
        if gone:
            self._a = array("I", (u for u in self._a if u not in gone))


class MailboxView:
    """Sequence numbers ↔ UIDs of one selected mailbox, and its pending updates."""

    def __init__(
        self,
        mailbox_id: int,
        uidvalidity: int,
        uids: Iterable[int],
        modseq: int,
        *,
        recent: Iterable[int] = (),
        keywords: Iterable[str] = (),
        readonly: bool = False,
    ) -> None:
        self.mailbox_id = mailbox_id
        self.uidvalidity = uidvalidity
        self.uids = array("I", uids)
        """UID of sequence number ``i + 1`` at index ``i``; strictly ascending."""
        self.modseq = modseq
        """Changes up to this modseq are reflected."""
        self.readonly = readonly
        self.recent = UidSet(recent)
        """UIDs that are \\Recent in this session (RFC 3501 §2.3.2)."""
        self.keywords = set(keywords)
        self._pending: set[int] = set()
        self._own: dict[int, int] = {}
        self._exists_sent = len(self.uids)
        self._recent_sent = len(self.recent)

    # ---- lookups
    def __len__(self) -> int:
        return len(self.uids)

    @property
    def flags(self) -> tuple[str, ...]:
        """The FLAGS response: system flags and every keyword in use."""
        return SYSTEM_FLAGS + tuple(sorted(self.keywords))

    def seq_of(self, uid: int) -> int | None:
        i = bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def is_expunged(self, uid: int) -> bool:
        """Expunged by someone else, not yet reported to this client."""
        return uid in self._pending

    def resolve(self, messages: SequenceSet, *, uid: bool) -> list[tuple[int, int]] | None:
        """(seq, uid) of the messages in the set, ascending; None if a sequence number
        does not exist (RFC 3501 §9: a BAD). UID sets ignore UIDs not present (§6.4.8)."""
        n = len(self.uids)
        if n == 0:
            if uid or all(a is None and b is None for a, b in messages.ranges):
                return []
            return None
        spans: list[tuple[int, int]] = []
        if uid:
            for lo, hi in messages.bounds(self.uids[-1]):
                i, j = bisect_left(self.uids, lo), bisect_left(self.uids, hi + 1)
                if i < j:
                    spans.append((i, j))
        else:
            for lo, hi in messages.bounds(n):
                if lo < 1 or hi > n:
                    return None
                spans.append((lo - 1, hi))
        spans.sort()
        out: list[tuple[int, int]] = []
        end = 0
        for i, j in spans:
            for k in range(max(i, end), j):
                out.append((k + 1, self.uids[k]))
            end = max(end, j)
        return out

    # ---- our own changes
    def own_flags(self, uid: int, modseq: int) -> None:
        """This session already reported the flags set at ``modseq`` (its STORE/FETCH)."""
        self._own[uid] = modseq

    def add_keywords(self, flags: Iterable[str]) -> Keywords | None:
        new = {f for f in flags if not f.startswith("\\")} - self.keywords
        if not new:
            return None
        self.keywords |= new
        return Keywords(self.flags)

    # ---- the diff
    def apply(
        self,
        changes: Sequence[Change],
        *,
        allow_expunge: bool,
        recent_from: int | None = None,
    ) -> list[Update]:
        """Fold ``changes`` (modseq order) into the view; return the updates to send.

        ``recent_from``: the value ``claim_recent`` returned, when this session claimed
        \\Recent for new arrivals (SELECT, not EXAMINE)."""
        flag_changes: dict[int, frozenset[str]] = {}
        new_keywords: set[str] = set()
        for ch in changes:
            self.modseq = max(self.modseq, ch.modseq)
            if ch.kind is ChangeKind.ADDED:
                if not self.uids or ch.uid > self.uids[-1]:
                    self.uids.append(ch.uid)
                    if recent_from is not None and ch.uid >= recent_from:
                        self.recent.add(ch.uid)
                    new_keywords |= ch.flags
            elif ch.kind is ChangeKind.EXPUNGED:
                if self.seq_of(ch.uid) is not None:
                    self._pending.add(ch.uid)
                    flag_changes.pop(ch.uid, None)
            elif ch.kind is ChangeKind.FLAGS:
                if ch.uid in self._pending or self.seq_of(ch.uid) is None:
                    continue
                own = self._own.get(ch.uid)
                if own is not None and ch.modseq <= own:
                    if ch.modseq == own:
                        del self._own[ch.uid]
                    continue
                flag_changes[ch.uid] = ch.flags
                new_keywords |= ch.flags
        updates: list[Update] = []
        if allow_expunge:
            updates.extend(self.flush_expunges())
        if len(self.uids) != self._exists_sent:
            self._exists_sent = len(self.uids)
            updates.append(Exists(len(self.uids)))
        if len(self.recent) != self._recent_sent:
            self._recent_sent = len(self.recent)
            updates.append(Recent(len(self.recent)))
        kw = self.add_keywords(new_keywords)
        if kw is not None:
            updates.append(kw)
        for u, flags in flag_changes.items():
            seq = self.seq_of(u)
            if seq is not None:
                updates.append(FlagsChanged(seq, u, flags))
        return updates

    def flush_expunges(self) -> list[Update]:
        """EXPUNGE responses for messages expunged elsewhere, ascending, each number
        valid at the moment it is read (RFC 3501 §7.4.1 example)."""
        if not self._pending:
            return []
        seqs = sorted(s for u in self._pending if (s := self.seq_of(u)) is not None)
        gone = self._pending
        self._pending = set()
        self.uids = array("I", (u for u in self.uids if u not in gone))
        self.recent.remove_all(gone)
        for u in gone:
            self._own.pop(u, None)
        # Messages past the last EXISTS were never announced: they vanish silently.
        announced = [s for s in seqs if s <= self._exists_sent]
        self._exists_sent -= len(announced)
        return [Expunged(s - i) for i, s in enumerate(announced)]

    def expunged_here(self, uids: Iterable[int]) -> list[Update]:
        """This session's own EXPUNGE/MOVE removed ``uids``: report them now."""
        self._pending |= {u for u in uids if self.seq_of(u) is not None}
        return self.flush_expunges()
