"""FETCH data items for one message (RFC 3501 §6.4.5, responses §7.4.2).

:func:`fetch_items` turns the parsed data items (:class:`correo.imap.spec.FetchAtt`) into
``(label, value)`` pairs in request order; the encoder renders the values (conventions in
``correo.imap.spec``). Metadata items (ENVELOPE, BODY, BODYSTRUCTURE) come from the
parse-once metadata; body sections are located with the MIME tree from that metadata and
read from the blob store: small ones inline, large ones as a :class:`BodyLiteral` the
encoder streams in chunks.

The message's bytes are ``prefix + blob``: the per-recipient prefix lines
(``Return-Path:``, ``Delivered-To:``) are the first lines of the top-level header, so
``BODY[HEADER]`` includes them and every offset in the blob's metadata moves by
``len(prefix)``.

Choices where RFC 3501 leaves room (the ones common servers make):

* A section that does not exist (``BODY[7]`` of a two-part message, ``BODY[1.HEADER]``
  when part 1 is not a message/rfc822) is returned as an empty string, not NIL.
* A partial whose origin is at or past the end of the section is an empty string; the
  label still carries ``<origin>`` (§6.4.5 "If the starting octet is beyond the end of
  the text, an empty string is returned").
* ``BODY[1.MIME]`` of a non-multipart message is the top-level header.
* FLAGS lists system flags first (``\\Recent`` when the session holds it), then keywords,
  each group sorted, so responses are stable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from correo.imap.metadoc import MetaDoc
from correo.imap.mimetext import select_fields
from correo.imap.spec import Atom, BodyLiteral, FetchAtt, Section
from correo.mail.envelope import render_envelope
from correo.mail.message import MessageMeta, parse, section_range
from correo.mail.mime import render_body
from correo.store.base import Body, Store, StoredMessage

log = logging.getLogger(__name__)

INLINE_LIMIT = 64 * 1024
"""Sections up to this size are read into memory; larger ones are streamed."""

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS_B = tuple(m.encode("ascii") for m in _MONTHS)
_SYSTEM_ORDER = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class FetchError(Exception):
    """A data item this server cannot render (the session answers BAD/NO)."""


def format_internaldate(timestamp: float) -> str:
    """RFC 3501 §9 ``date-time`` in UTC: ``" 7-Jul-1996 02:44:25 +0000"`` (locale-free;
    the day is space-padded as ``date-day-fixed`` requires)."""
    return internaldate_bytes(timestamp).decode("ascii")


def internaldate_bytes(timestamp: float) -> bytes:
    """:func:`format_internaldate` as bytes, for responses rendered straight to bytes."""
    t = time.gmtime(int(timestamp))
    return b"%2d-%s-%04d %02d:%02d:%02d +0000" % (
        t.tm_mday,
        _MONTHS_B[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


def flag_atoms(flags: frozenset[str], *, recent: bool = False) -> list[Atom]:
    """FLAGS value (RFC 3501 §7.4.2): system flags first in a fixed order, then keywords."""
    system = [f for f in _SYSTEM_ORDER if f in flags]
    if recent:
        system.append("\\Recent")
    others = sorted(f for f in flags if f not in _SYSTEM_ORDER and f != "\\Recent")
    return [Atom(f) for f in system + others]


class MessageSource:
    """Lazy access to one message: metadata decoded at most once, body opened at most
    once. FETCH reads exactly the ranges asked for (``whole_limit`` 0); SEARCH, which
    visits every part, reads a message up to ``whole_limit`` octets with one read."""

    def __init__(
        self,
        store: Store,
        msg: StoredMessage,
        *,
        whole_limit: int = 0,
        whole: bytes | None = None,
    ):
        """``whole``: the message's bytes (prefix included) when the caller already has
        them (``ImapFastPaths.message_texts``): no body is opened then."""
        self.store = store
        self.msg = msg
        self.whole_limit = whole_limit
        self.shift = len(msg.prefix)
        """Offsets in the metadata are relative to the blob; the prefix comes first."""
        self.doc = MetaDoc(msg.meta)
        self._body: Body | None = None
        self._whole: bytes | None = whole

    @property
    def meta(self) -> MessageMeta:
        return self.doc.full

    async def check_meta(self) -> None:
        """Replace unusable stored metadata by parsing the message's bytes (logged: it
        means a message was stored without ``prepare`` or its metadata is damaged)."""
        if self.doc.usable():
            return
        log.warning(
            "message uid %d in mailbox %d has unusable metadata; parsing its body",
            self.msg.uid,
            self.msg.mailbox_id,
        )
        if self._whole is not None:
            data = self._whole[self.shift :]
        else:
            body = await self.body()
            data = await body.read(self.shift, body.size - self.shift)
        self.doc = MetaDoc(parse(data).to_json())

    async def body(self) -> Body:
        if self._body is None:
            self._body = await self.store.open_body(self.msg)
        return self._body

    async def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the whole message (prefix included)."""
        if end <= start:
            return b""
        if self._whole is None and self.msg.size <= self.whole_limit:
            self._whole = await (await self.body()).read(0, -1)
        if self._whole is not None:
            return self._whole[start:end]
        return await (await self.body()).read(start, end - start)

    def locate(self, section: Section) -> tuple[int, int] | None:
        """Whole-message byte range of a section (HEADER.FIELDS: the header it subsets);
        the top-level header and the whole message start at 0, taking in the prefix."""
        kind = "HEADER" if section.text.startswith("HEADER") else section.text
        rng = section_range(self.meta, section.part, kind)
        if rng is None:
            return None
        start, end = rng
        if (start == 0 and kind in ("HEADER", "MIME")) or (kind == "" and not section.part):
            return 0, end + self.shift  # the top-level header: the prefix belongs to it
        return start + self.shift, end + self.shift

    async def section(
        self, section: Section, partial: tuple[int, int] | None
    ) -> bytes | BodyLiteral:
        """``BODY[section]<partial>`` contents (RFC 3501 §6.4.5)."""
        rng = self.locate(section)
        if rng is None:
            return b""
        start, end = rng
        if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            # Subsetting happens before the partial is applied (§6.4.5 note).
            subset = select_fields(
                await self.read(start, end),
                section.fields,
                exclude=section.text == "HEADER.FIELDS.NOT",
            )
            if partial is None:
                return subset
            origin, octets = partial
            return subset[origin : origin + octets]
        if partial is not None:
            origin, octets = partial
            start, end = start + origin, min(end, start + origin + octets)
        if end <= start:
            return b""
        if end - start <= INLINE_LIMIT:
            return await self.read(start, end)
        return BodyLiteral(await self.body(), start, end - start)


