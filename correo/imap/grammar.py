"""IMAP command grammar (RFC 3501 §9 and the extensions' ABNF): one complete command in,
one typed :mod:`commands` object out. Pure functions, no I/O.

The framing layer (``parser.py``) hands over the command text with CRLFs removed and the
literals it collected, keyed by the offset of their ``{`` in the text; the
:class:`Reader` consumes a literal where the grammar allows a string. A syntax error
raises :class:`Syntax`, which the framing layer turns into a ``BAD`` event.
"""

from __future__ import annotations

from collections.abc import Callable

from correo.imap import commands as c
from correo.imap.lexer import (
    ASTRING_CHARS,
    ATOM_CHARS,
    LIST_CHARS,
    MAX_DEPTH,
    TAG_CHARS,
    Reader,
    Syntax,
    mailbox_name,
    parse_seqset,
)
from correo.imap.spec import FetchAtt, SearchKey, Section
from correo.store.base import FlagMode

__all__ = [
    "ASTRING_CHARS",
    "LIST_CHARS",
    "SEARCH_CHARSETS",
    "TAG_CHARS",
    "BadCharset",
    "Reader",
    "Syntax",
    "fetch_atts",
    "mailbox_name",
    "parse_command",
    "parse_seqset",
    "search",
]

# --------------------------------------------------------------------------- FETCH

_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_ATTS = frozenset(
    {
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
    }
)
_FETCH_NAME = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")


def _section(r: Reader) -> Section:
    """RFC 3501 §9 section = "[" [section-spec] "]"."""
    r.expect(b"[")
    part: list[int] = []
    text = ""
    fields: tuple[str, ...] = ()
    dot = False
    while (ch := r.peek()) is not None and 0x30 <= ch <= 0x39:
        part.append(r.nz_number())
        dot = r.take(b".")
        if not dot:
            break
    if r.peek() != ord("]") and (dot or not part):
        word = r.chars(_FETCH_NAME, "a section").decode().upper()
        if word not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"):
            raise Syntax(f"unknown section {word}")
        if word == "MIME" and not part:
            raise Syntax("MIME needs a part number")
        text = word
        if word.startswith("HEADER.FIELDS"):
            r.sp()
            r.expect(b"(")
            names = [r.astring().decode("ascii", "replace").upper()]
            while r.take(b" "):
                names.append(r.astring().decode("ascii", "replace").upper())
            r.expect(b")")
            fields = tuple(names)
    elif dot:
        raise Syntax("section part ends with '.'")
    r.expect(b"]")
    return Section(tuple(part), text, fields)


def _fetch_att(r: Reader) -> FetchAtt:
    word = r.chars(_FETCH_NAME, "a fetch attribute").decode().upper()
    if word in ("BODY", "BODY.PEEK") and r.peek() == ord("["):
        section = _section(r)
        partial = None
        if r.take(b"<"):
            origin = r.number()
            r.expect(b".")
            partial = (origin, r.nz_number())
            r.expect(b">")
        return FetchAtt("BODY[]", section=section, peek=word == "BODY.PEEK", partial=partial)
    if word in _SIMPLE_ATTS:
        return FetchAtt(word)
    raise Syntax(f"unknown fetch attribute {word}")


def fetch_atts(r: Reader) -> tuple[FetchAtt, ...]:
    """RFC 3501 §6.4.5: a macro, one attribute, or a parenthesised list."""
    if r.take(b"("):
        atts = [_fetch_att(r)]
        while r.take(b" "):
            atts.append(_fetch_att(r))
        r.expect(b")")
        return tuple(atts)
    start = r.pos
    word = r.chars(_FETCH_NAME, "a fetch attribute").decode().upper()
    if word in _FETCH_MACROS:
        return tuple(FetchAtt(n) for n in _FETCH_MACROS[word])
    r.pos = start
    return (_fetch_att(r),)


# --------------------------------------------------------------------------- SEARCH

_FLAG_KEYS = frozenset(
    {
        "ALL",
        "ANSWERED",
        "DELETED",
        "DRAFT",
        "FLAGGED",
        "NEW",
        "OLD",
        "RECENT",
        "SEEN",
        "UNANSWERED",
        "UNDELETED",
        "UNDRAFT",
        "UNFLAGGED",
        "UNSEEN",
    }
)
_TEXT_KEYS = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_DATE_KEYS = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
_ARG_KEYS = (
    _TEXT_KEYS
    | _DATE_KEYS
    | {"KEYWORD", "UNKEYWORD", "LARGER", "SMALLER", "UID", "HEADER", "NOT", "OR"}
)


