"""RFC 5322 address lists and the IMAP ENVELOPE (RFC 3501 §7.4.2, RFC 9051 §7.5.2).

The envelope keeps header values *raw* (unfolded, encoded-words left for the client to
decode, raw UTF-8 kept as ``str``); address lists are parsed into
(name, adl, mailbox, host) quadruples with group syntax as RFC 3501 prescribes: a group
start is ``(NIL NIL "group" NIL)`` and its end ``(NIL NIL NIL NIL)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from correo.mail.headers import encode_words, imap_text, readable, strip_crlf, to_text, unfold

__all__ = [
    "MAX_ADDRESSES",
    "MAX_FIELD_CHARS",
    "MISSING_DOMAIN",
    "Address",
    "Envelope",
    "build_envelope",
    "parse_address_list",
    "render_envelope",
]

MAX_FIELD_CHARS = 65_536
"""Envelope values longer than this are cut (bounds the metadata of hostile headers)."""
MAX_ADDRESSES = 10_000
"""Most addresses parsed from one header field."""

MISSING_DOMAIN = "MISSING_DOMAIN"
"""Host given for an address without ``@domain`` (``From: root``), as Dovecot does: a NIL
host would read as a group start (RFC 3501 §7.4.2)."""


@dataclass(frozen=True, slots=True)
class Address:
    """One RFC 3501 §7.4.2 address structure; all four NIL marks a group end."""

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None

    def to_list(self) -> list[str | None]:
        return [self.name, self.adl, self.mailbox, self.host]


GROUP_END = Address(None, None, None, None)


@dataclass(frozen=True, slots=True)
class Envelope:
    """RFC 3501 §7.4.2 ENVELOPE fields, in order. Address fields are None when the header
    is absent or empty; ``sender``/``reply_to`` already default to ``from_``."""

    date: str | None = None
    subject: str | None = None
    from_: tuple[Address, ...] | None = None
    sender: tuple[Address, ...] | None = None
    reply_to: tuple[Address, ...] | None = None
    to: tuple[Address, ...] | None = None
    cc: tuple[Address, ...] | None = None
    bcc: tuple[Address, ...] | None = None
    in_reply_to: str | None = None
    message_id: str | None = None

    def to_obj(self) -> list[Any]:
        def addrs(v: tuple[Address, ...] | None) -> list[list[str | None]] | None:
            return None if v is None else [a.to_list() for a in v]

        return [
            self.date,
            self.subject,
            addrs(self.from_),
            addrs(self.sender),
            addrs(self.reply_to),
            addrs(self.to),
            addrs(self.cc),
            addrs(self.bcc),
            self.in_reply_to,
            self.message_id,
        ]

    @classmethod
    def from_obj(cls, obj: Sequence[Any]) -> Envelope:
        def addrs(v: Any) -> tuple[Address, ...] | None:
            return None if v is None else tuple(Address(*a) for a in v)

        return cls(
            obj[0],
            obj[1],
            addrs(obj[2]),
            addrs(obj[3]),
            addrs(obj[4]),
            addrs(obj[5]),
            addrs(obj[6]),
            addrs(obj[7]),
            obj[8],
            obj[9],
        )


# --------------------------------------------------------------------------- RFC 5322 parser

# Tokens: quoted-string, domain-literal, comment (handled apart), specials, atoms (which
# here include "." so that dot-atoms stay one token, and any 8-bit text, RFC 6532 §3.2).
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<qs>"(?:[^"\\]|\\.)*"?)
  | (?P<dl>\[(?:[^\[\]\\]|\\.)*\]?)
  | (?P<sp>[<>@,;:])
  | (?P<cm>\()
  | (?P<at>[^ \t\r\n"\[\]<>@,;:()\\]+|[\\\])])
    """,
    re.X | re.S,
)
_QP_RE = re.compile(r"\\(.)", re.S)
_ATOM_CHARS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\U0010ffff]+"
_DOT_ATOM_RE = re.compile(_ATOM_CHARS + r"(?:\." + _ATOM_CHARS + r")*\Z")
# Fast path for lists of the common ``local@domain`` and ``Name <local@domain>`` forms;
# anything else (comments, groups, routes, escapes, odd spacing) takes the full parser.
_ATEXT = r"[^\s\"(),:;<>@\[\]\\]+"
_SIMPLE_ITEM_RE = re.compile(
    r"[ \t]*(?:"
    r"(?:(?P<n>[^\s\"(),:;<>@\[\]\\]+(?: [^\s\"(),:;<>@\[\]\\]+)*)|\"(?P<q>[^\"\\]*)\")?"
    r"[ \t]*<(?P<l>" + _ATEXT + r")@(?P<d>" + _ATEXT + r")>"
    r"|(?P<l2>" + _ATEXT + r")@(?P<d2>" + _ATEXT + r"))[ \t]*(?:,|\Z)"
)

