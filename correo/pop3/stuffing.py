"""Streaming transforms for multi-line POP3 responses (sans-I/O).

RETR and TOP send a message as it comes out of the blob store, in chunks of any size, so
both transforms carry their state across chunk boundaries instead of splitting the
message into lines: a 64 KB message costs a couple of ``bytes.replace`` calls, and a
line that begins in one chunk and ends in the next is handled like any other.
"""

from __future__ import annotations

from typing import Final

TERMINATOR: Final = b".\r\n"


class DotStuffer:
    """RFC 1939 §3 byte-stuffing: every line that begins with "." gets another "."; the
    response ends with ``CRLF . CRLF`` (a CRLF is added when the data lacks its own).

    Stored messages have CRLF line ends; a bare LF also counts as a line end here, so the
    output can never contain a line made of a single "." before the terminator.
    """

    __slots__ = ("_at_line_start", "_ends_with_lf")

    def __init__(self) -> None:
        self._at_line_start = True
        self._ends_with_lf = True
        """True while nothing was fed, or the last octet fed was LF."""

    def feed(self, chunk: bytes) -> bytes:
        """The stuffed form of ``chunk``."""
        if not chunk:
            return b""
        if chunk.find(b".") < 0:  # memchr: base64 parts never need stuffing
            out = chunk
        else:  # split/join is one pass; replace() scans twice (count, then copy)
            out = b"\n..".join(chunk.split(b"\n."))
            if self._at_line_start and chunk[0] == 0x2E:  # "."
                out = b"." + out
        self._at_line_start = self._ends_with_lf = chunk[-1] == 0x0A
        return out

    def finish(self) -> bytes:
        """The end of the multi-line response."""
        return TERMINATOR if self._ends_with_lf else b"\r\n" + TERMINATOR


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
