"""SMTP command lines → typed events (RFC 5321 §4.1, with the ESMTP parameters of
RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 3461 DSN and RFC 4954 AUTH=).

Pure functions over ``str``; no state. Each parser returns an event or a
:class:`~correo.smtp.replies.Reply` saying why the line is refused (the protocol core
turns that into an :class:`Invalid` event).

Paths are parsed by :mod:`correo.mail.address` (RFC 5321 §4.1.2, RFC 6531 §3.3 for
UTF-8 with SMTPUTF8): source routes (``<@a,@b:user@c>``) are accepted and ignored
(Appendix C), needless quotes dropped, domains lower-cased. ``%`` and ``!`` in local
parts are kept verbatim: the policy never relays them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from correo.mail.address import AddressError, Path, parse_path_prefix
from correo.smtp import replies
from correo.smtp.replies import Reply

# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Hello:
    """HELO (``extended=False``) or EHLO (RFC 5321 §4.1.1.1)."""

    domain: str
    extended: bool


@dataclass(frozen=True, slots=True)
class Mail:
    """MAIL FROM (RFC 5321 §4.1.1.2) with its parameters."""

    sender: str
    """Normalised address (domain lower-cased, needless quotes removed); "" for ``<>``."""
    size: int | None = None
    """RFC 1870 SIZE declaration."""
    body: str | None = None
    """RFC 6152: "7BIT" or "8BITMIME"."""
    smtputf8: bool = False
    ret: str | None = None
    """RFC 3461 §4.3: "FULL" or "HDRS"."""
    envid: str | None = None
    """RFC 3461 §4.4, xtext-decoded."""
    auth: str | None = None
    """RFC 4954 §5 AUTH= value, xtext-decoded ("<>" when the submitter is unknown)."""


@dataclass(frozen=True, slots=True)
class Rcpt:
    """RCPT TO (RFC 5321 §4.1.1.3) with RFC 3461 NOTIFY/ORCPT."""

    recipient: str
    """Normalised address, or ``"postmaster"`` for the bare ``<Postmaster>``."""
    notify: frozenset[str] = frozenset()
    """Subset of NEVER, SUCCESS, FAILURE, DELAY; empty when not given."""
    orcpt: str | None = None
    """``addr-type;address`` with the xtext decoded, e.g. ``rfc822;bob@example.com``."""


@dataclass(frozen=True, slots=True)
class Data:
    """DATA (RFC 5321 §4.1.1.4): the reply 354 starts the message text."""


@dataclass(frozen=True, slots=True)
class Bdat:
    """A BDAT chunk has been read completely (RFC 3030 §2); ``size`` octets."""

    size: int
    last: bool


@dataclass(frozen=True, slots=True)
class Message:
    """End of message text: DATA's ``<CRLF>.<CRLF>`` or BDAT LAST.

    ``data`` has CRLF line ends, dot-stuffing removed, and no trailing terminator."""

    data: bytes
    chunked: bool


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Vrfy:
    argument: str


@dataclass(frozen=True, slots=True)
class Expn:
    argument: str


@dataclass(frozen=True, slots=True)
class Help:
    argument: str


@dataclass(frozen=True, slots=True)
class StartTls:
    """RFC 3207 §4."""


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH mechanism [initial-response] (RFC 4954 §4)."""

    mechanism: str
    initial: str | None
    """The base64 text as sent ("=" for an empty initial response), or None."""


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """One client line during a SASL exchange (RFC 4954 §4): base64 or ``*``."""

    line: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """Input the core refused itself; the session sends ``reply`` as the answer."""

    reply: Reply
    verb: str = ""


@dataclass(frozen=True, slots=True)
class Closed:
    """The client closed its side (EOF)."""


Event = (
    Hello
    | Mail
    | Rcpt
    | Data
    | Bdat
    | Message
    | Rset
    | Noop
    | Quit
    | Vrfy
    | Expn
    | Help
    | StartTls
    | Auth
    | AuthResponse
    | Invalid
    | Closed
)

# --------------------------------------------------------------------------- paths


def _path(
    rest: str, *, allow_null: bool, allow_postmaster: bool, status: str
) -> tuple[Path, str] | Reply:
    """The path at the start of a MAIL/RCPT argument (RFC 5321 §4.1.2, parsed by
    :mod:`correo.mail.address`) and the parameter text after it. UTF-8 is accepted
    here and checked against SMTPUTF8 by the caller, once the parameters are known."""
    rest = rest.lstrip(" ")  # tolerate "MAIL FROM: <a@b>" (common, harmless)
    try:
        return parse_path_prefix(
            rest, smtputf8=True, allow_null=allow_null, allow_postmaster=allow_postmaster
        )
    except AddressError as exc:
        enhanced = status if exc.status == "5.1.3" else exc.status
        return Reply(exc.code, enhanced, (exc.reason,))


def _address(path: Path) -> str:
    return "postmaster" if path.is_postmaster else path.address


# --------------------------------------------------------------------------- parameters

# esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
# esmtp-value = 1*(%d33-60 / %d62-126)  (RFC 6531 adds UTF8-non-ascii)
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+))?")
# xtext = *( xchar / hexchar ) ; hexchar = "+" 2(%x30-39 / %x41-46) (RFC 3461 §4)
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def xtext_decode(value: str) -> str:
    """RFC 3461 §4: ``+XX`` hex escapes; raises ValueError on malformed text."""
    if not _XTEXT.fullmatch(value):
        raise ValueError("bad xtext")
    raw = re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)
    return raw