_Tok = tuple[str, str, bool]
"""(kind, text, preceded by whitespace)"""


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos, n, space = 0, len(text), False
    comment = ""
    while pos < n:
        m = _TOKEN_RE.match(text, pos)
        if m is None:  # pragma: no cover - the pattern matches every character
            pos += 1
            continue
        kind = m.lastgroup or "at"
        if kind == "ws":
            space = True
            pos = m.end()
            continue
        if kind == "cm":
            # RFC 5322 §3.2.2: comments nest; keep the text of the last one as a name
            # of last resort (``a@b (Real Name)``).
            depth, i, start = 1, m.end(), m.end()
            while i < n and depth:
                c = text[i]
                if c == "\\":
                    i += 1
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                i += 1
            comment = text[start : i - 1 if depth == 0 else i].strip()
            toks.append(("cm", comment, space))
            space, pos = True, i
            continue
        toks.append((kind, m.group(), space))
        space = False
        pos = m.end()
    return toks


def _unquote(tok: _Tok) -> str:
    if tok[0] == "qs":
        inner = tok[1][1:-1] if len(tok[1]) > 1 and tok[1].endswith('"') else tok[1][1:]
        return _QP_RE.sub(r"\1", inner)
    return tok[1]


def _phrase(toks: Sequence[_Tok]) -> str | None:
    """Display name: words joined by one space, quotes removed (RFC 5322 §3.2.5)."""
    out: list[str] = []
    for tok in toks:
        if tok[0] == "cm":
            continue
        word = _unquote(tok)
        if out and tok[2]:
            out.append(" ")
        out.append(word)
    name = "".join(out).strip()
    return name or None


def _local_part(toks: Sequence[_Tok]) -> str:
    """RFC 5322 §3.4.1 local-part; quoted forms stay quoted unless a dot-atom suffices."""
    words = [t for t in toks if t[0] != "cm"]
    if len(words) == 1 and words[0][0] == "qs":
        inner = _unquote(words[0])
        if _DOT_ATOM_RE.match(inner):
            return inner
        return '"' + inner.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "".join(t[1] for t in words)


def _last_comment(toks: Iterable[_Tok]) -> str | None:
    name = None
    for t in toks:
        if t[0] == "cm" and t[1]:
            name = t[1]
    return name


