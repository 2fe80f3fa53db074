"""Typed IMAP commands and the states that allow them (RFC 3501 §3, §6).

The parser (``parser.py``) turns a complete command line, literals included, into one of
these frozen dataclasses; the session executes it only if :data:`ALLOWED` lists the
current state for its name. Mailbox names here are Unicode (modified UTF-7 already
decoded, ``INBOX`` spelled canonically).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from correo.imap.spec import FetchAtt, SearchKey, SequenceSet
from correo.store.base import FlagMode


class State(enum.Enum):
    """RFC 3501 §3 connection states."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


@dataclass(frozen=True, slots=True)
class Command:
    tag: str


# ---- any state (RFC 3501 §6.1)
@dataclass(frozen=True, slots=True)
class Capability(Command):
    pass


@dataclass(frozen=True, slots=True)
class Noop(Command):
    pass


@dataclass(frozen=True, slots=True)
class Logout(Command):
    pass


@dataclass(frozen=True, slots=True)
class Id(Command):
    """RFC 2971: client parameters, or None for NIL."""

    params: tuple[tuple[str, str | None], ...] | None


# ---- not authenticated (RFC 3501 §6.2)
@dataclass(frozen=True, slots=True)
class StartTls(Command):
    pass


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    mechanism: str
    """Upper-cased."""
    initial: bytes | None = None
    """RFC 4959 initial response, still base64 (``=`` means empty)."""

    def __repr__(self) -> str:  # the initial response carries the password
        shown = None if self.initial is None else "<redacted>"
        return f"Authenticate(tag={self.tag!r}, mechanism={self.mechanism!r}, initial={shown})"


@dataclass(frozen=True, slots=True)
class Login(Command):
    username: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"Login(tag={self.tag!r}, username={self.username!r}, password=<redacted>)"


# ---- authenticated (RFC 3501 §6.3)
@dataclass(frozen=True, slots=True)
class Select(Command):
    mailbox: str
    readonly: bool = False
    """True for EXAMINE."""


@dataclass(frozen=True, slots=True)
class Create(Command):
    mailbox: str
    special_use: tuple[str, ...] = ()
    """RFC 6154 §3 ``USE (\\Sent)``."""


@dataclass(frozen=True, slots=True)
class Delete(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename(Command):
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    mailbox: str
    subscribe: bool = True
    """False for UNSUBSCRIBE."""


@dataclass(frozen=True, slots=True)
class List(Command):
    reference: str
    pattern: str
    lsub: bool = False


@dataclass(frozen=True, slots=True)
class Status(Command):
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Append(Command):
    mailbox: str
    flags: frozenset[str]
    internaldate: dt.datetime | None
    message: bytes
    utf8: bool = False
    """Sent with the RFC 6855 §4 ``UTF8 (~{n}...)`` data extension."""

    def __repr__(self) -> str:
        return f"Append(tag={self.tag!r}, mailbox={self.mailbox!r}, {len(self.message)} octets)"


@dataclass(frozen=True, slots=True)
class Idle(Command):
    pass


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    pass


@dataclass(frozen=True, slots=True)
class Enable(Command):
    capabilities: tuple[str, ...]


# ---- selected (RFC 3501 §6.4)
@dataclass(frozen=True, slots=True)
class Check(Command):
    pass


@dataclass(frozen=True, slots=True)
class Close(Command):
    pass


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    pass


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    uids: SequenceSet | None = None
    """RFC 4315 UID EXPUNGE restricts to these UIDs."""


@dataclass(frozen=True, slots=True)
class Search(Command):
    key: SearchKey
    charset: str | None = None
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    messages: SequenceSet
    atts: tuple[FetchAtt, ...]
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Store(Command):
    messages: SequenceSet
    mode: FlagMode
    flags: frozenset[str]
    silent: bool = False
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Copy(Command):
    messages: SequenceSet
    mailbox: str
    uid: bool = False
    move: bool = False
    """RFC 6851 MOVE."""


_NAMES: dict[type[Command], str] = {
    Capability: "CAPABILITY",
    Noop: "NOOP",
    Logout: "LOGOUT",
    Id: "ID",
    StartTls: "STARTTLS",
    Authenticate: "AUTHENTICATE",
    Login: "LOGIN",
    Select: "SELECT",
    Create: "CREATE",
    Delete: "DELETE",
    Rename: "RENAME",
    Subscribe: "SUBSCRIBE",
    List: "LIST",
    Status: "STATUS",
    Append: "APPEND",
    Idle: "IDLE",
    Namespace: "NAMESPACE",
    Enable: "ENABLE",
    Check: "CHECK",
    Close: "CLOSE",
    Unselect: "UNSELECT",
    Expunge: "EXPUNGE",
    Search: "SEARCH",
    Fetch: "FETCH",
    Store: "STORE",
    Copy: "COPY",
}

_ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})

