"""Mailbox names: validation and normalisation shared by every backend.

Names are Unicode with ``/`` as the hierarchy separator (the IMAP layer converts modified
UTF-7, RFC 3501 §5.1.3). ``INBOX`` is case-insensitive and always spelled ``INBOX``
(RFC 3501 §5.1); only the first level is folded, so ``inbox/Sub`` becomes ``INBOX/Sub``.
"""

from __future__ import annotations

from collections.abc import Iterator

from correo.store.base import InvalidName

SEPARATOR = "/"
INBOX = "INBOX"
MAX_NAME_BYTES = 1000
"""Longest name in UTF-8 bytes: bounds the work a LIST pattern match can cost."""

_FORBIDDEN = frozenset("*%")
"""LIST wildcards (RFC 3501 §6.3.8) cannot be part of a name the client can match."""


def normalize(name: str) -> str:
    """The canonical form of ``name``, or :class:`InvalidName` saying why not.

    Trailing separators are stripped; empty levels, ``.``/``..`` levels, control
    characters (C0, DEL, C1) and the LIST wildcards ``*``/``%`` are refused.
    """
    stripped = name.rstrip(SEPARATOR)
    if not stripped:
        raise InvalidName("empty mailbox name")
    if len(stripped.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidName("mailbox name too long")
    for ch in stripped:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            raise InvalidName("control character in mailbox name")
        if ch in _FORBIDDEN:
            raise InvalidName(f"{ch!r} is not allowed in a mailbox name")
        if 0xD800 <= code <= 0xDFFF:
            raise InvalidName("invalid character in mailbox name")
    levels = stripped.split(SEPARATOR)
    for level in levels:
        if not level:
            raise InvalidName("empty hierarchy level in mailbox name")
        if level in (".", ".."):
            raise InvalidName(f"{level!r} is not a valid hierarchy level")
    if levels[0].upper() == INBOX:
        levels[0] = INBOX
    return SEPARATOR.join(levels)


def is_inbox(name: str) -> bool:
    """True for a (normalised) name that is INBOX itself, not a child of it."""
    return name == INBOX


def parents(name: str) -> Iterator[str]:
    """Every ancestor of a normalised name, outermost first: ``a/b/c`` → ``a``, ``a/b``."""
    levels = name.split(SEPARATOR)
    for i in range(1, len(levels)):
        yield SEPARATOR.join(levels[:i])


def is_descendant(name: str, ancestor: str) -> bool:
    """True when ``name`` lies strictly below ``ancestor`` in the hierarchy."""
    return name.startswith(ancestor + SEPARATOR)
