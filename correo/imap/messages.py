"""Message commands: APPEND (RFC 3501 §6.3.11, RFC 4315 APPENDUID), EXPUNGE and UID
EXPUNGE (§6.4.3, RFC 4315), SEARCH (§6.4.4), FETCH (§6.4.5), STORE (§6.4.6), COPY
(§6.4.7, COPYUID) and MOVE (RFC 6851), plain and UID forms (§6.4.8).

FETCH renders with ``fetch.py`` and SEARCH evaluates with ``search.py``; this module
maps sequence numbers to UIDs through the session's :class:`MailboxView`, batches store
reads, sets ``\\Seen`` for non-PEEK body fetches and streams literals.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from correo.imap import commands as c
from correo.imap import encoder, fastfetch
from correo.imap.fetch import FetchError, fetch_items, flag_atoms
from correo.imap.search import SearchError
from correo.imap.search import search as run_search
from correo.imap.spec import BodyLiteral, FetchAtt, SequenceSet
from correo.imap.view import MailboxView
from correo.mail.message import prepare
from correo.store.base import FlagMode, MessageInfo, StoredMessage

if TYPE_CHECKING:
    from correo.imap.session import Session

BATCH = 200
"""Messages read from the store per query during FETCH/STORE."""
PREPARE_IN_THREAD = 256 * 1024
"""APPENDed messages larger than this are parsed in a worker thread."""


def _view(s: Session) -> MailboxView:
    assert s.view is not None
    return s.view


def _resolve(view: MailboxView, messages: SequenceSet, uid: bool) -> list[tuple[int, int]]:
    pairs = view.resolve(messages, uid=uid)
    if pairs is None:
        raise c.bad("Invalid message sequence number")
    return pairs


def compress(uids: Sequence[int]) -> str:
    """``1,2,3,7`` → ``1:3,7`` keeping the given order (RFC 4315 uid-set)."""
    out: list[str] = []
    i = 0
    while i < len(uids):
        j = i
        while j + 1 < len(uids) and uids[j + 1] == uids[j] + 1:
            j += 1
        out.append(str(uids[i]) if i == j else f"{uids[i]}:{uids[j]}")
        i = j + 1
    return ",".join(out)


async def append(s: Session, cmd: c.Append) -> str:
    """RFC 3501 §6.3.11; the message is parsed once (``correo.mail.message.prepare``)."""
    assert s.account is not None
    mbx = await s.store.get_mailbox(s.account.id, cmd.mailbox)
    if mbx is None:
        raise c.no(f"No such mailbox: {cmd.mailbox}", "TRYCREATE")
    if not mbx.selectable:
        raise c.no(f"{cmd.mailbox} cannot hold messages", "NONEXISTENT")
    if not cmd.message:
        raise c.no("Empty message", "CANNOT")
    if cmd.utf8 and not s.utf8:
        raise c.bad("APPEND UTF8 needs ENABLE UTF8=ACCEPT first")
    if not s.utf8:
        end = cmd.message.find(b"\r\n\r\n")
        if not cmd.message[: end if end >= 0 else len(cmd.message)].isascii():
            # RFC 6855 §4: without ENABLE UTF8=ACCEPT, 8-bit header fields are refused
            raise c.no("8-bit header fields need ENABLE UTF8=ACCEPT", "CANNOT")
    if len(cmd.message) > PREPARE_IN_THREAD:
        incoming = await asyncio.to_thread(prepare, cmd.message)
    else:
        incoming = prepare(cmd.message)
    date = cmd.internaldate.timestamp() if cmd.internaldate else None
    uidvalidity, uid = await s.store.append(mbx.id, incoming, cmd.flags, date)
    s.ok_code(f"APPENDUID {uidvalidity} {uid}")
    return "APPEND completed"


async def expunge(s: Session, cmd: c.Expunge) -> None:
    """RFC 3501 §6.4.3; RFC 4315 §2.1 UID EXPUNGE only among the given UIDs."""
    view = _view(s)
    if view.readonly:
        raise c.no("Mailbox is read-only", "READ-ONLY")
    only = None
    if cmd.uids is not None:
        only = [u for _, u in _resolve(view, cmd.uids, True)]
        if not only:
            return
    gone = await s.store.expunge(view.mailbox_id, only)
    await s.refresh(allow_expunge=True)  # earlier expunges by others first
    s.send_updates(view.expunged_here(gone))


async def search(s: Session, cmd: c.Search) -> None:
    """RFC 3501 §6.4.4; UID SEARCH may report expunges first so the view is current."""
    view = _view(s)
    if s.utf8 and cmd.charset is not None:
        raise c.bad("No CHARSET after ENABLE UTF8=ACCEPT (RFC 6855 §3)")
    if cmd.uid:
        await s.refresh(allow_expunge=True)
    stored = {i.uid: i for i in await s.store.message_infos(view.mailbox_id)}
    infos = [stored.get(u) or MessageInfo(u, 0, frozenset(), 0.0, 0) for u in view.uids]
    try:
        uids = await run_search(
            s.store, view.mailbox_id, infos, cmd.key, recent=frozenset(view.recent)
        )
    except SearchError as exc:
        raise c.bad(str(exc)) from None
    if cmd.uid:
        found = [str(u) for u in uids]
    else:
        found = [str(n) for u in uids if (n := view.seq_of(u)) is not None]
    s.send(("* SEARCH " + " ".join(found)).rstrip().encode() + b"\r\n")


async def _messages(s: Session, view: MailboxView, uids: list[int]) -> dict[int, StoredMessage]:
    return {m.uid: m for m in await s.store.get_messages(view.mailbox_id, uids)}


_FROM_INFO = frozenset({"UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE"})
"""FETCH items a :class:`MessageInfo` row answers without the message's metadata."""