ALLOWED: dict[str, frozenset[State]] = {
    # RFC 3501 §6.1: any state
    "CAPABILITY": _ANY,
    "NOOP": _ANY,
    "LOGOUT": _ANY,
    "ID": _ANY,  # RFC 2971 §3.1
    # RFC 3501 §6.2: not authenticated
    "STARTTLS": _NOT_AUTH,
    "AUTHENTICATE": _NOT_AUTH,
    "LOGIN": _NOT_AUTH,
    # RFC 3501 §6.3: authenticated (and therefore selected)
    "SELECT": _AUTH,
    "EXAMINE": _AUTH,
    "CREATE": _AUTH,
    "DELETE": _AUTH,
    "RENAME": _AUTH,
    "SUBSCRIBE": _AUTH,
    "UNSUBSCRIBE": _AUTH,
    "LIST": _AUTH,
    "LSUB": _AUTH,
    "STATUS": _AUTH,
    "APPEND": _AUTH,
    "IDLE": _AUTH,  # RFC 2177 §3
    "NAMESPACE": _AUTH,  # RFC 2342 §5
    "ENABLE": frozenset({State.AUTHENTICATED}),  # RFC 5161 §3.1
    # RFC 3501 §6.4: selected
    "CHECK": _SELECTED,
    "CLOSE": _SELECTED,
    "UNSELECT": _SELECTED,  # RFC 3691
    "EXPUNGE": _SELECTED,
    "SEARCH": _SELECTED,
    "FETCH": _SELECTED,
    "STORE": _SELECTED,
    "COPY": _SELECTED,
    "MOVE": _SELECTED,  # RFC 6851
    "UID": _SELECTED,
}
"""Command name (first word; ``UID`` covers every UID form) → states that allow it."""


def command_word(cmd: Command) -> str:
    """The key of :data:`ALLOWED` for a parsed command."""
    if isinstance(cmd, Select) and cmd.readonly:
        return "EXAMINE"
    if isinstance(cmd, Subscribe) and not cmd.subscribe:
        return "UNSUBSCRIBE"
    if isinstance(cmd, List) and cmd.lsub:
        return "LSUB"
    if isinstance(cmd, Copy) and cmd.move and not cmd.uid:
        return "MOVE"
    if isinstance(cmd, Search | Fetch | Store | Copy) and cmd.uid:
        return "UID"
    if isinstance(cmd, Expunge) and cmd.uids is not None:
        return "UID"
    return _NAMES[type(cmd)]


def allowed(cmd: Command, state: State) -> bool:
    return state in ALLOWED[command_word(cmd)]


class CommandFailed(Exception):
    """A command ends with ``NO`` or ``BAD`` (RFC 3501 §7.1); errors carry their reply."""

    def __init__(self, status: str, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code


def no(text: str, code: str | None = None) -> CommandFailed:
    return CommandFailed("NO", text, code)


def bad(text: str, code: str | None = None) -> CommandFailed:
    return CommandFailed("BAD", text, code)