def search_key(r: Reader, decode: Callable[[bytes], str], depth: int = 0) -> SearchKey:
    """RFC 3501 §6.4.4 / §9 search-key."""
    if depth > MAX_DEPTH:
        raise Syntax("search program nested too deeply")
    ch = r.peek()
    if ch == ord("("):
        r.pos += 1
        children = [search_key(r, decode, depth + 1)]
        while r.take(b" "):
            children.append(search_key(r, decode, depth + 1))
        r.expect(b")")
        return SearchKey("AND", children=tuple(children))
    if ch is not None and (0x30 <= ch <= 0x39 or ch == ord("*")):
        return SearchKey("SEQ", r.seqset())
    key = r.keyword()
    if key in _FLAG_KEYS:
        return SearchKey(key)
    if key not in _ARG_KEYS:
        raise Syntax(f"unknown search key {key}")
    r.sp()
    if key in _TEXT_KEYS:
        return SearchKey(key, decode(r.astring()))
    if key in _DATE_KEYS:
        return SearchKey(key, r.date())
    if key in ("KEYWORD", "UNKEYWORD"):
        return SearchKey(key, r.flag())
    if key in ("LARGER", "SMALLER"):
        return SearchKey(key, r.number())
    if key == "UID":
        return SearchKey(key, r.seqset())
    if key == "HEADER":
        name = r.astring().decode("ascii", "replace")
        r.sp()
        return SearchKey(key, (name, decode(r.astring())))
    if key == "NOT":
        return SearchKey(key, children=(search_key(r, decode, depth + 1),))
    if key == "OR":
        a = search_key(r, decode, depth + 1)
        r.sp()
        return SearchKey(key, children=(a, search_key(r, decode, depth + 1)))
    raise Syntax(f"unknown search key {key}")


SEARCH_CHARSETS = ("US-ASCII", "UTF-8")


