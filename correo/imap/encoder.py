"""IMAP response encoding (RFC 3501 §4, §7, §9): sans-I/O, bytes out.

Strings are sent as a quoted string when that is safe (no CR, LF or NUL, short, 7-bit
unless UTF-8 was enabled; ``"`` and ``\\`` escaped) and as a literal otherwise, so a
quoted string can never carry an unescaped ``"`` or a line break. :class:`Atom` values
go out verbatim (flags, ``NIL``-free keywords); ``None`` is ``NIL``; lists are
parenthesised; a :class:`BodyLiteral` becomes a ``{n}`` header followed by the body
streamed by the session in chunks (the encoder never reads it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from correo.imap import utf7
from correo.imap.spec import Atom, BodyLiteral

__all__ = [
    "Piece",
    "astring",
    "continuation",
    "fetch_response",
    "mailbox",
    "render",
    "string",
    "tagged",
    "untagged",
]

Piece = bytes | BodyLiteral
"""What the session writes: ready bytes, or a body to stream after its ``{n}`` header."""

MAX_QUOTED = 1024
"""Longer strings go as literals (RFC 3501 §4.3 leaves the choice to the sender)."""

_ATOM_UNSAFE = re.compile(rb'[\x00-\x20\x7f-\xff(){%*"\\\]]')
"""RFC 3501 §9 atom-specials plus 8-bit: a string matching this cannot be an atom."""
_ASTRING_UNSAFE = re.compile(rb'[\x00-\x20\x7f-\xff(){%*"\\]')
_QUOTED_UNSAFE_7BIT = re.compile(rb"[\x00\r\n\x80-\xff]")
_QUOTED_UNSAFE_UTF8 = re.compile(rb"[\x00\r\n]")
_TEXT_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def string(value: str | bytes, *, utf8: bool = False) -> bytes:
    """RFC 3501 §4.3 ``string``: quoted when safe, else a synchronising literal."""
    data = _bytes(value)
    unsafe = _QUOTED_UNSAFE_UTF8 if utf8 else _QUOTED_UNSAFE_7BIT
    if len(data) <= MAX_QUOTED and not unsafe.search(data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def literal(value: str | bytes) -> bytes:
    """RFC 3501 §4.3 synchronising literal form, ``{n}`` CRLF and the octets."""
    data = _bytes(value)
    return b"{%d}\r\n" % len(data) + data


def astring(value: str | bytes, *, utf8: bool = False) -> bytes:
    """RFC 3501 §9 ``astring``: a bare atom when it is one (and not ``NIL``)."""
    data = _bytes(value)
    if data and not _ASTRING_UNSAFE.search(data) and data.upper() != b"NIL":
        return data
    return string(data, utf8=utf8)


def mailbox(name: str, *, utf8: bool = False) -> bytes:
    """A mailbox name, modified UTF-7 unless UTF-8 was enabled (RFC 3501 §5.1.3)."""
    return astring(name if utf8 else utf7.encode(name), utf8=utf8)


def text(value: str) -> bytes:
    """``resp-text`` (RFC 3501 §9): one line, control characters replaced."""
    return _TEXT_UNSAFE.sub(" ", value).encode("utf-8", "replace")


class _NotFlat(Exception):
    """The value holds something :func:`_flat` does not render (a body, a bool)."""


def _flat(value: object, utf8: bool) -> bytes:
    """The common case of :func:`render` in one recursive pass: no bodies inside."""
    t = type(value)
    if t is str and isinstance(value, str):
        if len(value) <= MAX_QUOTED and value.isascii() and value.isprintable():
            if '"' in value or "\\" in value:
                value = value.replace("\\", "\\\\").replace('"', '\\"')
            return b'"' + value.encode("ascii") + b'"'
        return string(value, utf8=utf8)
    if value is None:
        return b"NIL"
    if (t is list or t is tuple) and isinstance(value, list | tuple):
        parts = []
        for item in value:  # leaves inline: ENVELOPE is mostly short strings and NILs
            if item is None:
                parts.append(b"NIL")
            elif (
                type(item) is str
                and len(item) <= MAX_QUOTED
                and item.isascii()
                and item.isprintable()
                and '"' not in item
                and "\\" not in item
            ):
                parts.append(b'"' + item.encode("ascii") + b'"')
            else:
                parts.append(_flat(item, utf8))
        return b"(" + b" ".join(parts) + b")"
    if t is int and isinstance(value, int):
        if value < 0:
            raise ValueError("IMAP numbers are unsigned")
        return b"%d" % value
    if t is Atom and isinstance(value, Atom):
        return value.value.encode("utf-8")
    if t is bytes and isinstance(value, bytes):
        return string(value, utf8=utf8)
    raise _NotFlat


def render(value: object, out: list[Piece], *, utf8: bool = False) -> None:
    """Append the encoding of one value (the structures of ``spec.py``) to ``out``."""
    if type(value) is not BodyLiteral:
        try:
            out.append(_flat(value, utf8))
            return
        except _NotFlat:
            pass
    if value is None:
        out.append(b"NIL")
    elif isinstance(value, Atom):
        out.append(value.value.encode("utf-8"))
    elif isinstance(value, bool):
        raise TypeError("booleans have no IMAP encoding")
    elif isinstance(value, int):
        if value < 0:
            raise ValueError("IMAP numbers are unsigned")
        out.append(b"%d" % value)
    elif isinstance(value, str | bytes):
        out.append(string(value, utf8=utf8))
    elif isinstance(value, BodyLiteral):
        out.append(b"{%d}\r\n" % value.length)
        if value.length:
            out.append(value)
    elif isinstance(value, list | tuple):
        out.append(b"(")
        for i, item in enumerate(value):
            if i:
                out.append(b" ")
            render(item, out, utf8=utf8)
        out.append(b")")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as IMAP")


def _join(pieces: Iterable[Piece]) -> list[Piece]:
    """Merge adjacent byte pieces so the session does few writes."""
    merged: list[Piece] = []
    buf = bytearray()
    for piece in pieces:
        if isinstance(piece, bytes):
            buf += piece
        else:
            if buf:
                merged.append(bytes(buf))
                buf.clear()
            merged.append(piece)
    if buf:
        merged.append(bytes(buf))
    return merged


_BODY_DATA = ("BODY[", "BINARY[")
_RFC822_DATA = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT"})


def fetch_response(
    seq: int, items: Sequence[tuple[str, object]], *, utf8: bool = False
) -> list[Piece]:
    """``* seq FETCH (label value ...)`` (RFC 3501 §7.4.2)."""
    out: list[Piece] = [b"* %d FETCH (" % seq]
    for i, (label, value) in enumerate(items):
        out.append((" " if i else "").encode() + label.encode("ascii") + b" ")
        if isinstance(value, str | bytes) and (
            label.startswith(_BODY_DATA) or label in _RFC822_DATA
        ):
            out.append(literal(value))  # message content: always a literal, as clients expect
        else:
            render(value, out, utf8=utf8)
    out.append(b")\r\n")
    return _join(out)


def untagged(body: str | bytes) -> bytes:
    """``* body`` CRLF; ``body`` must already be encoded IMAP syntax."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    return b"* " + data + b"\r\n"


def tagged(tag: str, status: str, message: str, code: str | None = None) -> bytes:
    """``tag OK|NO|BAD [code] text`` (RFC 3501 §7.1); ``tag`` "*" for untagged."""
    head = f"{tag} {status} " + (f"[{code}] " if code else "")
    return head.encode("utf-8") + text(message or status) + b"\r\n"


def continuation(message: str = "Ready") -> bytes:
    """``+ text`` (RFC 3501 §7.5)."""
    return b"+ " + text(message) + b"\r\n"
