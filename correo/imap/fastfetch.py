"""FETCH of message metadata over many messages (RFC 3501 §6.4.5, responses §7.4.2).

``FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)`` is what a client sends to
list a folder. The general path (``fetch.py``) builds value structures and encodes
them item by item; this one renders each response line straight to bytes, reads the
message rows in large batches without the shared bodies' rows
(``ImapFastPaths.message_rows``) and the metadata of only the bodies whose ENVELOPE is
not already known (``blob_metas``), and decodes only the ``env`` member of that
metadata (``correo.mail.message.envelope_json``). The output is byte for byte what the
general path produces (``tests/unit/test_imap_fastfetch.py`` and
``tests/e2e/test_imap_bulk.py`` check it).

Rendered ENVELOPEs are kept in a process-wide cache keyed by blob id (:data:`ENVELOPES`,
32 MiB): bodies are content-addressed (SHA-256), so an entry can never go stale.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from correo.imap import encoder
from correo.imap.fetch import fetch_items, flag_atoms, internaldate_bytes
from correo.imap.spec import FetchAtt
from correo.mail.envelope import Envelope, render_envelope
from correo.mail.message import envelope_json
from correo.store.base import MessageRow

if TYPE_CHECKING:
    from correo.imap.session import Session
    from correo.imap.view import MailboxView

__all__ = [
    "ENTRY_OVERHEAD",
    "ENVELOPES",
    "ITEMS",
    "EnvelopeCache",
    "envelope_bytes",
    "fetch_metadata",
    "handles",
]

ITEMS = frozenset({"UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "ENVELOPE", "MODSEQ"})
"""Data items this path renders; a FETCH asking for anything else takes ``fetch.py``."""
BATCH = 2000
"""Messages per store read."""
MIN_MESSAGES = 32
"""Fewer messages than this take the general path (nothing to gain)."""

_STRUCT = bytes.maketrans(b"[],", b"() ")


def handles(atts: Sequence[FetchAtt], count: int) -> bool:
    return count >= MIN_MESSAGES and all(a.name in ITEMS for a in atts)


def _json_to_imap(raw: bytes) -> bytes | None:
    """An ENVELOPE's JSON (as ``Envelope.to_obj`` wrote it) as IMAP, when every string
    in it is plain printable ASCII that the encoder would send quoted unchanged: no
    backslash (so no JSON escape: no ``"``, control or non-ASCII character) and short
    enough for a quoted string. Otherwise None (render the decoded value)."""
    if b"\\" in raw or len(raw) > encoder.MAX_QUOTED or not raw.isascii():
        return None
    parts = raw.split(b'"')
    # Outside strings (even parts) only ``[ ] , null`` occur; rewrite them all at once,
    # joined by NUL, which no JSON text holds unescaped. An empty address list is NIL
    # (RFC 3501 §7.4.2), as ``render_envelope`` makes it.
    outside = b"\0".join(parts[0::2]).replace(b"[]", b"NIL").replace(b"null", b"NIL")
    parts[0::2] = outside.translate(_STRUCT).split(b"\0")
    return b'"'.join(parts)


def envelope_bytes(meta: bytes, utf8: bool) -> bytes | None:
    """The encoded ENVELOPE value from stored metadata; None when the metadata cannot
    answer (not in ``MessageMeta.to_json`` form, or damaged)."""
    raw = envelope_json(meta)
    if raw is None:
        return None
    fast = _json_to_imap(raw)
    if fast is not None:
        return fast
    try:
        obj = json.loads(raw)
        env = Envelope.from_obj(obj)
    except (ValueError, TypeError, IndexError):
        return None
    out: list[encoder.Piece] = []
    encoder.render(render_envelope(env, utf8), out, utf8=utf8)
    return b"".join(p for p in out if isinstance(p, bytes))


ENTRY_OVERHEAD = 240
"""Octets an entry costs beyond its value (key tuple and string, dict slot, headers)."""


class EnvelopeCache:
    """Rendered ENVELOPEs by (blob id, UTF8=ACCEPT), bounded in octets (values plus
    :data:`ENTRY_OVERHEAD` each); the oldest entries go first (a hit costs one dict
    lookup, nothing is reordered)."""

    def __init__(self, max_bytes: int = 32 << 20) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._d: dict[tuple[str, bool], bytes] = {}
        self.get = self._d.get

    def put(self, key: tuple[str, bool], value: bytes) -> None:
        old = self._d.pop(key, None)
        if old is not None:
            self.size -= len(old) + ENTRY_OVERHEAD
        self._d[key] = value
        self.size += len(value) + ENTRY_OVERHEAD
        while self.size > self.max_bytes and self._d:
            k = next(iter(self._d))
            self.size -= len(self._d.pop(k)) + ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._d)


ENVELOPES = EnvelopeCache()


Loaded = tuple[dict[int, MessageRow], dict[str, bytes]]


async def _read(s: Session, view: MailboxView, uids: list[int], need_env: bool) -> Loaded:
    """The batch's rows by UID, and the metadata of bodies whose ENVELOPE is needed and
    not cached."""
    rows_fn = getattr(s.store, "message_rows", None)
    metas_fn = getattr(s.store, "blob_metas", None)
    if rows_fn is None or metas_fn is None:
        full = await s.store.get_messages(view.mailbox_id, uids)
        msgs = {
            m.uid: MessageRow(m.uid, m.modseq, m.flags, m.internaldate, m.size, m.blob_id)
            for m in full
        }
        return msgs, {m.blob_id: m.meta for m in full}
    rows: list[MessageRow] = await rows_fn(view.mailbox_id, uids)
    metas: dict[str, bytes] = {}
    if need_env:
        missing = {m.blob_id for m in rows if ENVELOPES.get((m.blob_id, s.utf8)) is None}
        if missing:
            metas = await metas_fn(sorted(missing))
    return {m.uid: m for m in rows}, metas


async def fetch_metadata(
    s: Session, view: MailboxView, pairs: list[tuple[int, int]], atts: Sequence[FetchAtt]
) -> None:
    """Send ``* n FETCH (...)`` for ``pairs`` (seq, uid) with the items of :data:`ITEMS`
    in request order; messages expunged meanwhile are skipped (RFC 2180 §4.1.2)."""
    render = _Renderer(s, view, atts)
    batches = [pairs[i : i + BATCH] for i in range(0, len(pairs), BATCH)]

    def start(n: int) -> asyncio.Future[Loaded] | None:
        if n >= len(batches):
            return None
        return asyncio.ensure_future(_read(s, view, [u for _, u in batches[n]], render.env))

    reading = start(0)
    try:
        for n, batch in enumerate(batches):
            if reading is not None:
                msgs, metas = await reading
            else:
                msgs, metas = await _read(s, view, [u for _, u in batch], render.env)
            reading = start(n + 1)  # the store reads the next batch meanwhile
            out = bytearray()
            for seq, uid in batch:
                m = msgs.get(uid)
                if m is not None:
                    out += await render.response(seq, m, metas)
            await s.send_pieces([bytes(out)])
    finally:
        if reading is not None:
            reading.cancel()


class _Renderer:
    """Renders one FETCH command's responses; remembers the FLAGS lists it rendered."""

    def __init__(self, s: Session, view: MailboxView, atts: Sequence[FetchAtt]) -> None:
        self.s = s
        self.view = view
        self.atts = atts
        self.names = [a.name for a in atts]
        self.env = "ENVELOPE" in self.names
        self.utf8 = s.utf8
        self.flag_text: dict[tuple[frozenset[str], bool], bytes] = {}

    async def response(self, seq: int, m: MessageRow, metas: dict[str, bytes]) -> bytes:
        env = None
        if self.env:
            key = (m.blob_id, self.utf8)
            env = ENVELOPES.get(key)
            if env is None:
                env = envelope_bytes(metas.get(m.blob_id, b""), self.utf8)
                if env is None:  # unusable metadata: the general path re-parses it
                    return await self._general(seq, m.uid)
                ENVELOPES.put(key, env)
        line = []
        for name in self.names:
            if name == "UID":
                line.append(b"UID %d" % m.uid)
            elif name == "FLAGS":
                line.append(b"FLAGS (" + self._flags(m) + b")")
            elif name == "RFC822.SIZE":
                line.append(b"RFC822.SIZE %d" % m.size)
            elif name == "INTERNALDATE":
                line.append(b'INTERNALDATE "%s"' % internaldate_bytes(m.internaldate))
            elif name == "ENVELOPE":
                assert env is not None
                line.append(b"ENVELOPE " + env)
            else:  # MODSEQ (RFC 7162 §3.1.4.1)
                line.append(b"MODSEQ (%d)" % m.modseq)
        return b"* %d FETCH (" % seq + b" ".join(line) + b")\r\n"

    def _flags(self, m: MessageRow) -> bytes:
        recent = self.view.recent
        key = (m.flags, bool(recent) and m.uid in recent)
        text = self.flag_text.get(key)
        if text is None:
            atoms = flag_atoms(m.flags, recent=key[1])
            text = self.flag_text[key] = b" ".join(a.value.encode("utf-8") for a in atoms)
        return text

    async def _general(self, seq: int, uid: int) -> bytes:
        """The general path for one message (``fetch.py``), which re-parses a message
        whose stored metadata cannot answer (``MessageSource.check_meta``)."""
        found = await self.s.store.get_messages(self.view.mailbox_id, [uid])
        if not found:
            return b""
        recent = uid in self.view.recent
        items = await fetch_items(
            self.s.store, found[0], seq, self.atts, utf8=self.utf8, recent=recent
        )
        pieces = encoder.fetch_response(seq, items, utf8=self.utf8)
        return b"".join(p for p in pieces if isinstance(p, bytes))
