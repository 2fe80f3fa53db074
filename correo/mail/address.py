"""RFC 5321 paths for SMTP: ``MAIL FROM:<...>`` and ``RCPT TO:<...>`` arguments.

ABNF (RFC 5321 §4.1.2, with RFC 6531 §3.3 for SMTPUTF8)::

    Reverse-path   = Path / "<>"
    Forward-path   = Path
    Path           = "<" [ A-d-l ":" ] Mailbox ">"
    A-d-l          = At-domain *( "," At-domain )      ; source route: accepted, ignored
    Mailbox        = Local-part "@" ( Domain / address-literal )
    Local-part     = Dot-string / Quoted-string
    Dot-string     = Atom *("."  Atom)
    Quoted-string  = DQUOTE *QcontentSMTP DQUOTE
    QcontentSMTP   = qtextSMTP / quoted-pairSMTP       ; %d32-33 / %d35-91 / %d93-126
    Domain         = sub-domain *("." sub-domain)      ; Let-dig [Ldh-str], or U-labels
    address-literal = "[" ( IPv4 / "IPv6:" IPv6 / Standardized-tag ":" 1*dcontent ) "]"

Limits (RFC 5321 §4.5.3.1): local part 64 octets, domain 255, path 256 including the
angle brackets. Errors are :class:`AddressError` carrying the reply code and enhanced
status code (RFC 3463) to answer with.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "MAX_DOMAIN",
    "MAX_LOCAL_PART",
    "MAX_PATH",
    "AddressError",
    "Path",
    "normalize_domain",
    "parse_mailbox",
    "parse_path",
    "parse_path_prefix",
    "split_subaddress",
]

MAX_LOCAL_PART = 64
"""RFC 5321 §4.5.3.1.1, in octets."""
MAX_DOMAIN = 255
"""RFC 5321 §4.5.3.1.2, in octets."""
MAX_PATH = 256
"""RFC 5321 §4.5.3.1.3, in octets, including the angle brackets."""


class AddressError(ValueError):
    """A path the SMTP server must refuse, with what to answer.

    ``code`` is 501 (syntax error in parameters, RFC 5321 §4.2.3) or 553 (mailbox name
    not allowed, e.g. UTF-8 without SMTPUTF8); ``status`` the RFC 3463 code (5.1.3 bad
    destination address syntax; callers answering MAIL may prefer 5.1.7); ``reason`` a
    short text fit for the reply line.
    """

    def __init__(self, reason: str, code: int = 501, status: str = "5.1.3") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.status = status

    def reply(self) -> str:
        """``501 5.1.3 reason`` — the reply line without CRLF."""
        return f"{self.code} {self.status} {self.reason}"


_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_STRING_RE = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*\Z")
_DOT_STRING_UTF8_RE = re.compile(
    rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*\Z"
)
_QCONTENT_RE = re.compile(r"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*\Z")
_QCONTENT_UTF8_RE = re.compile(
    r"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*\Z"
)
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\Z")
_LABEL_UTF8_RE = re.compile(
    r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?\Z"
)
_ASCII_DOMAIN_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\Z"
)
"""A whole ASCII Domain at once: labels of :data:`_LABEL_RE`, at most 63 octets each."""
_TAG_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\Z")
_DCONTENT_RE = re.compile(r"[\x21-\x5a\x5e-\x7e]+\Z")
_QPAIR_RE = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed SMTP path. The null reverse-path ``<>`` has empty local and domain;
    ``<Postmaster>`` has local ``Postmaster`` and an empty domain (RFC 5321 §4.1.1.3).

    ``local`` is in canonical form: unquoted when it is a Dot-string, otherwise a
    minimal Quoted-string (RFC 5321 §4.1.2 "SHOULD NOT" quote needlessly); its case is
    kept (RFC 5321 §2.4). ``domain`` is lower-cased.
    """

    local: str
    domain: str
    route: tuple[str, ...] = ()
    """Source-route domains (``<@a,@b:x@y>``), kept for logging only (RFC 5321 §C)."""

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    @property
    def is_postmaster(self) -> bool:
        """``<Postmaster>`` without a domain (RFC 5321 §4.1.1.3), any case."""
        return not self.domain and self.local.lower() == "postmaster"

    @property
    def address(self) -> str:
        """``local@domain``; ``""`` for the null path, ``Postmaster`` for that form."""
        if not self.domain:
            return self.local
        return f"{self.local}@{self.domain}"

    def key(self) -> str:
        """Case-insensitive lookup key (the store's convention: lower-cased address)."""
        return self.address.lower()

    @property
    def is_utf8(self) -> bool:
        """Needs SMTPUTF8 to be relayed (RFC 6531 §3.2)."""
        return not self.address.isascii()

    @property
    def is_domain_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def has_percent_hack(self) -> bool:
        """``user%host@relay``: the old %-hack relay form; refuse unless local policy
        knows the final domain (RFC 5321 §3.6.1 leaves it to the relay policy)."""
        return "%" in self.local

    @property
    def has_bang_path(self) -> bool:
        """``host!user@relay``: a UUCP bang path, a relay attempt in disguise."""
        return "!" in self.local

    def __str__(self) -> str:
        return f"<{self.address}>"


