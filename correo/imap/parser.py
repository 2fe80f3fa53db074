"""Sans-I/O IMAP command reader (RFC 3501 §2.2, §4.3; RFC 7888 LITERAL+).

Shape of h11: :meth:`CommandReader.receive_data` takes bytes from the network,
:meth:`CommandReader.next_event` returns the next event or :data:`NEED_DATA`. Literals
are handled here, not by the session: a synchronising literal ``{n}`` that is within the
limits yields :class:`ContinuationRequest` (the session writes ``+``) and the parser
keeps reading the same command; the line is assembled once and parsed once by
``grammar.py`` when its last segment arrives.

Limits and the reasoning behind them (a client must not make us hold unbounded memory):

* command text outside literals: ``max_line_length`` octets in total. A longer line is
  answered ``BAD`` and skipped up to its end, without being buffered.
* a literal: ``max_literal_size`` octets, except in APPEND once authenticated where the
  message may be up to ``max_message_size``. An over-limit synchronising literal is
  refused before the client sends it (:class:`LiteralTooBig`, the session answers
  ``NO [TOOBIG]`` for APPEND, ``BAD`` otherwise); an over-limit non-synchronising one
  is read and thrown away without being stored, then the command is answered
  (RFC 7888 §4 allows this or ``BYE``).
* literals per command: :data:`MAX_LITERALS`, and their total outside APPEND is
  bounded by four times ``max_literal_size``.
* nesting depth: ``grammar.MAX_DEPTH``.
* ``BAD`` replies: after ``max_errors`` the session says ``BYE`` (:attr:`too_many_errors`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from correo.imap import grammar
from correo.imap.commands import Command

__all__ = [
    "NEED_DATA",
    "BadCommand",
    "CommandReader",
    "CommandReceived",
    "ContinuationRequest",
    "Event",
    "LineReceived",
    "LiteralTooBig",
    "NeedData",
]


class NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()
MAX_LITERALS = 64


@dataclass(frozen=True, slots=True)
class CommandReceived:
    command: Command


@dataclass(frozen=True, slots=True)
class ContinuationRequest:
    """A synchronising literal was accepted: send ``+`` so the client sends it."""

    size: int


@dataclass(frozen=True, slots=True)
class BadCommand:
    """The command cannot be executed: answer ``tag status [code] reason``."""

    tag: str
    """``*`` when the tag itself could not be read."""
    reason: str
    code: str | None = None
    status: str = "BAD"


@dataclass(frozen=True, slots=True)
class LiteralTooBig:
    """A literal over the limit (RFC 7888 §4); the command is dropped."""

    tag: str
    command: str
    size: int
    limit: int
    synchronizing: bool


@dataclass(frozen=True, slots=True)
class LineReceived:
    """A raw line requested with :meth:`CommandReader.want_line` (SASL, IDLE ``DONE``)."""

    data: bytes


Event = CommandReceived | ContinuationRequest | BadCommand | LiteralTooBig | LineReceived

# RFC 3501 §9 literal = "{" number "}" CRLF; RFC 7888 literal+ = "{" number "+}" CRLF
_LITERAL_AT_END = re.compile(rb"\{(\d+)(\+?)\}\Z")
"""Also ends an RFC 4466 ``literal8`` (``~{n}``): the ``~`` stays in the text."""
_HEAD = re.compile(rb"([^ \r\n]+)(?: ([A-Za-z]+)(?: ([A-Za-z]+))?)?")

_LINE, _LITERAL, _DISCARD, _SKIPLINE = range(4)


class CommandReader:
    """Turns client bytes into IMAP command events (server side)."""

    def __init__(
        self,
        *,
        max_line_length: int = 65536,
        max_literal_size: int = 65536,
        max_message_size: int = 25 * 1024 * 1024,
        max_errors: int = 20,
    ) -> None:
        self.max_line_length = max_line_length
        self.max_literal_size = max_literal_size
        self.max_message_size = max_message_size
        self.append_limit = max_literal_size
        """Largest APPEND literal; raised to ``max_message_size`` by :meth:`authenticated`."""
        self.max_errors = max_errors
        self.errors = 0
        self.utf8 = False
        """Set after ENABLE UTF8=ACCEPT: mailbox names are read as UTF-8 (RFC 6855 §3)."""
        self._buf = bytearray()
        self._scan_from = 0
        self._mode = _LINE
        self._want_line = False
        self._discard = 0
        self._reset_command()

    # ---- public
    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def authenticated(self) -> None:
        """Allow APPEND literals up to ``max_message_size`` from now on."""
        self.append_limit = self.max_message_size

    def want_line(self) -> None:
        """Return the next line raw as :class:`LineReceived` (AUTHENTICATE, IDLE)."""
        self._want_line = True

    def discard_input(self) -> int:
        """Forget every buffered byte (STARTTLS: nothing pipelined survives the upgrade)."""
        n = len(self._buf)
        self._buf.clear()
        self._scan_from = 0
        self._mode = _LINE
        self._reset_command()
        return n

    @property
    def too_many_errors(self) -> bool:
        return self.errors >= self.max_errors

    @property
    def in_command(self) -> bool:
        """True while a command is partly received (e.g. inside an APPEND literal)."""
        return bool(self._text) or self._mode != _LINE or bool(self._buf)

    def next_event(self) -> Event | NeedData:
        while True:
            if self._mode == _LITERAL:
                if not self._fill_literal():
                    return NEED_DATA
                continue
            if self._mode == _DISCARD:
                take = min(self._discard, len(self._buf))
                del self._buf[:take]
                self._discard -= take
                if self._discard:
                    return NEED_DATA
                self._mode = _SKIPLINE
                continue
            line = self._take_line()
            if line is None:
                if self._mode == _LINE and len(self._text) + len(self._buf) > self.max_line_length:
                    return self._line_too_long()
                if self._mode == _SKIPLINE and len(self._buf) > 32:
                    del self._buf[:-32]  # keep a possible "{123+}\r" that spans reads
                    self._scan_from = len(self._buf)
                return NEED_DATA
            if self._mode == _SKIPLINE:
                self._skip(line)
                continue
            if self._want_line:
                self._want_line = False
                if len(line) > self.max_line_length:
                    return self._error(BadCommand("*", "line too long"))
                return LineReceived(line)
            event = self._segment(line)
            if event is not None:
                return event

    # ---- internals
    def _reset_command(self) -> None:
        self._text = bytearray()
        self._literals: dict[int, bytes] = {}
        self._literal_total = 0
        self._tag = "*"
        self._word = ""
        self._lit_need = 0
        self._lit_pos = 0
        self._lit_buf = bytearray()

    def _take_line(self) -> bytes | None:
        idx = self._buf.find(b"\n", self._scan_from)
        if idx < 0:
            self._scan_from = len(self._buf)
            return None
        end = idx - 1 if idx and self._buf[idx - 1] == 0x0D else idx
        line = bytes(self._buf[:end])
        del self._buf[: idx + 1]
        self._scan_from = 0
        return line

    def _fill_literal(self) -> bool:
        take = min(self._lit_need, len(self._buf))
        if take:
            self._lit_buf += self._buf[:take]
            del self._buf[:take]
            self._lit_need -= take
        if self._lit_need:
            return False
        self._literals[self._lit_pos] = bytes(self._lit_buf)
        self._lit_buf = bytearray()
        self._mode = _LINE
        return True

    def _skip(self, line: bytes) -> None:
        """Drop one line of a refused command; follow its non-synchronising literals."""
        m = _LITERAL_AT_END.search(line)
        if m and m.group(2):
            self._mode = _DISCARD
            self._discard = int(m.group(1))
        else:
            self._mode = _LINE

    def _error(self, event: BadCommand | LiteralTooBig) -> BadCommand | LiteralTooBig:
        if isinstance(event, LiteralTooBig) or event.status == "BAD":
            self.errors += 1
        self._reset_command()
        return event

    def _line_too_long(self) -> BadCommand | LiteralTooBig:
        raw_line, self._want_line = self._want_line, False
        if not self._text and not raw_line:
            self._head(bytes(self._buf[:200]))
        self._mode = _SKIPLINE
        return self._error(BadCommand(self._tag, "command line too long"))

    def _head(self, line: bytes) -> None:
        m = _HEAD.match(line)
        if m is None:
            return
        tag = m.group(1)
        if all(ch in grammar.TAG_CHARS for ch in tag) and len(tag) <= 256:
            self._tag = tag.decode("ascii")
        word = (m.group(2) or b"").upper()
        if word == b"UID" and m.group(3):
            word += b" " + m.group(3).upper()
        self._word = word.decode("ascii")

    def _segment(self, line: bytes) -> Event | None:
        """One line of a command, up to CRLF; returns an event or None to keep reading."""
        if not self._text:
            self._head(line)
        if len(self._text) + len(line) > self.max_line_length:
            self._skip(line)
            return self._error(BadCommand(self._tag, "command line too long"))
        m = _LITERAL_AT_END.search(line)
        if m is None:
            self._text += line
            return self._finish()
        size = int(m.group(1))
        sync = not m.group(2)
        is_append = self._word == "APPEND"
        limit = self.append_limit if is_append else self.max_literal_size
        total_ok = is_append or self._literal_total + size <= 4 * self.max_literal_size
        if size > limit or not total_ok or len(self._literals) >= MAX_LITERALS:
            event = LiteralTooBig(self._tag, self._word, size, limit, sync)
            if not sync:
                self._mode = _DISCARD
                self._discard = size
            return self._error(event)
        self._lit_pos = len(self._text) + m.start()
        self._text += line
        self._literal_total += size
        self._lit_need = size
        self._mode = _LITERAL
        if sync:
            return ContinuationRequest(size)
        return None

    def _finish(self) -> Event:
        text, literals, tag = bytes(self._text), self._literals, self._tag
        self._reset_command()
        if not text.strip():
            return self._error(BadCommand("*", "empty command line"))
        r = grammar.Reader(text, literals, utf8=self.utf8)
        try:
            tag = r.chars(grammar.TAG_CHARS, "a tag").decode("ascii")
            if not r.take(b" "):
                return self._error(BadCommand("*", "expected a tag, a space and a command"))
            word = r.keyword()
            return CommandReceived(grammar.parse_command(tag, word, r))
        except grammar.BadCharset as exc:
            code = "BADCHARSET (" + " ".join(grammar.SEARCH_CHARSETS) + ")"
            return BadCommand(tag, str(exc), code, status="NO")
        except grammar.Syntax as exc:
            return self._error(BadCommand(tag, str(exc)))