class _Parser:
    """Recursive descent over tokens for RFC 5322 §3.4 address-list (and obs- forms)."""

    def __init__(self, toks: list[_Tok]) -> None:
        self.toks = toks
        self.i = 0
        self.out: list[Address] = []

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def parse(self) -> list[Address]:
        while self.i < len(self.toks) and len(self.out) < MAX_ADDRESSES:
            self.address(in_group=False)
        return self.out

    def address(self, in_group: bool) -> None:
        start = self.i
        toks = self.toks
        # Collect a phrase / local part up to a structural special.
        while self.i < len(toks):
            kind, text, _ = toks[self.i]
            if kind == "sp" and text in "<:@,;":
                break
            if kind == "sp" and text == ">":
                self.i += 1  # stray ">" — skip
                continue
            self.i += 1
        words = toks[start : self.i]
        tok = self.peek()
        sp = tok[1] if tok is not None and tok[0] == "sp" else ""
        if sp == "<":
            self.i += 1
            self.angle(words)
        elif sp == ":" and not in_group:
            self.i += 1
            self.out.append(Address(None, None, _phrase(words) or "", None))
            while self.i < len(toks) and len(self.out) < MAX_ADDRESSES:
                t = toks[self.i]
                if t[0] == "sp" and t[1] == ";":
                    self.i += 1
                    break
                self.address(in_group=True)
            self.out.append(GROUP_END)
        elif sp == "@":
            self.i += 1
            host = self.domain()
            local = _local_part(words)
            self.out.append(Address(_last_comment(toks[start : self.i]), None, local, host))
        else:
            if sp in (",", ":") or (sp == ";" and not in_group):
                self.i += 1
            elif sp == ";":
                pass  # ends the enclosing group; the caller consumes it
            local = _local_part(words)
            if local:
                self.out.append(Address(_last_comment(words), None, local, MISSING_DOMAIN))
        # Consume the separator after an address.
        tok = self.peek()
        if tok is not None and tok[0] == "sp" and tok[1] == ",":
            self.i += 1

    def domain(self) -> str:
        parts: list[str] = []
        toks = self.toks
        while self.i < len(toks):
            kind, text, _ = toks[self.i]
            if kind == "sp" and text in ",;<>:@":
                break
            if kind != "cm":
                parts.append(text)
            self.i += 1
        return "".join(parts) or MISSING_DOMAIN

    def angle(self, words: Sequence[_Tok]) -> None:
        """``[phrase] "<" [route ":"] addr-spec ">"`` (RFC 5322 §3.4, obs-route §4.4)."""
        toks = self.toks
        start = self.i
        end = start
        while end < len(toks) and not (toks[end][0] == "sp" and toks[end][1] == ">"):
            end += 1
        inner = [t for t in toks[start:end] if t[0] != "cm"]
        self.i = min(end + 1, len(toks))
        adl = None
        colon = next((k for k, t in enumerate(inner) if t[0] == "sp" and t[1] == ":"), -1)
        if colon >= 0:
            route = "".join(t[1] for t in inner[:colon])
            adl = route or None
            inner = inner[colon + 1 :]
        at = -1
        for k in range(len(inner) - 1, -1, -1):
            if inner[k][0] == "sp" and inner[k][1] == "@":
                at = k
                break
        name = _phrase(words)
        if not inner:
            # "<>" (null address): RFC 3501 gives no form; an empty mailbox keeps it visible.
            self.out.append(Address(name, adl, "", MISSING_DOMAIN))
            return
        if at < 0:
            self.out.append(Address(name, adl, _local_part(inner), MISSING_DOMAIN))
            return
        host = "".join(t[1] for t in inner[at + 1 :]) or MISSING_DOMAIN
        self.out.append(Address(name, adl, _local_part(inner[:at]), host))


def parse_address_list(value: str) -> tuple[Address, ...]:
    """RFC 5322 §3.4 address-list → RFC 3501 address structures. Never raises.

    Names are returned raw (encoded-words intact, RFC 3501 §7.4.2); domains keep their
    case. Garbage yields best-effort addresses rather than an error.
    """
    value = strip_crlf(value)
    simple = _parse_simple(value)
    if simple is not None:
        return simple
    return tuple(_Parser(_tokenize(value)).parse())


def _parse_simple(value: str) -> tuple[Address, ...] | None:
    out: list[Address] = []
    pos, n = 0, len(value)
    while pos < n and len(out) < MAX_ADDRESSES:
        m = _SIMPLE_ITEM_RE.match(value, pos)
        if m is None or m.end() == pos:
            return None
        local = m.group("l")
        if local is not None:
            name = m.group("n")
            if name is None:
                q = m.group("q")
                name = (q.strip() or None) if q is not None else None
            out.append(Address(name, None, local, m.group("d")))
        else:
            out.append(Address(None, None, m.group("l2"), m.group("d2")))
        pos = m.end()
    return tuple(out)


# --------------------------------------------------------------------------- building

_ENVELOPE_FIELDS = frozenset(
    (
        b"date",
        b"subject",
        b"from",
        b"sender",
        b"reply-to",
        b"to",
        b"cc",
        b"bcc",
        b"in-reply-to",
        b"message-id",
    )
)