def _decoder(charset: str | None) -> Callable[[bytes], str]:
    def decode(data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise Syntax(f"search string is not {charset or 'US-ASCII'}") from None

    return decode


class BadCharset(Syntax):
    """SEARCH CHARSET we do not support: tagged NO [BADCHARSET] (RFC 3501 §6.4.4)."""


def search(r: Reader) -> tuple[SearchKey, str | None]:
    charset = None
    if r.text[r.pos : r.pos + 8].upper() == b"CHARSET ":
        r.pos += 8
        charset = r.astring().decode("ascii", "replace").upper()
        if charset not in SEARCH_CHARSETS:
            raise BadCharset(f"charset {charset} not supported")
        r.sp()
    decode = _decoder(charset)
    keys = [search_key(r, decode)]
    while r.take(b" "):
        keys.append(search_key(r, decode))
    return SearchKey("AND", children=tuple(keys)), charset


# --------------------------------------------------------------------------- commands

_STATUS_ITEMS = frozenset({"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN"})


def _store(tag: str, r: Reader, uid: bool) -> c.Store:
    messages = r.seqset()
    r.sp()
    word = r.chars(_FETCH_NAME | {ord("+"), ord("-")}, "FLAGS").decode().upper()
    modes = {"FLAGS": FlagMode.SET, "+FLAGS": FlagMode.ADD, "-FLAGS": FlagMode.REMOVE}
    silent = word.endswith(".SILENT")
    mode = modes.get(word.removesuffix(".SILENT"))
    if mode is None:
        raise Syntax("expected FLAGS, +FLAGS or -FLAGS")
    r.sp()
    if r.peek() == ord("("):
        flags = r.flag_list()
    else:
        found = {r.flag()}
        while r.take(b" "):
            found.add(r.flag())
        flags = frozenset(found)
    return c.Store(tag, messages, mode, flags, silent, uid)


def _uid(tag: str, r: Reader) -> c.Command:
    word = r.keyword()
    if word == "EXPUNGE":
        r.sp()
        return c.Expunge(tag, r.seqset())
    if word in ("COPY", "MOVE"):
        r.sp()
        messages = r.seqset()
        r.sp()
        return c.Copy(tag, messages, r.mailbox(), uid=True, move=word == "MOVE")
    if word == "FETCH":
        r.sp()
        messages = r.seqset()
        r.sp()
        return c.Fetch(tag, messages, fetch_atts(r), uid=True)
    if word == "STORE":
        r.sp()
        return _store(tag, r, uid=True)
    if word == "SEARCH":
        r.sp()
        key, charset = search(r)
        return c.Search(tag, key, charset, uid=True)
    raise Syntax(f"UID {word} is not a command")


def _append(tag: str, r: Reader) -> c.Append:
    mailbox = r.mailbox()
    r.sp()
    flags: frozenset[str] = frozenset()
    date = None
    if r.peek() == ord("("):
        flags = r.flag_list()
        r.sp()
    if r.peek() == ord('"'):
        date = r.date_time()
        r.sp()
    utf8 = r.text[r.pos : r.pos + 6].upper() == b"UTF8 ("
    if utf8:  # RFC 6855 §4: utf8-literal = "UTF8" SP "(" literal8 ")"
        r.pos += 6
        r.expect(b"~", "a literal8")
    message = r.literal()
    if message is None:
        raise Syntax("APPEND needs the message as a literal")
    if utf8:
        r.expect(b")")
    return c.Append(tag, mailbox, flags, date, message, utf8=utf8)


def _create(tag: str, r: Reader) -> c.Create:
    mailbox = r.mailbox()
    uses: list[str] = []
    if r.take(b" "):
        r.expect(b"(")
        if r.keyword() != "USE":
            raise Syntax("only the USE create parameter is supported (RFC 6154)")
        r.sp()
        uses = sorted(r.flag_list())
        r.expect(b")")
    return c.Create(tag, mailbox.rstrip("/") or mailbox, tuple(uses))


def _id(tag: str, r: Reader) -> c.Id:
    if r.text[r.pos :].upper() == b"NIL":
        r.pos = len(r.text)
        return c.Id(tag, None)
    r.expect(b"(")
    params: list[tuple[str, str | None]] = []
    while not r.take(b")"):
        if params:
            r.sp()
        key = r.string().decode("utf-8", "replace")
        r.sp()
        value = r.nstring()
        params.append((key, None if value is None else value.decode("utf-8", "replace")))
        if len(params) > 30:
            raise Syntax("too many ID parameters (RFC 2971 §3.3)")
    return c.Id(tag, tuple(params))


def _args(tag: str, word: str, r: Reader) -> c.Command:
    """Everything after ``tag SP command``; the space before arguments is consumed."""
    if word in (
        "CAPABILITY",
        "NOOP",
        "LOGOUT",
        "STARTTLS",
        "CHECK",
        "CLOSE",
        "UNSELECT",
        "EXPUNGE",
        "IDLE",
        "NAMESPACE",
    ):
        return _NOARG[word](tag)
    if word not in _WITH_ARGS:
        raise Syntax(f"unknown command {word}")
    r.sp()
    if word == "LOGIN":
        user = r.text_arg("user name")
        r.sp()
        return c.Login(tag, user, r.text_arg("password"))
    if word == "AUTHENTICATE":
        mech = r.atom("a SASL mechanism").upper()
        initial = r.chars(ATOM_CHARS | {ord("=")}, "an initial response") if r.take(b" ") else None
        return c.Authenticate(tag, mech, initial)
    if word in ("SELECT", "EXAMINE"):
        mailbox = r.mailbox()
        if r.take(b" "):
            raise Syntax("SELECT parameters are not supported")
        return c.Select(tag, mailbox, readonly=word == "EXAMINE")
    if word == "CREATE":
        return _create(tag, r)
    if word == "DELETE":
        return c.Delete(tag, r.mailbox())
    if word == "RENAME":
        old = r.mailbox()
        r.sp()
        return c.Rename(tag, old, r.mailbox())
    if word in ("SUBSCRIBE", "UNSUBSCRIBE"):
        return c.Subscribe(tag, r.mailbox(), subscribe=word == "SUBSCRIBE")
    if word in ("LIST", "LSUB"):
        ref = r.list_mailbox()
        r.sp()
        return c.List(tag, ref, r.list_mailbox(), lsub=word == "LSUB")
    if word == "STATUS":
        mailbox = r.mailbox()
        r.sp()
        r.expect(b"(")
        items = [r.keyword()]
        while r.take(b" "):
            items.append(r.keyword())
        r.expect(b")")
        unknown = set(items) - _STATUS_ITEMS
        if unknown:
            raise Syntax(f"unknown STATUS item {sorted(unknown)[0]}")
        return c.Status(tag, mailbox, tuple(items))
    if word == "APPEND":
        return _append(tag, r)
    if word == "ENABLE":
        caps = [r.atom("a capability").upper()]
        while r.take(b" "):
            caps.append(r.atom("a capability").upper())
        return c.Enable(tag, tuple(caps))
    if word == "ID":
        return _id(tag, r)
    if word == "SEARCH":
        key, charset = search(r)
        return c.Search(tag, key, charset)
    if word == "FETCH":
        messages = r.seqset()
        r.sp()
        return c.Fetch(tag, messages, fetch_atts(r))
    if word == "STORE":
        return _store(tag, r, uid=False)
    if word in ("COPY", "MOVE"):
        messages = r.seqset()
        r.sp()
        return c.Copy(tag, messages, r.mailbox(), move=word == "MOVE")
    if word == "UID":
        return _uid(tag, r)
    raise Syntax(f"unknown command {word}")


_WITH_ARGS = frozenset(
    {
        "LOGIN",
        "AUTHENTICATE",
        "SELECT",
        "EXAMINE",
        "CREATE",
        "DELETE",
        "RENAME",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "LIST",
        "LSUB",
        "STATUS",
        "APPEND",
        "ENABLE",
        "ID",
        "SEARCH",
        "FETCH",
        "STORE",
        "COPY",
        "MOVE",
        "UID",
    }
)
_NOARG: dict[str, Callable[[str], c.Command]] = {
    "CAPABILITY": c.Capability,
    "NOOP": c.Noop,
    "LOGOUT": c.Logout,
    "STARTTLS": c.StartTls,
    "CHECK": c.Check,
    "CLOSE": c.Close,
    "UNSELECT": c.Unselect,
    "EXPUNGE": c.Expunge,
    "IDLE": c.Idle,
    "NAMESPACE": c.Namespace,
}


def parse_command(tag: str, word: str, r: Reader) -> c.Command:
    """Parse the arguments of ``word`` (already upper-cased) and check nothing follows."""
    cmd = _args(tag, word, r)
    r.end()
    return cmd
