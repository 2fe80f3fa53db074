"""IMAP lexical layer (RFC 3501 §4, §9): atoms, strings, literals, numbers, sequence
sets, flags, dates and mailbox names, read by a :class:`Reader` over one complete
command (text plus the literals the framing layer collected). Pure functions, no I/O;
a syntax error raises :class:`Syntax`, which becomes a ``BAD``.
"""

from __future__ import annotations

import datetime as dt
import re

from correo.imap import utf7
from correo.imap.spec import SequenceSet

MAX_DEPTH = 16
"""Deepest parenthesised SEARCH program or list we accept (stack and CPU bound)."""


class Syntax(Exception):
    """The command does not follow the grammar; the message is the BAD text."""


# RFC 3501 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards /
#                             quoted-specials / resp-specials
_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
ATOM_CHARS = frozenset(range(0x01, 0x80)) - _SPECIALS
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
LIST_CHARS = ATOM_CHARS | set(b"%*]")
TAG_CHARS = ASTRING_CHARS - {ord("+")}
_FLAG_CHARS = ATOM_CHARS | {ord("\\")}
_SEQ_CHARS = frozenset(b"0123456789*:,")

SYSTEM_FLAGS = {f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")}
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = {m.upper(): i + 1 for i, m in enumerate(MONTHS)}
_DATE = re.compile(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
# date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
_DATE_TIME = re.compile(rb"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")


class Reader:
    """A cursor over one command's text with its literals (RFC 3501 §4)."""

    def __init__(self, text: bytes, literals: dict[int, bytes], *, utf8: bool = False) -> None:
        self.text = text
        self.literals = literals
        self.pos = 0
        self.utf8 = utf8
        """ENABLE UTF8=ACCEPT was given: mailbox names are UTF-8 (RFC 6855 §3)."""

    # ---- low level
    def peek(self) -> int | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def take(self, ch: bytes) -> bool:
        if self.text.startswith(ch, self.pos):
            self.pos += len(ch)
            return True
        return False

    def expect(self, ch: bytes, what: str | None = None) -> None:
        if not self.take(ch):
            raise Syntax(f"expected {what or repr(ch.decode())}")

    def sp(self) -> None:
        self.expect(b" ", "a space")

    def end(self) -> None:
        if not self.at_end():
            raise Syntax("unexpected characters at the end of the command")

    def chars(self, allowed: frozenset[int], what: str) -> bytes:
        start = self.pos
        text = self.text
        while self.pos < len(text) and text[self.pos] in allowed:
            self.pos += 1
        if self.pos == start:
            raise Syntax(f"expected {what}")
        return text[start : self.pos]

    def atom(self, what: str = "an atom") -> str:
        return self.chars(ATOM_CHARS, what).decode("ascii")

    def keyword(self) -> str:
        """An upper-cased atom such as a command or search key name."""
        return self.atom("a keyword").upper()

    def number(self) -> int:
        digits = self.chars(frozenset(b"0123456789"), "a number")
        if len(digits) > 10 or int(digits) > 0xFFFFFFFF:
            raise Syntax("number too large")
        return int(digits)

    def nz_number(self) -> int:
        n = self.number()
        if n == 0:
            raise Syntax("expected a non-zero number")
        return n

    # ---- strings (RFC 3501 §4.3)
    def literal(self) -> bytes | None:
        data = self.literals.get(self.pos)
        if data is None:
            return None
        self.pos = self.text.index(b"}", self.pos) + 1
        return data

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        text = self.text
        while True:
            if self.pos >= len(text):
                raise Syntax("unterminated quoted string")
            ch = text[self.pos]
            self.pos += 1
            if ch == 0x22:
                return bytes(out)
            if ch == 0x5C:
                if self.pos >= len(text) or text[self.pos] not in b'"\\':
                    raise Syntax('only \\" and \\\\ may be escaped in a quoted string')
                ch = text[self.pos]
                self.pos += 1
            elif ch in (0, 0x0D, 0x0A):
                raise Syntax("NUL, CR or LF in a quoted string")
            out.append(ch)

    def string(self) -> bytes:
        data = self.literal()
        if data is not None:
            return data
        if self.peek() == 0x22:
            return self.quoted()
        raise Syntax("expected a quoted string or a literal")

    def astring(self) -> bytes:
        data = self.literal()
        if data is not None:
            return data
        if self.peek() == 0x22:
            return self.quoted()
        return self.chars(ASTRING_CHARS, "a string")

    def nstring(self) -> bytes | None:
        if self.text[self.pos : self.pos + 3].upper() == b"NIL":
            self.pos += 3
            return None
        return self.string()

    def text_arg(self, what: str = "string") -> str:
        try:
            return self.astring().decode("utf-8")
        except UnicodeDecodeError:
            raise Syntax(f"{what} is not UTF-8") from None

    # ---- IMAP structures
    def mailbox(self) -> str:
        """RFC 3501 §5.1: astring in modified UTF-7 (UTF-8 once enabled, RFC 6855 §3);
        ``INBOX`` case-insensitive."""
        return mailbox_name(self.astring(), utf8=self.utf8)

    def list_mailbox(self) -> str:
        """RFC 3501 §9 list-mailbox (wildcards allowed), decoded leniently."""
        data = self.literal()
        if data is None:
            data = self.quoted() if self.peek() == 0x22 else self.chars(LIST_CHARS, "a pattern")
        if self.utf8:
            return data.decode("utf-8", "replace")
        try:
            return utf7.decode(data)
        except ValueError:
            return data.decode("utf-8", "replace")

    def seqset(self) -> SequenceSet:
        """RFC 3501 §9 sequence-set: ``1,3:5,7:*``."""
        raw = self.chars(_SEQ_CHARS, "a sequence set").decode("ascii")
        return parse_seqset(raw)

    def flag(self) -> str:
        raw = self.chars(_FLAG_CHARS, "a flag").decode("ascii")
        if raw.startswith("\\"):
            if raw.upper() == "\\RECENT":
                raise Syntax("\\Recent cannot be set (RFC 3501 §2.3.2)")
            if "\\" in raw[1:] or len(raw) == 1:
                raise Syntax("bad flag")
            return SYSTEM_FLAGS.get(raw.upper(), raw)
        if "\\" in raw:
            raise Syntax("bad flag")
        return raw

    def flag_list(self) -> frozenset[str]:
        self.expect(b"(")
        flags: set[str] = set()
        while not self.take(b")"):
            if flags:
                self.sp()
            flags.add(self.flag())
        return frozenset(flags)

    def date(self) -> dt.date:
        """RFC 3501 §9 date: ``1-Feb-1994`` or quoted."""
        quoted = self.take(b'"')
        m = _DATE.match(self.text, self.pos)
        if not m or m.group(2).decode().upper() not in _MONTH:
            raise Syntax("expected a date like 1-Feb-2026")
        self.pos = m.end()
        if quoted:
            self.expect(b'"')
        try:
            return dt.date(int(m.group(3)), _MONTH[m.group(2).decode().upper()], int(m.group(1)))
        except ValueError:
            raise Syntax("no such date") from None

    def date_time(self) -> dt.datetime:
        """RFC 3501 §9 date-time: ``"17-Jul-1996 02:44:25 -0700"``."""
        self.expect(b'"')
        m = _DATE_TIME.match(self.text, self.pos)
        if not m or m.group(2).decode().upper() not in _MONTH:
            raise Syntax('expected a date-time like "17-Jul-1996 02:44:25 -0700"')
        self.pos = m.end()
        self.expect(b'"')
        day, mon, year, hh, mm, ss, sign, zh, zm = (g.decode() for g in m.groups())
        offset = dt.timedelta(hours=int(zh), minutes=int(zm))
        try:
            return dt.datetime(
                int(year),
                _MONTH[mon.upper()],
                int(day),
                int(hh),
                int(mm),
                int(ss),
                tzinfo=dt.timezone(-offset if sign == "-" else offset),
            )
        except ValueError:
            raise Syntax("no such date-time") from None


_NOT_NET_UNICODE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def mailbox_name(raw: bytes, *, utf8: bool = False) -> str:
    if utf8:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Syntax("mailbox name is not UTF-8") from None
        if _NOT_NET_UNICODE.search(name):  # RFC 6855 §3 (Net-Unicode, RFC 5198 §2)
            raise Syntax("control character in a mailbox name")
    else:
        try:
            name = utf7.decode(raw)
        except ValueError as exc:
            raise Syntax(f"mailbox name is not valid modified UTF-7: {exc}") from None
    head, sep, rest = name.partition("/")
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def parse_seqset(raw: str) -> SequenceSet:
    ranges: list[tuple[int | None, int | None]] = []
    for item in raw.split(","):
        bounds = item.split(":")
        if len(bounds) > 2 or not all(bounds):
            raise Syntax(f"bad sequence set {raw!r}")
        vals: list[int | None] = []
        for b in bounds:
            if b == "*":
                vals.append(None)
            elif b.isdigit() and len(b) <= 10 and 0 < int(b) <= 0xFFFFFFFF:
                vals.append(int(b))
            else:
                raise Syntax(f"bad sequence set {raw!r}")
        ranges.append((vals[0], vals[-1]))
    return SequenceSet(tuple(ranges))
