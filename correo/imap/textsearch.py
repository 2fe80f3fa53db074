"""SEARCH BODY / TEXT over a message's decoded text (RFC 3501 §6.4.4).

What is searched, as a user expects rather than as the octets happen to be encoded:

* BODY: the text of every ``text/*`` leaf (and of parts with no Content-Type, which
  default to text/plain, RFC 2045 §5.2) after undoing base64/quoted-printable and
  converting from the declared charset; plus the headers of encapsulated
  ``message/rfc822`` messages, which are part of the outer message's body. Non-text
  leaves (images, PDFs, other attachments) are not searched.
* TEXT: all of BODY plus every header block (the top-level header with its
  per-recipient prefix lines, MIME part headers, encapsulated headers), with RFC 2047
  encoded words decoded.

Matching is a case-insensitive (Unicode casefold) substring match. Parts are located
with the MIME tree from the parse-once metadata (``correo.mail.mime.BodyPart``); small
messages are read with one read, large parts are decoded incrementally chunk by chunk
(never held whole in memory).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol

from correo.imap.mimetext import (
    TextDecoder,
    codec_for,
    decode_charset,
    decode_header_value,
    transfer_decode,
)
from correo.mail.mime import BodyPart

STREAM_THRESHOLD = 1 << 20
"""Parts larger than this are decoded chunk by chunk."""


class Finder:
    """Case-insensitive search of several needles across text that arrives in pieces."""

    def __init__(self, needles: Iterable[str]) -> None:
        self.pending: dict[str, list[str]] = {}
        """Case-folded needle → the needles as given (``Foo`` and ``foo`` fold alike)."""
        for n in needles:
            self.pending.setdefault(n.casefold(), []).append(n)
        self.found: set[str] = set()
        self._tail = ""
        self._keep = max((len(n) for n in self.pending), default=1) - 1

    @property
    def done(self) -> bool:
        return not self.pending

    def feed(self, text: str) -> None:
        """Search ``text``, continuing the current stream (matches may span pieces)."""
        if not self.pending:
            return
        hay = self._tail + text.casefold()
        for folded in [n for n in self.pending if n in hay]:
            self.found.update(self.pending.pop(folded))
        self._tail = hay[-self._keep :] if self._keep > 0 else ""

    def end_stream(self) -> None:
        """The current text stream ended; the next ``feed`` does not continue it."""
        self._tail = ""

    def search(self, text: str) -> None:
        """Search one complete stream."""
        self.end_stream()
        self.feed(text)
        self.end_stream()


@dataclass(frozen=True, slots=True)
class Segment:
    """A range of the message that BODY/TEXT search: a header block or a text body."""

    role: str
    """"header" (TEXT only: top-level and MIME part headers), "message-header" (an
    encapsulated message's header: inside the outer body, so BODY too), "text" (a text
    leaf's body)."""
    start: int
    end: int
    cte: str = ""
    charset: str | None = None


def segments(root: BodyPart, shift: int = 0) -> list[Segment]:
    """The searchable ranges of a message in document order, in whole-message offsets
    (``shift`` = length of the per-recipient prefix, which joins the top-level header)."""
    out: list[Segment] = []
    stack: list[tuple[BodyPart, str]] = [(root, "header")]
    while stack:
        part, role = stack.pop()
        hstart = 0 if part is root else part.header_start + shift
        out.append(Segment(role, hstart, part.body_start + shift))
        if part.message is not None:
            stack.append((part.message, "message-header"))
        elif part.parts:
            stack.extend((p, "header") for p in reversed(part.parts))
        elif part.type == "text":
            out.append(
                Segment(
                    "text",
                    part.body_start + shift,
                    part.body_end + shift,
                    part.encoding,
                    part.param("charset"),
                )
            )
    return out


class Reader(Protocol):
    """What the scanner needs of a message: ranged reads and chunked streaming, in
    whole-message offsets."""

    async def read(self, start: int, end: int) -> bytes: ...

    def chunks(self, start: int, end: int) -> AsyncIterator[bytes]: ...


async def scan_message(
    reader: Reader,
    segs: Iterable[Segment],
    body_needles: Iterable[str],
    text_needles: Iterable[str],
) -> tuple[set[str], set[str]]:
    """Return (BODY needles found, TEXT needles found) for one message."""
    body = Finder(body_needles)
    text = Finder(text_needles)
    for seg in segs:
        if body.done and text.done:
            break
        if seg.role != "text":
            if text.done and (body.done or seg.role == "header"):
                continue
            decoded = decode_header_value(await reader.read(seg.start, seg.end))
            text.search(decoded)
            if seg.role == "message-header":
                body.search(decoded)
            continue
        if seg.end - seg.start <= STREAM_THRESHOLD:
            raw = await reader.read(seg.start, seg.end)
            content = decode_charset(transfer_decode(raw, seg.cte), seg.charset)
            body.search(content)
            text.search(content)
            continue
        body.end_stream()
        text.end_stream()
        async for piece in _decoded_chunks(reader, seg):
            body.feed(piece)
            text.feed(piece)
            if body.done and text.done:
                break
        body.end_stream()
        text.end_stream()
    return body.found, text.found


async def _decoded_chunks(reader: Reader, seg: Segment) -> AsyncIterator[str]:
    decoder = TextDecoder(seg.cte, seg.charset)
    async for chunk in reader.chunks(seg.start, seg.end):
        yield decoder.feed(chunk)
    yield decoder.feed(b"", final=True)


# --------------------------------------------------------------------------- quick miss

_CHARSET_VALUE = re.compile(rb'charset\s*=\s*"?([a-z0-9_.:+-]+)"?(?=[\s;)]|$)')


def _ascii_identity(charset: bytes) -> bool:
    """Whether the MIME charset decodes every ASCII octet to the same character."""
    known = _ASCII_IDENTITY.get(charset)
    if known is None:
        codec = codec_for(charset.decode("ascii"))
        known = codec in ("utf-8", "ascii", "latin-1") or codec.startswith(
            ("iso8859-", "cp125", "koi8-")
        )
        if len(_ASCII_IDENTITY) < 256:
            _ASCII_IDENTITY[charset] = known
    return known


_ASCII_IDENTITY: dict[bytes, bool] = {}


class RawFilter:
    """:func:`quick_miss` for one set of needles, prepared once per SEARCH."""

    __slots__ = ("folded", "unfold", "usable")

    def __init__(self, needles: Iterable[str]) -> None:
        given = list(needles)
        self.usable = all(n.isascii() and "\r" not in n and "\n" not in n for n in given)
        self.folded = [n.lower().encode("ascii") for n in given] if self.usable else []
        self.unfold = any(b" " in n or b"\t" in n for n in self.folded)
        """A match can span a header fold only through the WSP after it."""

    def miss(self, data: bytes) -> bool:
        """See :func:`quick_miss`."""
        if not self.usable or not data.isascii():
            return False
        hay = data.lower()
        if b"=?" in hay or b"base64" in hay or b"quoted-printable" in hay:
            return False
        start = hay.find(b"charset")
        while start >= 0:
            m = _CHARSET_VALUE.match(hay, start)
            if m is None or not _ascii_identity(m.group(1)):
                return False
            start = hay.find(b"charset", m.end())
        if self.unfold:
            hay = hay.translate(None, b"\r\n")
        return not any(n in hay for n in self.folded)


def quick_miss(data: bytes, needles: Iterable[str]) -> bool:
    """True when :func:`scan_message` over ``data`` (the whole message) certainly finds
    none of ``needles``: a case-insensitive octet search of the raw message suffices.

    It holds when the message is ASCII, has no encoded-word (``=?``), no base64 or
    quoted-printable part, every ``charset`` parameter names a charset that decodes
    ASCII unchanged, and every needle is ASCII without CR or LF. Then each searched
    text (header blocks unfolded, text bodies) is the raw octets with some CR/LF
    removed; a needle found in it is found in the raw octets with every CR/LF removed
    (ASCII case folding is ``lower``), and in the raw octets as they are when it has no
    space or tab (unfolding removes a CRLF only before one). Otherwise False (scan
    properly)."""
    return RawFilter(needles).miss(data)
