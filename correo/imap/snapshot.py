"""What SELECT and EXAMINE report (RFC 3501 §6.3.1-2, §7.1 UNSEEN, §7.2.6 FLAGS),
from the store's compact view when it has one (``ImapFastPaths.mailbox_view``), else
built from ``Store.message_infos`` (one pass over every message row)."""

from __future__ import annotations

from array import array

from correo.store.base import Mailbox, MailboxSnapshot, Store


async def load(store: Store, mbx: Mailbox) -> MailboxSnapshot:
    """The snapshot of ``mbx`` (its identity as read before the caller subscribed)."""
    fast = getattr(store, "mailbox_view", None)
    if fast is not None:
        snap: MailboxSnapshot = await fast(mbx.id)
        return snap
    current = await store.get_mailbox_by_id(mbx.id) or mbx
    infos = await store.message_infos(mbx.id)
    return from_infos(current, [(i.uid, i.flags) for i in infos])


def from_infos(mbx: Mailbox, rows: list[tuple[int, frozenset[str]]]) -> MailboxSnapshot:
    """The snapshot from every message's (UID, flags), in UID order."""
    uids = array("I")
    keywords: set[str] = set()
    unseen = 0
    first_unseen: int | None = None
    for n, (uid, flags) in enumerate(rows, 1):
        uids.append(uid)
        if "\\Seen" not in flags:
            unseen += 1
            if first_unseen is None:
                first_unseen = n
        if len(flags) > 1 or (flags and "\\Seen" not in flags):
            keywords.update(f for f in flags if f[0] != "\\")
    return MailboxSnapshot(
        mailbox_id=mbx.id,
        uidvalidity=mbx.uidvalidity,
        uidnext=mbx.uidnext,
        highestmodseq=mbx.highestmodseq,
        uids=uids,
        unseen=unseen,
        first_unseen=first_unseen,
        first_recent_uid=mbx.first_recent_uid,
        keywords=frozenset(keywords),
    )