def _params(tail: str) -> list[tuple[str, str | None]] | None:
    """``esmtp-param *(SP esmtp-param)`` → [(KEYWORD, value)]; None if malformed."""
    params: list[tuple[str, str | None]] = []
    for word in tail.split(" "):
        if not word:
            continue
        m = _PARAM.fullmatch(word)
        if not m:
            return None
        params.append((m.group(1).upper(), m.group(2)))
    return params


def parse_mail(rest: str, max_size: int) -> Mail | Reply:
    """The text after ``MAIL FROM:`` (RFC 5321 §4.1.1.2, parameters §4.1.2)."""
    found = _path(rest, allow_null=True, allow_postmaster=False, status="5.1.7")
    if isinstance(found, Reply):
        return found
    path, tail = found
    params = _params(tail)
    if params is None:
        return replies.R501_SYNTAX
    seen: set[str] = set()
    fields: dict[str, object] = {}
    for key, value in params:
        if key in seen:
            return replies.R501_SYNTAX
        seen.add(key)
        if key == "SIZE":  # RFC 1870 §6
            if value is None or not value.isdigit() or len(value) > 20:
                return replies.R501_SYNTAX
            size = int(value)
            if max_size and size > max_size:
                return replies.R552_MESSAGE_TOO_BIG
            fields["size"] = size
        elif key == "BODY":  # RFC 6152 §2 (BINARYMIME is not offered)
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                return replies.R555_PARAMETER
            fields["body"] = value.upper()
        elif key == "SMTPUTF8":  # RFC 6531 §3.4
            if value is not None:
                return replies.R501_SYNTAX
            fields["smtputf8"] = True
        elif key == "RET":  # RFC 3461 §4.3
            if value is None or value.upper() not in ("FULL", "HDRS"):
                return replies.R501_SYNTAX
            fields["ret"] = value.upper()
        elif key in ("ENVID", "AUTH"):  # RFC 3461 §4.4, RFC 4954 §5
            if value is None or (key == "ENVID" and len(value) > 100):
                return replies.R501_SYNTAX
            try:
                fields[key.lower()] = xtext_decode(value)
            except ValueError:
                return replies.R501_SYNTAX
        else:
            return replies.R555_PARAMETER
    if path.is_utf8 and not fields.get("smtputf8"):
        return replies.R553_SMTPUTF8_REQUIRED
    return Mail(sender=path.address, **fields)  # type: ignore[arg-type]


def parse_rcpt(rest: str, utf8: bool) -> Rcpt | Reply:
    """The text after ``RCPT TO:`` (RFC 5321 §4.1.1.3, RFC 3461 §4.1-4.2)."""
    found = _path(rest, allow_null=False, allow_postmaster=True, status="5.1.3")
    if isinstance(found, Reply):
        return found
    path, tail = found
    params = _params(tail)
    if params is None:
        return replies.R501_SYNTAX
    notify: frozenset[str] = frozenset()
    orcpt: str | None = None
    seen: set[str] = set()
    for key, value in params:
        if key in seen:
            return replies.R501_SYNTAX
        seen.add(key)
        if key == "NOTIFY":  # RFC 3461 §4.1
            if value is None:
                return replies.R501_SYNTAX
            words = frozenset(w.upper() for w in value.split(","))
            if not (words == {"NEVER"} or (words and words <= _NOTIFY)):
                return replies.R501_SYNTAX
            notify = words
        elif key == "ORCPT":  # RFC 3461 §4.2: addr-type ";" xtext
            if value is None or ";" not in value or len(value) > 500:
                return replies.R501_SYNTAX
            kind, _, text = value.partition(";")
            if not re.fullmatch(r"[A-Za-z0-9-]+", kind):
                return replies.R501_SYNTAX
            try:
                orcpt = f"{kind.lower()};{xtext_decode(text)}"
            except ValueError:
                return replies.R501_SYNTAX
        else:
            return replies.R555_PARAMETER
    if path.is_utf8 and not utf8:
        return replies.R553_SMTPUTF8_REQUIRED
    return Rcpt(recipient=_address(path), notify=notify, orcpt=orcpt)


_BDAT = re.compile(r"(\d{1,18})(?: +(LAST))? *", re.IGNORECASE)


def parse_bdat(rest: str) -> tuple[int, bool] | None:
    """``BDAT SP chunk-size [ SP end-marker ]`` (RFC 3030 §2)."""
    m = _BDAT.fullmatch(rest)
    if not m:
        return None
    return int(m.group(1)), m.group(2) is not None


_HELO_ARG = re.compile(r"[\x21-\x7e\u0080-\U0010ffff]+")


def parse_helo(rest: str, extended: bool) -> Hello | Reply:
    """HELO/EHLO domain or address literal (RFC 5321 §4.1.1.1). The argument is only
    recorded for the Received: line, so anything printable is accepted (RFC 5321 §4.1.4:
    the server must not refuse a message because the EHLO name does not match)."""
    arg = rest.strip(" ")
    if not arg or not _HELO_ARG.fullmatch(arg.split(" ")[0]):
        return replies.R501_HELO
    return Hello(domain=arg.split(" ")[0][:255], extended=extended)


def parse_auth(rest: str) -> Auth | Reply:
    """``AUTH mechanism [initial-response]`` (RFC 4954 §4)."""
    words = rest.strip(" ").split(" ")
    if not words[0] or len(words) > 2 or not re.fullmatch(r"[A-Za-z0-9_-]{1,20}", words[0]):
        return replies.R501_SYNTAX
    return Auth(mechanism=words[0].upper(), initial=words[1] if len(words) == 2 else None)
