"""The sans-I/O POP3 server core: bytes in, events out; replies in, bytes out.

No sockets, no awaits, no store (DESIGN.md principle 1; the shape of h11). The session
(``correo.pop3.session``) feeds what it reads to :meth:`Pop3Protocol.receive_data`, pulls
:meth:`Pop3Protocol.next_event` until :data:`NEED_DATA`, executes each command against the
store and renders the replies with :func:`ok`, :func:`err`, :func:`multiline` and
:func:`challenge`.

What this module owns:

* the command grammar (RFC 1939 §3, RFC 2449 §4 ``command = keyword *(SP param) CRLF``),
  argument counts and the syntax of message numbers, before any store is touched;
* the states and which commands each allows (:data:`ALLOWED`), and every state
  transition (:data:`TRANSITIONS`) — RFC 1939 §3: AUTHORIZATION → TRANSACTION → UPDATE,
  plus the SASL exchange of RFC 5034 §4 as a state of its own;
* the limits on input: a command line up to :data:`MAX_COMMAND_LINE` octets (RFC 2449 §4
  asks for at least 255), a SASL response line up to :data:`MAX_SASL_LINE` (RFC 5034 §4:
  not bound by the command limit). A longer line is answered once with ``-ERR`` and
  skipped up to its LF, so the buffer never holds more than the limit plus one read;
* STLS hygiene (RFC 2595 §4, CVE-2011-0411): :meth:`Pop3Protocol.start_tls` drops every
  byte received after the STLS line, so nothing pipelined in clear text runs under TLS.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

CRLF: Final = b"\r\n"
MAX_COMMAND_LINE: Final = 1024
"""Octets including CRLF; RFC 2449 §4 requires at least 255. Room for long user names."""
MAX_SASL_LINE: Final = 16384
"""A base64 SASL response (RFC 5034 §4: arbitrary length, bounded here against DoS)."""
MAX_NUMBER_DIGITS: Final = 9
"""Message numbers and TOP line counts beyond 999,999,999 are refused as syntax errors."""


class State(enum.Enum):
    """RFC 1939 §3 session states; SASL is AUTHORIZATION in the middle of an AUTH."""

    AUTHORIZATION = "authorization"
    SASL = "sasl"
    TRANSACTION = "transaction"
    UPDATE = "update"
    CLOSED = "closed"


class Transition(enum.Enum):
    """What the session reports (or the core sees) that moves the state."""

    SASL_BEGIN = "sasl-begin"
    """AUTH accepted a mechanism and sent its first challenge (RFC 5034 §4)."""
    SASL_END = "sasl-end"
    """The exchange failed or was cancelled: back to AUTHORIZATION."""
    LOGGED_IN = "logged-in"
    """PASS or AUTH succeeded and the maildrop is locked (RFC 1939 §4)."""
    QUIT = "quit"
    """QUIT received: from AUTHORIZATION straight to CLOSED, from TRANSACTION to UPDATE."""
    UPDATE_DONE = "update-done"
    """The UPDATE state's expunge finished and the reply went out (RFC 1939 §6)."""
    EOF = "eof"
    """The peer closed the connection; nothing is committed (RFC 1939 §6)."""


TRANSITIONS: Final[dict[tuple[State, Transition], State]] = {
    (State.AUTHORIZATION, Transition.SASL_BEGIN): State.SASL,
    (State.SASL, Transition.SASL_END): State.AUTHORIZATION,
    (State.SASL, Transition.LOGGED_IN): State.TRANSACTION,
    (State.AUTHORIZATION, Transition.LOGGED_IN): State.TRANSACTION,
    (State.AUTHORIZATION, Transition.QUIT): State.CLOSED,
    (State.TRANSACTION, Transition.QUIT): State.UPDATE,
    (State.UPDATE, Transition.UPDATE_DONE): State.CLOSED,
    (State.AUTHORIZATION, Transition.EOF): State.CLOSED,
    (State.SASL, Transition.EOF): State.CLOSED,
    (State.TRANSACTION, Transition.EOF): State.CLOSED,
    (State.UPDATE, Transition.EOF): State.CLOSED,
    (State.CLOSED, Transition.EOF): State.CLOSED,
}
"""Every legal state change; anything else is a bug in the session (LocalProtocolError)."""