def _unquote_local(quoted: str) -> str:
    return _QPAIR_RE.sub(r"\1", quoted[1:-1])


def _canonical_local(inner: str, utf8: bool) -> str:
    """Drop needless quotes; keep quoting (with minimal escapes) when needed."""
    rx = _DOT_STRING_UTF8_RE if utf8 else _DOT_STRING_RE
    if inner and rx.match(inner):
        return inner
    return '"' + inner.replace("\\", "\\\\").replace('"', '\\"') + '"'


def normalize_domain(domain: str, *, smtputf8: bool = False) -> str:
    """Validate and lower-case a Domain or address-literal (RFC 5321 §4.1.2, §4.1.3).

    U-labels are accepted only with ``smtputf8`` (RFC 6531 §3.3). Raises AddressError.
    """
    if not domain:
        raise AddressError("missing domain")
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise AddressError("domain too long")
    if domain.startswith("["):
        return _address_literal(domain)
    if domain.isascii():
        if _ASCII_DOMAIN_RE.match(domain):
            return domain.lower()  # the common case: every label checked in one match
    elif not smtputf8:
        raise AddressError("non-ASCII domain without SMTPUTF8", 553, "5.6.7")
    rx = _LABEL_UTF8_RE if smtputf8 else _LABEL_RE
    labels = domain.split(".")
    for label in labels:
        if not label or not rx.match(label) or len(label.encode("utf-8")) > 63:
            raise AddressError("invalid domain")
    return domain.lower()


