"""SEARCH evaluation (RFC 3501 §6.4.4; MODSEQ from RFC 7162 §3.1.5).

A search program (:class:`correo.imap.spec.SearchKey`) is compiled into closures with
three-valued logic: a key answers True, False, or None ("cannot tell yet, needs more
data"). Messages are then evaluated in three stages, each paying only for the messages
still undecided:

1. the session's view (:class:`MessageInfo`: UID, flags, size, internal date, modseq)
   answers flag, size, date, UID and sequence-set keys for every message;
2. metadata (``store.get_messages`` in batches) answers header keys (FROM, SUBJECT,
   HEADER, SENTON, ...) for those still undecided;
3. message text answers BODY and TEXT for the rest: bodies held in the database come
   with the metadata in one query per batch (``ImapFastPaths.message_texts``, when
   the store has it; the next batch is read while this one is evaluated), others are
   read with ``store.open_body``. A message whose raw octets show that decoding cannot
   produce a needle (``textsearch.RawFilter``) is not decoded at all.

So ``UNSEEN SUBJECT x`` loads metadata only for unseen messages, and ``OR TEXT a FROM b``
reads bodies only of messages whose From does not contain ``b``.

Interpretation choices:

* Dates (BEFORE/ON/SINCE) compare the internal date's calendar date in UTC; SENT* keys
  compare the date written in the Date: header, disregarding time and zone (§6.4.4); a
  message without a parseable Date: header matches none of SENTBEFORE/SENTON/SENTSINCE.
* Header keys match case-insensitively against the decoded value (RFC 2047 encoded words
  decoded, folding removed); FROM/TO/CC/BCC/SUBJECT search the header field the envelope
  field comes from; HEADER with an empty value matches every message having the field.
  The per-recipient prefix lines (Return-Path, Delivered-To) are header fields too.
* KEYWORD compares flags case-insensitively.
* BODY/TEXT are described in ``correo.imap.textsearch``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from correo.imap.fetch import MessageSource
from correo.imap.metadoc import MetaDoc
from correo.imap.mimetext import decode_header_value, header_fields
from correo.imap.spec import SearchKey, SequenceSet
from correo.imap.textsearch import RawFilter, scan_message, segments
from correo.store.base import MessageInfo, MessageText, Store, StoredMessage

BATCH = 512
"""Messages per ``get_messages`` / ``message_texts`` call."""
READ_CONCURRENCY = 16
"""Bodies read concurrently in stage 3 (overlaps blob I/O)."""
WHOLE_READ_LIMIT = 1 << 20
"""Messages up to this size are read with one read for BODY/TEXT."""


class SearchError(Exception):
    """A search key this server does not understand (the session answers BAD)."""


@dataclass(slots=True)
class Candidate:
    """One message being evaluated and what has been loaded for it so far."""

    info: MessageInfo
    seq: int
    recent: bool
    stored: StoredMessage | None = None
    headers: HeaderView | None = None
    """Lower-case field name → decoded values of the top-level header (prefix included)."""
    sent: dt.date | None = None
    body_found: set[str] | None = None
    text_found: set[str] | None = None


Pred = Callable[[Candidate], bool | None]
_HEADER_OF = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}
_FLAG_OF = {
    "ANSWERED": "\\Answered",
    "DELETED": "\\Deleted",
    "DRAFT": "\\Draft",
    "FLAGGED": "\\Flagged",
    "SEEN": "\\Seen",
}


@dataclass(slots=True)
class Program:
    """A compiled search key and what it needs to load."""

    pred: Pred
    needs_headers: bool = False
    needs_sent: bool = False
    body_needles: set[str] = field(default_factory=set)
    text_needles: set[str] = field(default_factory=set)

    @property
    def needs_text(self) -> bool:
        return bool(self.body_needles or self.text_needles)


def compile_key(key: SearchKey, *, last_seq: int, last_uid: int) -> Program:
    """Compile a search program; ``last_seq``/``last_uid`` resolve ``*`` (RFC 3501 §9)."""
    prog = Program(pred=lambda c: True)
    prog.pred = _compile(key, prog, last_seq, last_uid)
    return prog


def _compile(key: SearchKey, prog: Program, last_seq: int, last_uid: int) -> Pred:
    op = key.op
    v = key.value
    if op in ("AND", "OR", "NOT"):
        subs = [_compile(k, prog, last_seq, last_uid) for k in key.children]
        if op == "NOT":
            if len(subs) != 1:
                raise SearchError("NOT takes one key")
            return _not(subs[0])
        if op == "OR":
            if len(subs) != 2:
                raise SearchError("OR takes two keys")
            return _or(subs)
        return _and(subs)
    if op == "ALL":
        return lambda c: True
    if op in _FLAG_OF:
        flag = _FLAG_OF[op]
        return lambda c: flag in c.info.flags
    if op.startswith("UN") and op[2:] in _FLAG_OF:
        flag = _FLAG_OF[op[2:]]
        return lambda c: flag not in c.info.flags
    if op == "RECENT":
        return lambda c: c.recent
    if op == "OLD":
        return lambda c: not c.recent
    if op == "NEW":
        return lambda c: c.recent and "\\Seen" not in c.info.flags
    if op in ("KEYWORD", "UNKEYWORD"):
        kw = str(v).lower()
        want = op == "KEYWORD"
        return lambda c: any(f.lower() == kw for f in c.info.flags) == want
    if op in ("LARGER", "SMALLER", "MODSEQ"):
        n = _int(v, op)
        if op == "LARGER":
            return lambda c: c.info.size > n
        if op == "SMALLER":
            return lambda c: c.info.size < n
        return lambda c: c.info.modseq >= n
    if op in ("BEFORE", "ON", "SINCE"):
        day = _date(v, op)
        cmp = _date_cmp(op, day)
        return lambda c: cmp(_utc_date(c.info.internaldate))
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        prog.needs_headers = prog.needs_sent = True
        cmp = _date_cmp(op[4:], _date(v, op))
        return lambda c: None if c.headers is None else c.sent is not None and cmp(c.sent)
    if op in ("UID", "SEQ"):
        if not isinstance(v, SequenceSet):
            raise SearchError(f"{op} needs a sequence set")
        ranges = list(v.bounds(last_uid if op == "UID" else last_seq))
        if op == "UID":
            return lambda c: any(lo <= c.info.uid <= hi for lo, hi in ranges)
        return lambda c: any(lo <= c.seq <= hi for lo, hi in ranges)
    if op in _HEADER_OF or op == "HEADER":
        prog.needs_headers = True
        if op == "HEADER":
            if not (isinstance(v, tuple) and len(v) == 2):
                raise SearchError("HEADER needs a field name and a string")
            name, needle = v[0].lower(), v[1].casefold()
        else:
            name, needle = _HEADER_OF[op], str(v).casefold()
        return _header_pred(name, needle)
    if op in ("BODY", "TEXT"):
        needle = str(v)
        (prog.body_needles if op == "BODY" else prog.text_needles).add(needle)
        if op == "BODY":
            return lambda c: None if c.body_found is None else needle in c.body_found
        return lambda c: None if c.text_found is None else needle in c.text_found
    raise SearchError(f"unsupported search key {op}")


def _header_pred(name: str, needle: str) -> Pred:
    def pred(c: Candidate) -> bool | None:
        if c.headers is None:
            return None
        return any(needle in value.casefold() for value in c.headers.get(name))

    return pred


def _and(subs: list[Pred]) -> Pred:
    if len(subs) == 1:
        return subs[0]

    def pred(c: Candidate) -> bool | None:
        unknown = False
        for p in subs:
            r = p(c)
            if r is False:
                return False
            if r is None:
                unknown = True
        return None if unknown else True

    return pred


def _or(subs: list[Pred]) -> Pred:
    a, b = subs

    def pred(c: Candidate) -> bool | None:
        ra = a(c)
        if ra is True:
            return True
        rb = b(c)
        if rb is True:
            return True
        return None if ra is None or rb is None else False

    return pred


def _not(sub: Pred) -> Pred:
    def pred(c: Candidate) -> bool | None:
        r = sub(c)
        return None if r is None else not r

    return pred


def _int(v: object, op: str) -> int:
    if not isinstance(v, int):
        raise SearchError(f"{op} needs a number")
    return v


def _date(v: object, op: str) -> dt.date:
    if not isinstance(v, dt.date):
        raise SearchError(f"{op} needs a date")
    return v


def _date_cmp(op: str, day: dt.date) -> Callable[[dt.date], bool]:
    if op == "BEFORE":
        return lambda d: d < day
    if op == "ON":
        return lambda d: d == day
    return lambda d: d >= day


def _utc_date(ts: float) -> dt.date:
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).date()


def sent_date(value: str) -> dt.date | None:
    """The calendar date written in a Date: header, ignoring time and zone (§6.4.4)."""
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    try:
        return dt.date(parsed[0], parsed[1], parsed[2])
    except ValueError:
        return None


# --------------------------------------------------------------------------- evaluation


async def search(
    store: Store,
    mailbox_id: int,
    infos: Sequence[MessageInfo],
    key: SearchKey,
    *,
    recent: frozenset[int] = frozenset(),
) -> list[int]:
    """UIDs of the messages of ``infos`` (the session's view, in sequence order) that
    match ``key``, ascending. ``recent`` holds the UIDs that are \\Recent in this session.
    Raises :class:`SearchError` for a key it cannot evaluate."""
    if not infos:
        compile_key(key, last_seq=0, last_uid=0)  # still reject unknown keys
        return []
    prog = compile_key(key, last_seq=len(infos), last_uid=infos[-1].uid)
    matched: list[int] = []
    pending: list[Candidate] = []
    for i, info in enumerate(infos):
        c = Candidate(info, i + 1, info.uid in recent)
        r = prog.pred(c)
        if r is True:
            matched.append(info.uid)
        elif r is None:
            pending.append(c)
    batches = [pending[i : i + BATCH] for i in range(0, len(pending), BATCH)]

    def start(n: int) -> asyncio.Future[Loaded] | None:
        if n >= len(batches):
            return None
        uids = [c.info.uid for c in batches[n]]
        return asyncio.ensure_future(_read_batch(store, mailbox_id, prog, uids))

    reading = start(0)
    try:
        for n, batch in enumerate(batches):
            assert reading is not None
            loaded = await reading
            reading = start(n + 1)  # the store reads the next batch meanwhile
            matched.extend(await _evaluate_batch(store, prog, batch, loaded))
    finally:
        if reading is not None:
            reading.cancel()
    matched.sort()
    return matched


Loaded = tuple[dict[int, StoredMessage], dict[int, bytes]]


async def _read_batch(store: Store, mailbox_id: int, prog: Program, uids: list[int]) -> Loaded:
    """Rows with metadata by UID, and (for BODY/TEXT, when the store can) the bytes of
    bodies held in the database, all in one query (``ImapFastPaths.message_texts``)."""
    texts_fn = getattr(store, "message_texts", None)
    if prog.needs_text and texts_fn is not None:
        texts: list[MessageText] = await texts_fn(mailbox_id, uids)
        whole = {t.message.uid: t.data for t in texts if t.data is not None}
        return {t.message.uid: t.message for t in texts}, whole
    return {m.uid: m for m in await store.get_messages(mailbox_id, uids)}, {}


async def _evaluate_batch(
    store: Store, prog: Program, batch: list[Candidate], loaded: Loaded
) -> list[int]:
    by_uid, whole = loaded
    out: list[int] = []
    deeper: list[Candidate] = []
    for c in batch:
        c.stored = by_uid.get(c.info.uid)
        if c.stored is None:  # expunged meanwhile: nothing left to match
            continue
        if prog.needs_headers:
            doc = MetaDoc(c.stored.meta)
            if not doc.usable():
                src = MessageSource(store, c.stored)
                await src.check_meta()
                doc = src.doc
            c.headers = HeaderView(c.stored, doc)
            if prog.needs_sent:
                dates = c.headers.get("date")
                c.sent = sent_date(dates[0]) if dates else None
        r = prog.pred(c)
        if r is True:
            out.append(c.info.uid)
        elif r is None:
            deeper.append(c)
    in_memory = [c for c in deeper if c.info.uid in whole]
    if in_memory:  # no I/O left: one after the other, no task per message
        deeper = [c for c in deeper if c.info.uid not in whole]
        raw = RawFilter(prog.body_needles | prog.text_needles)
        for c in in_memory:
            data = whole[c.info.uid]
            if raw.miss(data):
                c.body_found, c.text_found = set(), set()
            else:
                await _load_text(store, prog, c, data)
            if prog.pred(c) is True:
                out.append(c.info.uid)
    if deeper:
        sem = asyncio.Semaphore(READ_CONCURRENCY)

        async def one(c: Candidate) -> bool:
            async with sem:
                await _load_text(store, prog, c)
            return prog.pred(c) is True

        async with asyncio.TaskGroup() as tg:  # a store error cancels the siblings
            tasks = [tg.create_task(one(c)) for c in deeper]
        out.extend(c.info.uid for c, t in zip(deeper, tasks, strict=True) if t.result())
    return out


class HeaderView:
    """The top-level header fields of one message by lower-case name, decoded: the
    per-recipient prefix lines first, then the metadata's header index (RFC 2047 decoded
    at delivery)."""

    __slots__ = ("index", "prefix")

    def __init__(self, msg: StoredMessage, doc: MetaDoc) -> None:
        self.prefix = msg.prefix
        self.index = doc.headers()

    def get(self, name: str) -> Sequence[str]:
        values = self.index.get(name, ())
        if self.prefix:
            extra = _prefix_index(self.prefix).get(name)
            if extra:
                return (*extra, *values)
        return values


@functools.lru_cache(maxsize=1024)
def _prefix_index(prefix: bytes) -> dict[str, tuple[str, ...]]:
    """Prefixes repeat (one Delivered-To per mailbox): parse each distinct one once."""
    out: dict[str, tuple[str, ...]] = {}
    for f in header_fields(prefix):
        name = f.name.decode("utf-8", "replace").lower()
        out[name] = (*out.get(name, ()), decode_header_value(f.value))
    return out


class _SourceReader:
    """A :class:`Reader` over a :class:`MessageSource`."""

    def __init__(self, src: MessageSource) -> None:
        self.src = src

    async def read(self, start: int, end: int) -> bytes:
        return await self.src.read(start, end)

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        body = await self.src.body()
        async for chunk in body.chunks(start, end - start):
            yield chunk


async def _load_text(store: Store, prog: Program, c: Candidate, whole: bytes | None = None) -> None:
    assert c.stored is not None
    src = MessageSource(store, c.stored, whole_limit=WHOLE_READ_LIMIT, whole=whole)
    await src.check_meta()
    c.body_found, c.text_found = await scan_message(
        _SourceReader(src),
        segments(src.doc.body(), src.shift),
        prog.body_needles,
        prog.text_needles,
    )