def build_envelope(fields: Iterable[tuple[bytes, bytes]]) -> Envelope:
    """RFC 3501 §7.4.2 envelope from raw header fields (the first of each name counts).

    Values are unfolded and trimmed but otherwise raw (cut at MAX_FIELD_CHARS). Sender
    and Reply-To default to From when absent or empty, as RFC 3501 requires.
    """
    first: dict[bytes, str] = {}
    for name, raw in fields:
        key = name.lower()
        if key in _ENVELOPE_FIELDS and key not in first:
            first[key] = strip_crlf(to_text(unfold(raw[: MAX_FIELD_CHARS * 4])))[
                :MAX_FIELD_CHARS
            ].strip()

    def addrs(key: bytes) -> tuple[Address, ...] | None:
        value = first.get(key)
        return (parse_address_list(value) or None) if value else None

    from_ = addrs(b"from")
    return Envelope(
        date=first.get(b"date"),
        subject=first.get(b"subject"),
        from_=from_,
        sender=addrs(b"sender") or from_,
        reply_to=addrs(b"reply-to") or from_,
        to=addrs(b"to"),
        cc=addrs(b"cc"),
        bcc=addrs(b"bcc"),
        in_reply_to=first.get(b"in-reply-to"),
        message_id=first.get(b"message-id"),
    )


# --------------------------------------------------------------------------- rendering


def _ascii_host(host: str) -> str:
    """IDNA A-labels for a UTF-8 domain (RFC 6857 §3.1.5), else encoded-words."""
    try:
        return host.encode("idna").decode("ascii").replace("\x00", "")
    except (UnicodeError, ValueError):
        return encode_words(host.replace("\x00", ""))


def _render_addresses(
    addrs: tuple[Address, ...] | None, utf8: bool
) -> list[list[str | bytes | None]] | None:
    if not addrs:
        return None
    out: list[list[str | bytes | None]] = []
    for a in addrs:
        if utf8 or all(v is None or v.isascii() for v in (a.name, a.adl, a.mailbox, a.host)):
            out.append(
                [
                    None if a.name is None else imap_text(a.name, True),
                    None if a.adl is None else imap_text(a.adl, True),
                    None if a.mailbox is None else imap_text(a.mailbox, True),
                    None if a.host is None else imap_text(a.host, True),
                ]
            )
            continue
        name = None if a.name is None else imap_text(a.name, False)
        if a.host is None or a.mailbox is None or a.mailbox.isascii():
            # Group marker or ASCII local part: only the name/host need downgrading.
            mailbox = None if a.mailbox is None else imap_text(a.mailbox, False)
            host = None if a.host is None else _ascii_host(a.host)
            adl = None if a.adl is None else imap_text(a.adl, False)
            out.append([name, adl, mailbox, host])
            continue
        # RFC 6857 §3.1.4-5: a non-ASCII local part cannot be expressed; the address
        # becomes an empty group whose display name carries it as encoded-words.
        label = readable(a.mailbox) + "@" + readable(a.host)
        if a.name:
            label = readable(a.name) + " <" + label + ">"
        out.append([None, None, encode_words(label), None])
        out.append([None, None, None, None])
    return out


def render_envelope(env: Envelope, utf8: bool) -> list[Any]:
    """The ENVELOPE value (RFC 3501 §7.4.2 / RFC 9051 §7.5.2) as encoder structures.

    ``utf8`` False applies the RFC 6857 downgrade to raw 8-bit header text."""
    conv: Callable[[str | None], str | bytes | None] = lambda v: (  # noqa: E731
        None if v is None else imap_text(v, utf8)
    )
    return [
        conv(env.date),
        conv(env.subject),
        _render_addresses(env.from_, utf8),
        _render_addresses(env.sender, utf8),
        _render_addresses(env.reply_to, utf8),
        _render_addresses(env.to, utf8),
        _render_addresses(env.cc, utf8),
        _render_addresses(env.bcc, utf8),
        conv(env.in_reply_to),
        conv(env.message_id),
    ]