def _stored(mailbox_id: int, i: MessageInfo) -> StoredMessage:
    """A StoredMessage for items in :data:`_FROM_INFO` only (no body, no metadata)."""
    return StoredMessage(mailbox_id, i.uid, i.modseq, i.flags, i.internaldate, i.size, "", b"", b"")


async def fetch(s: Session, cmd: c.Fetch) -> None:
    """RFC 3501 §6.4.5; non-PEEK body sections set ``\\Seen`` and add FLAGS."""
    view = _view(s)
    pairs = _resolve(view, cmd.messages, cmd.uid)
    atts: list[FetchAtt] = list(cmd.atts)
    if cmd.uid and not any(a.name == "UID" for a in atts):
        atts.insert(0, FetchAtt("UID"))
    if fastfetch.handles(atts, len(pairs)):
        await fastfetch.fetch_metadata(s, view, pairs, atts)
        return
    sets_seen = not view.readonly and any(a.sets_seen for a in atts)
    has_flags = any(a.name == "FLAGS" for a in atts)
    rows = None
    if len(pairs) > BATCH and all(a.name in _FROM_INFO for a in atts):
        # A flag resync ("UID FETCH 1:* (FLAGS)"): one compact read, no metadata.
        rows = {i.uid: i for i in await s.store.message_infos(view.mailbox_id)}
    for start in range(0, len(pairs), BATCH):
        batch = pairs[start : start + BATCH]
        if rows is None:
            msgs = await _messages(s, view, [u for _, u in batch])
        else:
            msgs = {u: _stored(view.mailbox_id, rows[u]) for _, u in batch if u in rows}
        seen_now: set[int] = set()
        if sets_seen:
            unseen = [u for u, m in msgs.items() if "\\Seen" not in m.flags]
            if unseen:
                updates = await s.store.set_flags(
                    view.mailbox_id, unseen, frozenset({"\\Seen"}), FlagMode.ADD
                )
                for up in updates:
                    view.own_flags(up.uid, up.modseq)
                    msgs[up.uid] = dataclasses.replace(
                        msgs[up.uid], flags=up.flags, modseq=up.modseq
                    )
                    seen_now.add(up.uid)
        out: list[encoder.Piece] = []
        for seq, uid in batch:
            msg = msgs.get(uid)
            if msg is None:
                continue  # expunged by another session (RFC 2180 §4.1.2)
            recent = uid in view.recent
            try:
                items = await fetch_items(s.store, msg, seq, atts, utf8=s.utf8, recent=recent)
            except FetchError as exc:
                await s.send_pieces(out)  # what was rendered before the bad item
                raise c.bad(str(exc)) from None
            if uid in seen_now and not has_flags:
                items.append(("FLAGS", flag_atoms(msg.flags, recent=recent)))
            pieces = encoder.fetch_response(seq, items, utf8=s.utf8)
            out += pieces
            if any(isinstance(p, BodyLiteral) for p in pieces):
                await s.send_pieces(out)  # a large body is streamed at once, not held
                out = []
        await s.send_pieces(out)


