"""Sans-I/O SASL server mechanisms: PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login).

One :class:`SaslExchange` per AUTH / AUTHENTICATE command. The protocol session reads
lines, this object decides; it imports no asyncio, socket or store code::

    exchange = SaslExchange()
    outcome = exchange.start("PLAIN", initial_response)   # bytes after the name, or None
    while isinstance(outcome, Challenge):
        send(b"334 " + outcome.data + b"\\r\\n")           # IMAP: b"+ ", POP3: b"+ "
        outcome = exchange.step(read_line())
    if isinstance(outcome, Credentials): ...               # Authenticator.authenticate(...)
    else: ...                                              # SaslError: see SaslErrorKind

Wire rules shared by SMTP (RFC 4954 §4), IMAP (RFC 3501 §6.2.2, RFC 4959 SASL-IR) and
POP3 (RFC 5034 §4):

* every response is base64 (RFC 4648 §4); a character outside the alphabet or a pad
  anywhere but the end is rejected, not ignored (RFC 4954 §4) → ``MALFORMED``;
* a line of a single ``*`` cancels the exchange → ``CANCELLED``;
* an initial response of a single ``=`` is present but empty (RFC 4954 §4, RFC 4959 §3,
  RFC 5034 §4);
* a response longer than the authentication buffer (12,288 octets, RFC 4954 §4) →
  ``TOO_LONG``;
* an empty challenge is ``b""`` (SMTP sends ``"334 "``, IMAP ``"+ "``).

Not implemented: SASLprep (RFC 4013) of names and passwords; names are compared
case-insensitively instead, since they are mail addresses here.
"""

from __future__ import annotations

import binascii
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_MAX_RESPONSE",
    "MECHANISMS",
    "Challenge",
    "Credentials",
    "Outcome",
    "SaslError",
    "SaslErrorKind",
    "SaslExchange",
    "SaslStateError",
    "decode_base64",
    "encode_base64",
]

MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN")
"""Mechanisms in order of preference for the capability list (LOGIN only for legacy
clients: draft-murchison-sasl-login §1)."""

DEFAULT_MAX_RESPONSE = 12288
"""Longest client response line in octets, without CRLF (RFC 4954 §4)."""

_LOGIN_USERNAME = b"VXNlcm5hbWU6"  # base64("Username:"), draft-murchison-sasl-login §2.2
_LOGIN_PASSWORD = b"UGFzc3dvcmQ6"  # base64("Password:")


class SaslErrorKind(enum.Enum):
    """Why an exchange ended without credentials, with the reply each protocol gives."""

    CANCELLED = "cancelled"
    """Client sent ``*``: SMTP 501 5.7.0 (RFC 4954 §4), IMAP BAD (RFC 3501 §6.2.2),
    POP3 -ERR (RFC 5034 §4)."""
    MALFORMED = "malformed"
    """Not base64: SMTP 501 5.5.2 (RFC 4954 §4), IMAP BAD, POP3 -ERR."""
    TOO_LONG = "too-long"
    """Longer than the authentication buffer: SMTP 500 5.5.6 (RFC 4954 §4), IMAP BAD,
    POP3 -ERR."""
    UNKNOWN_MECHANISM = "unknown-mechanism"
    """Not offered: SMTP 504 5.5.4 (RFC 4954 §4), IMAP NO (RFC 3501 §6.2.2), POP3 -ERR."""
    INVALID = "invalid"
    """Decoded, but not a valid message of the mechanism (PLAIN without two NULs, bad
    UTF-8, empty name or password, NUL in a LOGIN field): authentication fails
    (RFC 4616 §2): SMTP 535 5.7.8, IMAP NO [AUTHENTICATIONFAILED], POP3 -ERR [AUTH]."""
    AUTHZ_DENIED = "authz-denied"
    """PLAIN authzid names another user than authcid; we allow no proxy login
    (RFC 4616 §2, RFC 4422 §3.4.1): SMTP 535 5.7.8, IMAP NO [AUTHORIZATIONFAILED]
    (RFC 5530 §3), POP3 -ERR [AUTH]."""


@dataclass(frozen=True, slots=True)
class SaslError:
    """The exchange is over without credentials. ``message`` is safe to log and to show
    (it never contains client data)."""

    kind: SaslErrorKind
    message: str


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``data`` (already base64, ``b""`` for an empty challenge) in the protocol's
    continuation syntax, then feed the client's next line to :meth:`SaslExchange.step`."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client claimed; not yet verified (``Authenticator.authenticate``).
    ``password`` is left out of ``repr`` so a stray log line cannot leak it."""

    username: str
    password: str = field(repr=False)
    authzid: str = ""
    """Empty, or equal to ``username`` ignoring case (others are ``AUTHZ_DENIED``)."""


class SaslStateError(RuntimeError):
    """Our bug, not the client's: ``start`` twice, or ``step`` after the outcome."""


class _State(enum.Enum):
    NEW = "new"
    PLAIN_RESPONSE = "plain-response"
    LOGIN_USER = "login-username"
    LOGIN_AUTHENTICATOR = "login-authenticator"
    DONE = "done"


