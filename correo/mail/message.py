"""Parse once: the metadata stored with every message (DESIGN.md principle 3).

At delivery or APPEND, :func:`prepare` normalises line ends, hashes the message and
scans it once into a :class:`MessageMeta`: ENVELOPE, the MIME tree with byte offsets,
a header index for SEARCH, the Date, size and 8-bit flags. The store keeps it as opaque
JSON (``IncomingMessage.meta``); IMAP FETCH/SEARCH and POP3 answer from it and slice the
blob for body sections, never re-parsing.

Offsets are relative to ``IncomingMessage.data``, the shared body. A stored message is
read as ``prefix + data`` (``StoredMessage.prefix``: Return-Path, Delivered-To), so the
fetch code adds ``len(prefix)`` to every offset, and the top-level header (``BODY[HEADER]``)
starts at 0 to include the prefix lines.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from correo.mail.envelope import Envelope, build_envelope, render_envelope
from correo.mail.headers import decode_words, parse_date, readable, to_text
from correo.mail.mime import BodyPart, ParseState, parse_entity, render_body
from correo.store.base import IncomingMessage

__all__ = [
    "HEADER_INDEX_LIMIT",
    "META_VERSION",
    "MessageMeta",
    "bodystructure",
    "envelope_json",
    "envelope_structure",
    "normalize_crlf",
    "parse",
    "prepare",
    "section_range",
]

log = logging.getLogger(__name__)

META_VERSION = 1
HEADER_INDEX_LIMIT = 64 * 1024
"""Octets of top-level header fields indexed for SEARCH (name + value, in order)."""

_FOLD_TEXT_RE = re.compile(r"[\r\n]")
_SECTION_KINDS = frozenset(("", "HEADER", "TEXT", "MIME"))
# Metadata is a tree of plain lists and dicts: no cycle check needed (saves ~25%).
_META_HEAD = b'{"v":%d,' % META_VERSION
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, check_circular=False)


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """Everything IMAP and POP3 need about a message without reading its body."""

    size: int
    """Octets of the message (without any per-recipient prefix)."""
    header_end: int
    """Offset of the top-level body: just after the blank line (RFC 5322 §2.1)."""
    envelope: Envelope
    body: BodyPart
    """The top-level entity; offsets 0, ``header_end``, ``size``."""
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Lower-cased field name → decoded values (RFC 2047), first 64 KiB of header."""
    date: int | None = None
    """Date: header as seconds since the epoch (RFC 5322 §3.3), None if absent/bad."""
    has_8bit_headers: bool = False
    """Raw non-ASCII octets in any header (RFC 6532): downgrade needed (RFC 6857)."""
    body_8bit: bool = False
    """Octets above 127 in the body (8BITMIME / BINARYMIME relaying, RFC 6152)."""

    def header_values(self, name: str) -> tuple[str, ...]:
        """Decoded values of a header field for SEARCH HEADER/FROM/SUBJECT (RFC 3501 §6.4.4)."""
        return self.headers.get(name.lower(), ())

    def to_json(self) -> bytes:
        """Compact, stable JSON (ASCII; lone surrogates for raw octets escape safely)."""
        headers = self.headers
        # tuples encode as JSON arrays: a plain dict goes to the encoder as it is
        hdrs = headers if type(headers) is dict else {k: list(v) for k, v in headers.items()}
        obj = {
            "v": META_VERSION,
            "size": self.size,
            "hend": self.header_end,
            "date": self.date,
            "h8": self.has_8bit_headers,
            "b8": self.body_8bit,
            "env": self.envelope.to_obj(),
            "body": self.body.to_obj(),
            "hdrs": hdrs,
        }
        return _ENCODER.encode(obj).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes | str) -> MessageMeta:
        """Inverse of :meth:`to_json`. ValueError for another format version (re-run
        :func:`parse` on the blob) or for data that is not metadata at all."""
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get("v") != META_VERSION:
            raise ValueError("unsupported message metadata version")
        return cls(
            size=obj["size"],
            header_end=obj["hend"],
            envelope=Envelope.from_obj(obj["env"]),
            body=BodyPart.from_obj(obj["body"]),
            headers={k: tuple(v) for k, v in obj["hdrs"].items()},
            date=obj["date"],
            has_8bit_headers=obj["h8"],
            body_8bit=obj["b8"],
        )


def envelope_json(meta: bytes) -> bytes | None:
    """The ``env`` member of :meth:`MessageMeta.to_json` output as JSON text, found
    without decoding the rest of the document (FETCH ENVELOPE over many messages).

    None when ``meta`` is not in the layout ``to_json`` writes (another version, or
    not metadata at all): decode it with :meth:`MessageMeta.from_json` then. The slice
    is exact: ``,"env":`` and ``,"body":`` cannot occur inside a JSON string, where
    every ``"`` is escaped, and the members before ``env`` are scalars.
    """
    if not meta.startswith(_META_HEAD):
        return None
    start = meta.find(b',"env":[')
    if start < 0:
        return None
    start += 7
    end = meta.find(b',"body":', start)
    if end < 0 or meta[end - 1 : end] != b"]":
        return None
    return meta[start:end]


