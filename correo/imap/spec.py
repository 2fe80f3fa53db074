"""Parsed forms of IMAP FETCH attributes, SEARCH keys and sequence sets.

The parser (``imap/parser.py``) produces these; ``imap/fetch.py`` and ``imap/search.py``
evaluate them; the encoder renders values. Value structures handed to the encoder use:
``None`` → NIL, ``int`` → number, ``str``/``bytes`` → string (atom/quoted/literal chosen
by the encoder), ``list`` → parenthesised list, :class:`Atom` → verbatim atom,
:class:`BodyLiteral` → a literal streamed from the blob store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from correo.store.base import Body


@dataclass(frozen=True, slots=True)
class Atom:
    """Rendered as-is (flags such as ``\\Seen``, ``NIL``-free keywords, ``RFC822.SIZE``)."""

    value: str


@dataclass(frozen=True, slots=True)
class BodyLiteral:
    """``length`` octets of ``body`` from ``offset``, sent as a literal in chunks."""

    body: Body
    offset: int
    length: int


# --------------------------------------------------------------------------- sequence sets


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """RFC 3501 §9 ``sequence-set``: ranges in any order; ``None`` stands for ``*``.

    ``3:1`` equals ``1:3``; ``*`` is the largest number in use (the last message's
    sequence number or UID), and ``n:*`` with n > max still includes max (RFC 3501 §6.4.8
    for UIDs)."""

    ranges: tuple[tuple[int | None, int | None], ...]

    def bounds(self, largest: int) -> Iterator[tuple[int, int]]:
        """Each range resolved against ``largest`` as (low, high) with low <= high."""
        for a, b in self.ranges:
            lo = largest if a is None else a
            hi = largest if b is None else b
            if lo > hi:
                lo, hi = hi, lo
            yield lo, hi

    def contains(self, n: int, largest: int) -> bool:
        return any(lo <= n <= hi for lo, hi in self.bounds(largest))

    def __str__(self) -> str:
        def one(v: int | None) -> str:
            return "*" if v is None else str(v)

        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


# --------------------------------------------------------------------------- FETCH


@dataclass(frozen=True, slots=True)
class Section:
    """RFC 3501 §6.4.5 ``section``: ``BODY[1.2.HEADER.FIELDS (From To)]``."""

    part: tuple[int, ...] = ()
    text: str = ""
    """"", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME"."""
    fields: tuple[str, ...] = ()
    """Header names for HEADER.FIELDS(.NOT), upper-cased as the response echoes them."""

    def spec(self) -> str:
        """The section as echoed in the FETCH response label."""
        parts = ".".join(str(p) for p in self.part)
        text = self.text
        if self.fields:
            text += " (" + " ".join(self.fields) + ")"
        if parts and text:
            return f"{parts}.{text}"
        return parts or text


@dataclass(frozen=True, slots=True)
class FetchAtt:
    """One FETCH data item (RFC 3501 §6.4.5).

    ``name`` is one of FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODY, BODYSTRUCTURE,
    UID, RFC822, RFC822.HEADER, RFC822.TEXT, BODY[] (with ``section``; ``peek`` for
    BODY.PEEK), BINARY[], BINARY.SIZE[] (RFC 3516, if implemented), MODSEQ."""

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None
    """(origin, octets) from ``<origin.octets>``."""

    @property
    def sets_seen(self) -> bool:
        """Non-PEEK body fetches set \\Seen (RFC 3501 §6.4.5)."""
        return (self.name in ("BODY[]", "BINARY[]") and not self.peek) or self.name in (
            "RFC822",
            "RFC822.TEXT",
        )

    def label(self) -> str:
        """The response item name: ``BODY[HEADER]<0>`` for ``BODY.PEEK[HEADER]<0.100>``."""
        if self.name in ("BODY[]", "BINARY[]", "BINARY.SIZE[]"):
            base = self.name[:-2] + "[" + (self.section.spec() if self.section else "") + "]"
            if self.partial is not None and self.name != "BINARY.SIZE[]":
                base += f"<{self.partial[0]}>"
            return base
        return self.name


# --------------------------------------------------------------------------- SEARCH

SearchValue = str | int | dt.date | SequenceSet | tuple[str, str] | None


@dataclass(frozen=True, slots=True)
class SearchKey:
    """A node of a SEARCH program (RFC 3501 §6.4.4).

    ``op`` is the upper-case key name (ALL, ANSWERED, BCC, BEFORE, BODY, CC, DELETED,
    DRAFT, FLAGGED, FROM, HEADER, KEYWORD, LARGER, NEW, NOT, OLD, ON, OR, RECENT, SEEN,
    SENTBEFORE, SENTON, SENTSINCE, SINCE, SMALLER, SUBJECT, TEXT, TO, UID, UNANSWERED,
    UNDELETED, UNDRAFT, UNFLAGGED, UNKEYWORD, UNSEEN, MODSEQ) or "AND" for a
    parenthesised list / the implicit top-level conjunction, or "SEQ" for a bare
    sequence set. ``value`` holds the argument: ``str`` for text keys (already decoded
    from the CHARSET), ``(name, value)`` for HEADER, ``int`` for LARGER/SMALLER/MODSEQ,
    ``datetime.date`` for date keys, :class:`SequenceSet` for SEQ and UID; NOT has one
    child, OR two, AND any number."""

    op: str
    value: SearchValue = None
    children: tuple[SearchKey, ...] = field(default_factory=tuple)