_CANCELLED = SaslError(SaslErrorKind.CANCELLED, "authentication cancelled")
_MALFORMED = SaslError(SaslErrorKind.MALFORMED, "invalid base64 in response")
_TOO_LONG = SaslError(SaslErrorKind.TOO_LONG, "response too long")
_BAD_PLAIN = SaslError(SaslErrorKind.INVALID, "malformed PLAIN message")
_BAD_LOGIN = SaslError(SaslErrorKind.INVALID, "malformed LOGIN response")
_AUTHZ = SaslError(SaslErrorKind.AUTHZ_DENIED, "authorization identity not permitted")

Outcome = Challenge | Credentials | SaslError
"""What ``start`` and ``step`` return."""


class SaslExchange:
    """One server-side SASL exchange (RFC 4422 §3), PLAIN or LOGIN.

    ``mechanisms`` are those this listener offers now (the session passes an empty
    tuple before TLS when plaintext is not allowed; see ``service.plaintext_allowed``).
    """

    def __init__(
        self,
        mechanisms: Iterable[str] = MECHANISMS,
        *,
        max_response: int = DEFAULT_MAX_RESPONSE,
    ) -> None:
        self.mechanisms = frozenset(m.upper() for m in mechanisms) & frozenset(MECHANISMS)
        self.max_response = max_response
        self.mechanism: str | None = None
        self._state = _State.NEW
        self._username = ""

    @property
    def done(self) -> bool:
        """True once ``start``/``step`` returned credentials or an error."""
        return self._state is _State.DONE

    def start(self, mechanism: str, initial_response: bytes | None = None) -> Outcome:
        """Begin with the mechanism name (any case, RFC 4422 §3.1) and the optional
        initial response exactly as sent (base64, or ``=`` for empty), None if absent."""
        if self._state is not _State.NEW:
            raise SaslStateError("SASL exchange already started")
        name = mechanism.upper()
        if name not in self.mechanisms:
            return self._end(SaslError(SaslErrorKind.UNKNOWN_MECHANISM, "unsupported mechanism"))
        self.mechanism = name
        if initial_response is None:
            if name == "PLAIN":  # client-first: empty challenge (RFC 4422 §5 item 2a)
                self._state = _State.PLAIN_RESPONSE
                return Challenge(b"")
            self._state = _State.LOGIN_USER
            return Challenge(_LOGIN_USERNAME)
        line = _strip_eol(initial_response)
        if line == b"=":
            data: bytes | SaslError = b""
        else:
            data = self._decode(line)
        if isinstance(data, SaslError):
            return self._end(data)
        if name == "PLAIN":
            return self._end(_parse_plain(data))
        # LOGIN is server-first, but deployed clients (Outlook, some libraries) send the
        # username as an initial response; Dovecot and Cyrus accept it, and so do we.
        return self._login_username(data)

    def step(self, client_line: bytes) -> Outcome:
        """Feed one client line (CRLF optional) after a :class:`Challenge`."""
        state = self._state
        if state in (_State.NEW, _State.DONE):
            raise SaslStateError(f"SASL step in state {state.value}")
        line = _strip_eol(client_line)
        if line == b"*":  # RFC 4954 §4, RFC 3501 §6.2.2, RFC 5034 §4
            return self._end(_CANCELLED)
        data = self._decode(line)
        if isinstance(data, SaslError):
            return self._end(data)
        if state is _State.PLAIN_RESPONSE:
            return self._end(_parse_plain(data))
        if state is _State.LOGIN_USER:
            return self._login_username(data)
        password = _text(data)
        if password is None or not password or any(c in password for c in "\0\r\n"):
            return self._end(_BAD_LOGIN)  # draft-murchison-sasl-login §2: no NUL, CR, LF
        return self._end(Credentials(self._username, password))

    # ------------------------------------------------------------------ helpers

    def _login_username(self, data: bytes) -> Outcome:
        username = _text(data)
        if not username or "\0" in username:
            return self._end(_BAD_LOGIN)
        self._username = username
        self._state = _State.LOGIN_AUTHENTICATOR
        return Challenge(_LOGIN_PASSWORD)

    def _decode(self, line: bytes) -> bytes | SaslError:
        if len(line) > self.max_response:
            return _TOO_LONG
        return decode_base64(line)

    def _end(self, outcome: Credentials | SaslError) -> Credentials | SaslError:
        self._state = _State.DONE
        self._username = ""
        return outcome


def decode_base64(line: bytes) -> bytes | SaslError:
    """Strict RFC 4648 §4 base64 as RFC 4954 §4 demands: only the alphabet, padding only
    at the end, length a multiple of four. An empty line is an empty response."""
    if len(line) % 4:
        return _MALFORMED
    try:
        return binascii.a2b_base64(line, strict_mode=True)
    except (binascii.Error, ValueError):
        return _MALFORMED


def encode_base64(data: bytes) -> bytes:
    """Base64 without line breaks, for challenges (and for tests playing the client)."""
    return binascii.b2a_base64(data, newline=False)


def _parse_plain(message: bytes) -> Credentials | SaslError:
    """RFC 4616 §2: ``message = [authzid] UTF8NUL authcid UTF8NUL passwd``; authcid and
    passwd are ``1*SAFE`` (UTF-8 without NUL). An authzid other than authcid asks to act
    as another user, which no account may do here."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        return _BAD_PLAIN
    fields = [_text(p) for p in parts]
    authzid, authcid, passwd = fields
    if authzid is None or not authcid or not passwd:
        return _BAD_PLAIN
    if authzid and authzid.lower() != authcid.lower():
        return _AUTHZ
    return Credentials(authcid, passwd, authzid)


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line