def normalize_crlf(data: bytes) -> bytes:
    """Bare LF → CRLF (RFC 5322 §2.1 line ends); valid CRLF and lone CR stay as they are."""
    lf = data.count(b"\n")
    if lf == 0 or lf == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _header_index(fields: list[tuple[bytes, bytes]]) -> dict[str, tuple[str, ...]]:
    """SEARCH index (RFC 3501 §6.4.4 HEADER, FROM, SUBJECT...): field name → values,
    unfolded, RFC 2047-decoded, raw UTF-8 kept (RFC 6532); octets that are not UTF-8 are
    read as ISO-8859-1. Only the first HEADER_INDEX_LIMIT octets of fields count."""
    index: dict[str, list[str]] = {}
    budget = HEADER_INDEX_LIMIT
    for name, raw in fields:
        budget -= len(name) + len(raw) + 4
        if budget < 0:
            break
        text = raw.decode("ascii") if raw.isascii() else readable(to_text(raw))
        if "\n" in text:
            text = _FOLD_TEXT_RE.sub("", text)
        if "=?" in text:
            text = decode_words(text)
        key = name.decode("ascii", "replace").lower()
        values = index.get(key)
        if values is None:
            index[key] = [text.rstrip()]
        else:
            values.append(text.rstrip())
    return {k: tuple(v) for k, v in index.items()}


def parse(data: bytes) -> MessageMeta:
    """Scan a CRLF message once into :class:`MessageMeta`. Never raises on any input."""
    st = ParseState(data)
    try:
        body, fields = parse_entity(st, 0, len(data))
        envelope = build_envelope(fields)
        headers = _header_index(fields)
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps well below the limit
        body = _fallback(data)
        envelope, headers = Envelope(), {}
    return MessageMeta(
        size=len(data),
        header_end=body.body_start,
        envelope=envelope,
        body=body,
        headers=headers,
        date=parse_date(envelope.date) if envelope.date else None,
        has_8bit_headers=st.header_8bit,
        body_8bit=not data[body.body_start :].isascii(),
    )


def _fallback(data: bytes) -> BodyPart:
    """A single text/plain part covering the whole message (header-less)."""
    return BodyPart(
        type="text",
        subtype="plain",
        params=(("charset", "us-ascii"),),
        id=None,
        description=None,
        encoding="7bit",
        size=len(data),
        lines=data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0),
        md5=None,
        disposition=None,
        disposition_params=(),
        language=(),
        location=None,
        header_start=0,
        body_start=0,
        body_end=len(data),
    )


def prepare(data: bytes, *, crlf: bool = False) -> IncomingMessage:
    """Normalise, hash and parse a message for ``Store.deliver``/``append``.

    Line ends become CRLF (bare LF only; RFC 5321 §2.3.8), the SHA-256 names the blob,
    and :func:`parse` builds the metadata. Any bytes give a valid result. ``crlf`` says
    the caller already guarantees CRLF line ends (SMTP message text after the DATA
    reader or BDAT assembly, :mod:`correo.smtp.data`), so the scan for bare LFs is skipped.
    """
    if not crlf:
        data = normalize_crlf(data)
    try:
        meta = parse(data)
    except Exception:
        # A bug, not bad input (parse handles any bytes): keep the message, say so.
        log.exception("message parse failed; stored as a single text/plain part")
        meta = MessageMeta(
            size=len(data),
            header_end=0,
            envelope=Envelope(),
            body=_fallback(data),
            body_8bit=not data.isascii(),
        )
    return IncomingMessage(data=data, meta=meta.to_json())


# --------------------------------------------------------------------------- IMAP views


def envelope_structure(meta: MessageMeta, utf8: bool) -> list[Any]:
    """FETCH ENVELOPE (RFC 3501 §7.4.2) as encoder structures: None=NIL, list=( )."""
    return render_envelope(meta.envelope, utf8)


def bodystructure(meta: MessageMeta, extended: bool, utf8: bool) -> list[Any]:
    """FETCH BODY (``extended`` False) or BODYSTRUCTURE (RFC 3501 §7.4.2, RFC 9051 §7.5.2).

    Without ``utf8`` (no UTF8=ACCEPT, RFC 6855) raw UTF-8 header text is downgraded to
    encoded-words and parameter values to RFC 2231 form (RFC 6857)."""
    return render_body(meta.body, extended, utf8)


def _find_part(root: BodyPart, part: tuple[int, ...]) -> BodyPart | None:
    """RFC 3501 §6.4.5 part numbering.

    Children of a multipart are numbered from 1; a non-multipart message (or
    encapsulated message) has only part 1, itself. Going below a message/rfc822 part
    enters its encapsulated message.
    """
    cur = root
    for depth, n in enumerate(part):
        if n < 1:
            return None
        if depth > 0 and not cur.parts:
            if cur.message is None:
                return None
            cur = cur.message
        if cur.parts:
            if n > len(cur.parts):
                return None
            cur = cur.parts[n - 1]
        elif n != 1:
            return None
    return cur


def section_range(meta: MessageMeta, part: tuple[int, ...], kind: str) -> tuple[int, int] | None:
    """Byte range (start, end) of ``BODY[<part>.<kind>]`` in the message (RFC 3501 §6.4.5).

    ``kind`` is "" (the whole part; for ``part == ()`` the whole message), "HEADER",
    "TEXT" (the top-level message's, or a message/rfc822 part's encapsulated message's)
    or "MIME" (the part's own MIME header; needs a part number). HEADER ranges include
    the blank line. Returns None when the section does not exist (e.g. ``2.HEADER`` of a
    part that is not message/rfc822, or a part number out of range); RFC 3501 leaves the
    answer to the server (an empty string is usual).
    """
    kind = kind.upper()
    if kind not in _SECTION_KINDS:
        return None
    if not part:
        if kind == "":
            return 0, meta.size
        if kind == "HEADER":
            return 0, meta.header_end
        if kind == "TEXT":
            return meta.header_end, meta.size
        return None
    found = _find_part(meta.body, part)
    if found is None:
        return None
    if kind == "":
        return found.body_start, found.body_end
    if kind == "MIME":
        return found.header_start, found.body_start
    inner = found.message
    if inner is None:
        return None
    if kind == "HEADER":
        return inner.header_start, inner.body_start
    return inner.body_start, inner.body_end