def _address_literal(literal: str) -> str:
    """RFC 5321 §4.1.3 address literals: IPv4, ``IPv6:``, or a general tagged form."""
    if not literal.endswith("]") or len(literal) < 3:
        raise AddressError("invalid address literal")
    inner = literal[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            ip6 = ipaddress.IPv6Address(inner[5:])
        except ValueError:
            raise AddressError("invalid IPv6 address literal") from None
        return f"[IPv6:{ip6.compressed}]"
    if ":" in inner:
        tag, _, content = inner.partition(":")
        if not _TAG_RE.match(tag) or not _DCONTENT_RE.match(content):
            raise AddressError("invalid address literal")
        return literal
    try:
        ip4 = ipaddress.IPv4Address(inner)
    except ValueError:
        raise AddressError("invalid IPv4 address literal") from None
    return f"[{ip4}]"


def _split_mailbox(text: str) -> tuple[str, str]:
    """Split at the ``@`` that ends the local part (a quoted local part may hold ``@``)."""
    if text.startswith('"'):
        i = 1
        while i < len(text):
            c = text[i]
            if c == "\\":
                i += 2
                continue
            if c == '"':
                break
            i += 1
        else:
            raise AddressError("unterminated quoted local part")
        if i + 1 >= len(text) or text[i + 1] != "@":
            raise AddressError("missing @domain")
        return text[: i + 1], text[i + 2 :]
    local, at, domain = text.rpartition("@")
    if not at:
        raise AddressError("missing @domain")
    return local, domain


def parse_mailbox(text: str, *, smtputf8: bool = False) -> Path:
    """Parse a bare RFC 5321 ``Mailbox`` (``local@domain``, no angle brackets)."""
    local, domain = _split_mailbox(text)
    if not local:
        raise AddressError("empty local part")
    utf8 = smtputf8
    if not local.isascii() and not smtputf8:
        raise AddressError("non-ASCII local part without SMTPUTF8", 553, "5.6.7")
    if local.startswith('"'):
        rx = _QCONTENT_UTF8_RE if utf8 else _QCONTENT_RE
        if not local.endswith('"') or len(local) < 2 or not rx.match(local[1:-1]):
            raise AddressError("invalid quoted local part")
        canonical = _canonical_local(_unquote_local(local), utf8)
    else:
        rx = _DOT_STRING_UTF8_RE if utf8 else _DOT_STRING_RE
        if not rx.match(local):
            raise AddressError("invalid local part")
        canonical = local
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    return Path(canonical, normalize_domain(domain, smtputf8=smtputf8))


def _path_end(text: str) -> int:
    """Index of the ``>`` closing a path that starts with ``<`` (quotes respected)."""
    gt = text.find(">", 1)
    if gt > 0 and '"' not in text[1:gt]:
        return gt  # no Quoted-string before the first ">": it closes the path
    i, n, quoted = 1, len(text), False
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            return i
        i += 1
    raise AddressError("path not closed with >")


def parse_path_prefix(
    text: str | bytes,
    *,
    smtputf8: bool = False,
    allow_null: bool = True,
    allow_postmaster: bool = True,
    lenient: bool = False,
) -> tuple[Path, str]:
    """Parse the path at the start of a MAIL/RCPT argument; return it and the rest
    (the ESMTP parameters, leading spaces removed).

    ``lenient`` accepts a missing pair of angle brackets (``MAIL FROM:a@b``), as many
    servers do for broken clients; the RFC 5321 §4.1.2 form is always accepted.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise AddressError("path is not UTF-8", 553, "5.6.7") from None
    if not text.startswith("<"):
        if not lenient:
            raise AddressError("path must be enclosed in <>")
        bare, _, rest = text.partition(" ")
        text = "<" + bare + ">"
        rest = rest.lstrip(" ")
        end = len(text) - 1
    else:
        end = _path_end(text)
        rest = text[end + 1 :]
        if rest and not rest.startswith(" "):
            raise AddressError("junk after path")
        rest = rest.lstrip(" ")
    path_text = text[: end + 1]
    if len(path_text.encode("utf-8")) > MAX_PATH:
        raise AddressError("path too long")
    inner = path_text[1:-1]
    if not inner:
        if not allow_null:
            raise AddressError("null path not allowed here")
        return Path("", ""), rest
    route: tuple[str, ...] = ()
    if inner.startswith("@"):
        # RFC 5321 §4.1.1.3 / Appendix C: source routes MUST be accepted, SHOULD be ignored.
        adl, colon, mailbox = inner.partition(":")
        if not colon:
            raise AddressError("invalid source route")
        hops = []
        for hop in adl.split(","):
            if not hop.startswith("@"):
                raise AddressError("invalid source route")
            hops.append(normalize_domain(hop[1:], smtputf8=smtputf8))
        route, inner = tuple(hops), mailbox
    if allow_postmaster and inner.lower() == "postmaster" and not route:
        return Path(inner, ""), rest
    path = parse_mailbox(inner, smtputf8=smtputf8)
    if route:
        path = Path(path.local, path.domain, route)
    return path, rest


def parse_path(
    text: str | bytes,
    *,
    smtputf8: bool = False,
    allow_null: bool = True,
    allow_postmaster: bool = True,
) -> Path:
    """Parse a whole RFC 5321 Reverse-path or Forward-path such as ``<a@b>``.

    The null path ``<>`` (allowed for MAIL, RFC 5321 §4.5.5) and ``<Postmaster>``
    (RCPT, §4.1.1.3) can be refused with ``allow_null``/``allow_postmaster``."""
    path, rest = parse_path_prefix(
        text, smtputf8=smtputf8, allow_null=allow_null, allow_postmaster=allow_postmaster
    )
    if rest:
        raise AddressError("junk after path")
    return path


def split_subaddress(address: str, separator: str = "+") -> tuple[str, str | None]:
    """``user+tag@d`` → (``user@d``, ``tag``); (address, None) without a tag.

    The first separator counts (``a+b+c@d`` → ``a@d``, ``b+c``); a local part that
    starts with the separator is not split. Quoted local parts are left alone.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if local.startswith('"'):
        return address, None
    base, sep, tag = local.partition(separator)
    if not sep or not base:
        return address, None
    return (f"{base}@{domain}" if at else base), tag
