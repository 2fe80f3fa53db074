"""Byte-stuffing and TOP for multi-line POP3 responses (sans-I/O).

RFC 1939 §3: every line of a multi-line response that begins with "." gets another "."
in front, and the response ends with ``CRLF . CRLF``.

This is on the RETR hot path, so the scan runs in C: ``bytes.find`` for "." is a
``memchr`` (a base64 or binary-free body without a single "." costs well under a
microsecond per 64 KB), and each "." found is checked against the octet before it. Text
full of "." (prose, HTML) would make that loop long, so after :data:`_SCAN_LIMIT` dots
that do not start a line the rest is handed to a compiled regular expression, which
finds ``LF "."`` about twice as fast as ``bytes.replace``. The output is a list of
pieces (slices of the input, no copies) for one final ``b"".join`` together with the
status line and the terminator.

Large bodies are sent in chunks of any size, so :class:`DotStuffer` carries the
"at the start of a line" state across chunk boundaries, and :class:`TopFilter` likewise;
a line that begins in one chunk and ends in the next is handled like any other.
"""

from __future__ import annotations

import re
from typing import Final

TERMINATOR: Final = b".\r\n"
_DOT_LINE: Final = re.compile(rb"\n\.")
_SCAN_LIMIT: Final = 16
"""Dots inside lines tolerated by the memchr loop before the regex takes over."""

Piece = bytes | memoryview


def stuff_pieces(data: bytes, at_line_start: bool = True) -> list[Piece]:
    """``data`` byte-stuffed, as pieces to concatenate (RFC 1939 §3).

    ``at_line_start`` says whether ``data[0]`` begins a line (False when ``data``
    continues a chunk that did not end with LF). Stored messages have CRLF line ends;
    a bare LF also counts as a line end here, so the output can never contain a line
    made of a single "." before the terminator.
    """
    find = data.find
    i = find(b".")
    if i < 0:
        return [data]
    view = memoryview(data)
    pieces: list[Piece] = []
    start = 0
    misses = 0
    while i >= 0:
        if data[i - 1] == 0x0A if i else at_line_start:
            pieces += (view[start:i], b".")
            start = i
        else:
            misses += 1
            if misses > _SCAN_LIMIT:  # dense dots: finish in C
                rest = data[start:]  # starts after the last stuffed line's dot, if any
                pieces.append(_DOT_LINE.sub(b"\n..", rest))
                return pieces
        i = find(b".", i + 1)
    pieces.append(view[start:])
    return pieces


def terminator(ends_with_lf: bool) -> bytes:
    """The end of a multi-line response whose data (possibly empty: pass True) did or
    did not end with LF: a CRLF is added when the data lacks its own."""
    return TERMINATOR if ends_with_lf else b"\r\n" + TERMINATOR


def stuff_reply(head: bytes, data: bytes) -> bytes:
    """A whole multi-line response: ``head`` (the status line), ``data`` byte-stuffed,
    the terminator; built with one copy of ``data``."""
    end = terminator(not data or data[-1] == 0x0A)
    return b"".join((head, *stuff_pieces(data), end))


class DotStuffer:
    """Byte-stuffing for a response sent in chunks: feed them in order, then
    :meth:`finish` for the terminator."""

    __slots__ = ("_at_line_start",)

    def __init__(self) -> None:
        self._at_line_start = True
        """True while nothing was fed, or the last octet fed was LF."""

    def feed(self, chunk: bytes) -> bytes:
        """The stuffed form of ``chunk``."""
        if not chunk:
            return b""
        pieces = stuff_pieces(chunk, self._at_line_start)
        self._at_line_start = chunk[-1] == 0x0A
        return chunk if len(pieces) == 1 and pieces[0] is chunk else b"".join(pieces)

    def finish(self) -> bytes:
        """The end of the multi-line response."""
        return terminator(self._at_line_start)


class TopFilter:
    """RFC 1939 §7 TOP msg n: the header, the blank line after it, then at most ``n``
    lines of the body. Feed chunks in order; stop reading once :attr:`done`."""

    __slots__ = ("_in_header", "_line_head", "_remaining", "done")

    def __init__(self, lines: int) -> None:
        if lines < 0:
            raise ValueError("TOP needs a non-negative number of lines")
        self._remaining = lines
        self._in_header = True
        self._line_head = b""
        """Up to two octets of the header line in progress: enough to tell a blank line
        (empty or a lone CR before LF) from any other."""
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """The part of ``chunk`` that belongs to the TOP output."""
        if self.done:
            return b""
        i, n = 0, len(chunk)
        while i < n:
            j = chunk.find(b"\n", i)
            if j < 0:
                if self._in_header:
                    self._line_head = (self._line_head + chunk[i : i + 2])[:2]
                return chunk
            if self._in_header:
                head = (self._line_head + chunk[i : min(j, i + 2)])[:2]
                self._line_head = b""
                if head in (b"", b"\r"):
                    self._in_header = False
                    if self._remaining == 0:
                        self.done = True
                        return chunk[: j + 1]
            else:
                self._remaining -= 1
                if self._remaining == 0:
                    self.done = True
                    return chunk[: j + 1]
            i = j + 1
        return chunk
