"""The maildrop a POP3 session works on: a snapshot of the INBOX taken at login.

RFC 1939 §4-§6: message numbers are assigned at login and never shift during the
session; DELE only marks a message, RSET unmarks them all, and only QUIT (the UPDATE
state) removes the marked messages. Messages delivered after login stay invisible until
the next session. This module is pure bookkeeping (no I/O): the session asks it which
UIDs to fetch or expunge and gives its answers to the client.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol


class MessageRecord(Protocol):
    """What the snapshot needs of a ``correo.store.base.MessageInfo`` (no store import:
    this module stays pure)."""

    @property
    def uid(self) -> int: ...

    @property
    def size(self) -> int: ...


class MaildropError(Exception):
    """A message number the client may not use; the text goes after ``-ERR``."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One message of the snapshot."""

    number: int
    uid: int
    size: int
    """Octets as transmitted (CRLF line ends, per-recipient prefix included), before
    byte-stuffing (RFC 1939 §5 "exact size")."""


class Maildrop:
    """Numbers 1..N over the INBOX snapshot, the DELE marks and the EXPIRE 0 bookkeeping."""

    def __init__(self, mailbox_id: int, uidvalidity: int, infos: Sequence[MessageRecord]):
        self.mailbox_id = mailbox_id
        self.uidvalidity = uidvalidity
        self._entries = tuple(
            Entry(number, info.uid, info.size) for number, info in enumerate(infos, start=1)
        )
        self._deleted: set[int] = set()
        self._retrieved: set[int] = set()

    # ---- lookups
    def get(self, number: int) -> Entry:
        """The live message ``number``; MaildropError if it does not exist or is marked."""
        if not 1 <= number <= len(self._entries):
            raise MaildropError(f"no message {number}")
        if number in self._deleted:
            raise MaildropError(f"message {number} is deleted")
        return self._entries[number - 1]

    def live(self) -> Iterator[Entry]:
        """Messages not marked deleted, in number order."""
        return (e for e in self._entries if e.number not in self._deleted)

    def live_from(self, number: int) -> Iterator[Entry]:
        """Messages not marked deleted from ``number`` on (what a client reads next)."""
        return (e for e in self._entries[max(number, 1) - 1 :] if e.number not in self._deleted)

    def stat(self) -> tuple[int, int]:
        """RFC 1939 §5 STAT: (count, octets) of the messages not marked deleted."""
        count = size = 0
        for e in self.live():
            count += 1
            size += e.size
        return count, size

    def unique_id(self, entry: Entry) -> str:
        """RFC 1939 §7 UIDL: stable across sessions and restarts, 1-70 chars of 0x21-0x7E.
        A new UIDVALIDITY (the INBOX was recreated) gives every message a new id."""
        return f"{self.uidvalidity}.{entry.uid}"

    def __len__(self) -> int:
        return len(self._entries)

    # ---- changes
    def delete(self, number: int) -> Entry:
        """RFC 1939 §5 DELE: mark only; nothing reaches the store before QUIT."""
        entry = self.get(number)
        self._deleted.add(number)
        return entry

    def reset(self) -> None:
        """RFC 1939 §5 RSET: unmark every message."""
        self._deleted.clear()

    def retrieved(self, number: int) -> None:
        """RETR sent the whole message (for EXPIRE 0, RFC 2449 §6.7)."""
        self._retrieved.add(number)

    def uids_to_expunge(self, *, expire_retrieved: bool = False) -> list[int]:
        """UIDs that UPDATE removes: the DELE-marked ones, plus with ``expire_retrieved``
        (EXPIRE 0: the client may not leave mail on the server) every retrieved one."""
        numbers = self._deleted | (self._retrieved if expire_retrieved else set())
        return [self._entries[n - 1].uid for n in sorted(numbers)]