_FROM_ROW = frozenset({"FLAGS", "UID", "RFC822.SIZE", "INTERNALDATE", "MODSEQ"})
"""Items answered from the message row alone (no metadata, no body)."""

_RFC822_SECTIONS = {
    "RFC822": Section(),
    "RFC822.HEADER": Section(text="HEADER"),
    "RFC822.TEXT": Section(text="TEXT"),
}


async def fetch_items(
    store: Store,
    msg: StoredMessage,
    seq: int,
    atts: Sequence[FetchAtt],
    *,
    utf8: bool,
    recent: bool = False,
) -> list[tuple[str, object]]:
    """The FETCH response items of message ``seq`` for ``atts``, in request order.

    ``utf8``: the client enabled UTF8=ACCEPT (RFC 6855), so ENVELOPE/BODYSTRUCTURE keep
    raw UTF-8 headers instead of the RFC 6857 encoded-word downgrade. ``recent``: the
    message is \\Recent in this session (the store does not keep \\Recent as a flag).
    Raises :class:`FetchError` for an item name this module does not know."""
    src = MessageSource(store, msg)
    if any(a.name not in _FROM_ROW for a in atts):
        await src.check_meta()
    out: list[tuple[str, object]] = []
    for att in atts:
        out.append((att.label(), await item_value(src, att, utf8=utf8, recent=recent)))
    return out


async def item_value(src: MessageSource, att: FetchAtt, *, utf8: bool, recent: bool) -> object:
    """One data item's value (see ``correo.imap.spec`` for the value conventions)."""
    msg = src.msg
    name = att.name
    if name == "FLAGS":
        return flag_atoms(msg.flags, recent=recent)
    if name == "UID":
        return msg.uid
    if name == "RFC822.SIZE":
        return msg.size
    if name == "INTERNALDATE":
        return format_internaldate(msg.internaldate)
    if name == "MODSEQ":
        return [msg.modseq]  # RFC 7162 §3.1.4.1: MODSEQ (<value>)
    if name == "ENVELOPE":
        return render_envelope(src.doc.envelope(), utf8)
    if name in ("BODY", "BODYSTRUCTURE"):
        return render_body(src.doc.body(), name == "BODYSTRUCTURE", utf8)
    if name in _RFC822_SECTIONS:
        return await src.section(_RFC822_SECTIONS[name], None)
    if name == "BODY[]":
        return await src.section(att.section or Section(), att.partial)
    raise FetchError(f"unsupported FETCH item {name}")