async def store(s: Session, cmd: c.Store) -> None:
    """RFC 3501 §6.4.6: answers the new flags of every message unless ``.SILENT``."""
    view = _view(s)
    if view.readonly:
        raise c.no("Mailbox is read-only", "READ-ONLY")
    pairs = _resolve(view, cmd.messages, cmd.uid)
    changed: dict[int, frozenset[str]] = {}
    for start in range(0, len(pairs), BATCH * 10):
        uids = [u for _, u in pairs[start : start + BATCH * 10]]
        for up in await s.store.set_flags(view.mailbox_id, uids, cmd.flags, cmd.mode):
            view.own_flags(up.uid, up.modseq)
            changed[up.uid] = up.flags
    if cmd.silent:
        return
    for start in range(0, len(pairs), BATCH):
        batch = pairs[start : start + BATCH]
        rest = [u for _, u in batch if u not in changed]
        current = {u: m.flags for u, m in (await _messages(s, view, rest)).items()} if rest else {}
        out: list[encoder.Piece] = []
        for seq, uid in batch:
            flags = changed.get(uid, current.get(uid))
            if flags is None:
                continue
            items: list[tuple[str, object]] = [
                ("FLAGS", flag_atoms(flags, recent=uid in view.recent))
            ]
            if cmd.uid:
                items.insert(0, ("UID", uid))
            out += encoder.fetch_response(seq, items)
        await s.send_pieces(out)


async def copy(s: Session, cmd: c.Copy) -> str:
    """RFC 3501 §6.4.7 COPY and RFC 6851 MOVE, with RFC 4315 COPYUID."""
    assert s.account is not None
    view = _view(s)
    if cmd.move and view.readonly:
        raise c.no("Mailbox is read-only", "READ-ONLY")
    pairs = _resolve(view, cmd.messages, cmd.uid)
    dst = await s.store.get_mailbox(s.account.id, cmd.mailbox)
    if dst is None or not dst.selectable:
        raise c.no(f"No such mailbox: {cmd.mailbox}", "TRYCREATE")
    uids = [u for _, u in pairs if not view.is_expunged(u)]
    word = "MOVE" if cmd.move else "COPY"
    if not uids:
        return f"{word} completed (no messages)"
    if cmd.move:
        result = await s.store.move(view.mailbox_id, uids, dst.id)
    else:
        result = await s.store.copy(view.mailbox_id, uids, dst.id)
    code = None
    if result.pairs:
        src = compress([a for a, _ in result.pairs])
        new = compress([b for _, b in result.pairs])
        code = f"COPYUID {result.uidvalidity} {src} {new}"
    if not cmd.move:
        if code:
            s.ok_code(code)
        return "COPY completed"
    # RFC 6851 §4.3: COPYUID in an untagged OK before the EXPUNGE responses
    if code:
        s.send(encoder.tagged("*", "OK", "Moved", code))
    await s.refresh(allow_expunge=True)
    s.send_updates(view.expunged_here([a for a, _ in result.pairs]))
    return "MOVE completed"