class LocalProtocolError(Exception):
    """Our own misuse of the core (a transition the table does not allow): a bug."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class User:
    """RFC 1939 §7 USER name."""

    name: str


@dataclass(frozen=True, slots=True)
class Pass:
    """RFC 1939 §7 PASS string: the rest of the line, spaces included; carries the name
    from the USER command it completes."""

    user: str
    password: str


@dataclass(frozen=True, slots=True)
class Auth:
    """RFC 5034 §4 AUTH mechanism [initial-response]; ``mechanism`` None lists them."""

    mechanism: str | None
    initial_response: str | None


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """One client line during a SASL exchange: base64, or ``*`` to cancel."""

    line: str


@dataclass(frozen=True, slots=True)
class Capa:
    """RFC 2449 §5."""


@dataclass(frozen=True, slots=True)
class Stls:
    """RFC 2595 §4."""


@dataclass(frozen=True, slots=True)
class Utf8:
    """RFC 6856 §2: the client accepts UTF-8 in headers and sends UTF-8 credentials."""


@dataclass(frozen=True, slots=True)
class Stat:
    """RFC 1939 §5."""


@dataclass(frozen=True, slots=True)
class List:
    """RFC 1939 §5 LIST [msg]."""

    msg: int | None


@dataclass(frozen=True, slots=True)
class Uidl:
    """RFC 1939 §7 UIDL [msg]."""

    msg: int | None


@dataclass(frozen=True, slots=True)
class Retr:
    """RFC 1939 §5 RETR msg."""

    msg: int


@dataclass(frozen=True, slots=True)
class Top:
    """RFC 1939 §7 TOP msg n."""

    msg: int
    lines: int


@dataclass(frozen=True, slots=True)
class Dele:
    """RFC 1939 §5 DELE msg."""

    msg: int


@dataclass(frozen=True, slots=True)
class Noop:
    """RFC 1939 §5."""


@dataclass(frozen=True, slots=True)
class Rset:
    """RFC 1939 §5."""


@dataclass(frozen=True, slots=True)
class Quit:
    """RFC 1939 §4 (AUTHORIZATION) and §6 (enters UPDATE from TRANSACTION)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line the core refused before any store work; answer ``err(text, code)``."""

    text: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side (``receive_data(b"")``)."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

Command = (
    User
    | Pass
    | Auth
    | Capa
    | Stls
    | Utf8
    | Stat
    | List
    | Uidl
    | Retr
    | Top
    | Dele
    | Noop
    | Rset
    | Quit
)
Event = Command | SaslResponse | Rejected | ConnectionClosed


# --------------------------------------------------------------------------- grammar

_NO_ARGS: Final[dict[str, Callable[[], Command]]] = {
    "CAPA": Capa,
    "STLS": Stls,
    "UTF8": Utf8,
    "STAT": Stat,
    "NOOP": Noop,
    "RSET": Rset,
    "QUIT": Quit,
}

ALLOWED: Final[dict[State, frozenset[str]]] = {
    State.AUTHORIZATION: frozenset({"USER", "PASS", "AUTH", "CAPA", "STLS", "UTF8", "QUIT"}),
    State.TRANSACTION: frozenset(
        {"STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "NOOP", "RSET", "QUIT", "CAPA"}
    ),
    State.SASL: frozenset(),
    State.UPDATE: frozenset(),
    State.CLOSED: frozenset(),
}
"""Commands each state accepts (RFC 1939 §4-§6, RFC 2449 §5, RFC 2595 §4, RFC 5034 §4,
RFC 6856 §2). A known command in the wrong state is ``-ERR``, the session goes on."""

KNOWN: Final = frozenset().union(*ALLOWED.values()) | {"APOP"}


def _number(text: str) -> int | None:
    """RFC 1939 §3 ``msg``: decimal digits only, no sign; None if malformed."""
    if not text or len(text) > MAX_NUMBER_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _printable(text: str) -> bool:
    """No controls (RFC 1939 §3: printable characters; UTF-8 beyond ASCII is allowed)."""
    return all(c >= " " and c != "\x7f" for c in text)


# --------------------------------------------------------------------------- the core


class Pop3Protocol:
    """One POP3 server connection's protocol state (no I/O)."""

    def __init__(
        self,
        *,
        max_command_line: int = MAX_COMMAND_LINE,
        max_sasl_line: int = MAX_SASL_LINE,
    ) -> None:
        self.state = State.AUTHORIZATION
        self.utf8 = False
        self.tls = False
        self._buffer = bytearray()
        self._eof = False
        self._skipping = False
        """Inside an over-long line: drop bytes up to the next LF."""
        self._pending_user: str | None = None
        self._max_command = max_command_line
        self._max_sasl = max_sasl_line

    # ---- input
    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` means the client closed its side."""
        if not data:
            self._eof = True
            return
        if self.state is State.CLOSED:
            return
        self._buffer += data

    def next_event(self) -> Event | _NeedData:
        """The next complete event, or NEED_DATA. Never raises for any input."""
        while True:
            limit = self._max_sasl if self.state is State.SASL else self._max_command
            end = self._buffer.find(b"\n")
            if self._skipping:
                if end < 0:
                    self._buffer.clear()
                    break
                del self._buffer[: end + 1]
                self._skipping = False
                continue
            if end < 0:
                if len(self._buffer) >= limit:
                    self._buffer.clear()
                    self._skipping = True
                    return self._too_long()
                break
            if end + 1 > limit:
                del self._buffer[: end + 1]
                return self._too_long()
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            return self._line(raw)
        if self._eof:
            self.advance(Transition.EOF)
            return ConnectionClosed()
        return NEED_DATA

    def _too_long(self) -> Rejected:
        self._pending_user = None
        if self.state is State.SASL:
            self.advance(Transition.SASL_END)
            return Rejected("SASL response too long, authentication aborted")
        return Rejected("line too long")

    def _line(self, raw: bytes) -> Event:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            if self.state is State.SASL:
                return SaslResponse(raw.decode("latin-1"))  # the SASL layer rejects it
            self._pending_user = None
            return Rejected("command is not valid UTF-8")
        if self.state is State.SASL:
            return SaslResponse(text)
        user, self._pending_user = self._pending_user, None
        if not _printable(text):
            return Rejected("control characters in command")
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        if not keyword:
            return Rejected("empty command")
        if keyword not in KNOWN:
            return Rejected("unknown command")
        if keyword == "APOP":  # RFC 1939 §7: optional; needs a cleartext-equivalent secret
            return Rejected("APOP is not supported, use USER/PASS or AUTH")
        if keyword not in ALLOWED[self.state]:
            return Rejected(f"{keyword} is not allowed in the {self.state.value} state")
        if keyword == "PASS":
            # RFC 1939 §7: the password is the rest of the line and may contain spaces.
            if user is None:
                return Rejected("PASS must follow a successful USER")
            if not rest:
                return Rejected("PASS needs a password")
            return Pass(user, rest)
        args = rest.split(" ") if rest else []
        if any(not a for a in args):
            return Rejected("arguments are separated by a single space")
        return self._command(keyword, args)

    def _command(self, keyword: str, args: list[str]) -> Event:
        simple = _NO_ARGS.get(keyword)
        if simple is not None:
            if args:
                return Rejected(f"{keyword} takes no argument")
            return simple()
        if keyword == "USER":
            if len(args) != 1:
                return Rejected("USER needs exactly one name")
            return User(args[0])
        if keyword == "AUTH":
            if len(args) > 2:
                return Rejected("AUTH takes a mechanism and an optional initial response")
            return Auth(
                args[0].upper() if args else None,
                args[1] if len(args) == 2 else None,
            )
        if keyword in ("LIST", "UIDL"):
            if len(args) > 1:
                return Rejected(f"{keyword} takes at most one message number")
            if not args:
                return List(None) if keyword == "LIST" else Uidl(None)
            n = _number(args[0])
            if n is None:
                return Rejected("invalid message number")
            return List(n) if keyword == "LIST" else Uidl(n)
        if keyword in ("RETR", "DELE"):
            if len(args) != 1:
                return Rejected(f"{keyword} needs exactly one message number")
            n = _number(args[0])
            if n is None:
                return Rejected("invalid message number")
            return Retr(n) if keyword == "RETR" else Dele(n)
        # TOP (KNOWN is exhausted above)
        if len(args) != 2:
            return Rejected("TOP needs a message number and a number of lines")
        n, lines = _number(args[0]), _number(args[1])
        if n is None or lines is None:
            return Rejected("invalid number")
        return Top(n, lines)

    # ---- what the session reports
    def advance(self, transition: Transition) -> None:
        """Apply a transition from :data:`TRANSITIONS` (LocalProtocolError otherwise)."""
        new = TRANSITIONS.get((self.state, transition))
        if new is None:
            raise LocalProtocolError(f"{transition.value} in the {self.state.value} state")
        self.state = new
        if new is not State.AUTHORIZATION:
            self._pending_user = None
        if new is State.CLOSED:
            self._buffer.clear()

    def accept_user(self, name: str) -> None:
        """USER was answered +OK: the next command may be PASS (RFC 1939 §7)."""
        if self.state is not State.AUTHORIZATION:
            raise LocalProtocolError("USER outside AUTHORIZATION")
        self._pending_user = name

    def start_tls(self) -> None:
        """STLS was answered +OK: drop every byte received after the STLS line (RFC 2595
        §4, CVE-2011-0411) and forget the state a TLS upgrade resets."""
        if self.state is not State.AUTHORIZATION or self.tls:
            raise LocalProtocolError("STLS outside AUTHORIZATION or under TLS")
        self._buffer.clear()
        self._skipping = False
        self._pending_user = None
        self.utf8 = False  # RFC 2595 §4: nothing negotiated in clear text carries over
        self.tls = True

    def enable_utf8(self) -> None:
        """RFC 6856 §2: UTF8 answered +OK."""
        self.utf8 = True

    @property
    def buffered(self) -> int:
        """Unparsed input held (bounded by the line limits plus one read)."""
        return len(self._buffer)


# --------------------------------------------------------------------------- replies


def _status(word: bytes, text: str, code: str | None) -> bytes:
    # RFC 2449 §8: "[" resp-code "]" right after the status indicator. Replies stay one
    # line: any CR/LF a caller lets through would otherwise split the reply.
    body = f"[{code}] {text}" if code else text
    body = body.replace("\r", " ").replace("\n", " ")
    return word + (b" " + body.encode("utf-8") if body else b"") + CRLF


def ok(text: str = "", code: str | None = None) -> bytes:
    """``+OK [code] text`` (RFC 1939 §3, RFC 2449 §8)."""
    return _status(b"+OK", text, code)


def err(text: str, code: str | None = None) -> bytes:
    """``-ERR [code] text`` (RFC 1939 §3, RFC 2449 §8, RFC 3206 codes)."""
    return _status(b"-ERR", text, code)


def challenge(data: bytes) -> bytes:
    """``+ base64`` (RFC 5034 §4); an empty challenge is ``+ `` with nothing after."""
    return b"+ " + base64.b64encode(data) + CRLF


def multiline(first: str, lines: list[str] | tuple[str, ...]) -> bytes:
    """``+OK first`` then ``lines`` byte-stuffed, then ``.`` (RFC 1939 §3)."""
    out = [ok(first)]
    for line in lines:
        data = line.encode("utf-8")
        out.append(b"." + data + CRLF if data.startswith(b".") else data + CRLF)
    out.append(b"." + CRLF)
    return b"".join(out)
