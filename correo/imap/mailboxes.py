"""Mailbox commands: CREATE, DELETE, RENAME, SUBSCRIBE, LIST, LSUB, STATUS
(RFC 3501 §6.3.3-§6.3.10), with CHILDREN (RFC 3348) and SPECIAL-USE (RFC 6154) LIST
attributes. The hierarchy separator is ``/``; the store validates names and keeps
``\\Noselect`` parents (RFC 3501 §6.3.4).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from correo.imap import commands as c
from correo.imap import encoder

if TYPE_CHECKING:
    from correo.imap.session import Session

SEPARATOR = "/"
SPECIAL_USES = frozenset(
    {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"}
)
"""RFC 6154 §2 attributes a client may ask for in CREATE ... (USE (...))."""


def _account_id(s: Session) -> int:
    assert s.account is not None
    return s.account.id


async def create(s: Session, cmd: c.Create) -> None:
    """RFC 3501 §6.3.3; missing parents are created; RFC 6154 §3 USE."""
    if cmd.mailbox.upper() == "INBOX":
        raise c.no("INBOX always exists", "ALREADYEXISTS")
    use = None
    if cmd.special_use:
        known = {u.upper(): u for u in SPECIAL_USES}
        if len(cmd.special_use) > 1 or cmd.special_use[0].upper() not in known:
            raise c.no("Unsupported special-use attribute", "USEATTR")
        use = known[cmd.special_use[0].upper()]
    await s.store.create_mailbox(_account_id(s), cmd.mailbox, use)


async def delete(s: Session, cmd: c.Delete) -> None:
    """RFC 3501 §6.3.4: a mailbox with children stays as ``\\Noselect``."""
    if cmd.mailbox == "INBOX":
        raise c.no("INBOX cannot be deleted", "CANNOT")
    if s.view is not None:
        mbx = await s.store.get_mailbox(_account_id(s), cmd.mailbox)
        if mbx is not None and mbx.id == s.view.mailbox_id:
            s.close_view()
            s.state = c.State.AUTHENTICATED
    await s.store.delete_mailbox(_account_id(s), cmd.mailbox)


async def rename(s: Session, cmd: c.Rename) -> None:
    """RFC 3501 §6.3.5; renaming INBOX moves its messages (done by the store)."""
    await s.store.rename_mailbox(_account_id(s), cmd.old, cmd.new)


async def subscribe(s: Session, cmd: c.Subscribe) -> None:
    """RFC 3501 §6.3.6/§6.3.7 (a name need not exist to be subscribed)."""
    await s.store.set_subscribed(_account_id(s), cmd.mailbox, cmd.subscribe)


def pattern_regex(reference: str, pattern: str) -> re.Pattern[str]:
    """RFC 3501 §6.3.8: ``*`` matches anything, ``%`` anything but the separator;
    the reference is prefixed; INBOX matches case-insensitively."""
    full = reference + pattern
    if full[:5].upper() == "INBOX" and full[5:6] in ("", SEPARATOR, "*", "%"):
        full = "INBOX" + full[5:]
    out = []
    for ch in full:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append("[^/]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _sort_key(name: str) -> tuple[int, str]:
    return (0 if name == "INBOX" or name.startswith("INBOX/") else 1, name)


async def list_mailboxes(s: Session, cmd: c.List) -> None:
    """RFC 3501 §6.3.8 LIST / §6.3.9 LSUB."""
    if cmd.lsub:
        await _lsub(s, cmd)
        return
    if cmd.pattern == "":
        s.send(b'* LIST (\\Noselect) "/" ""\r\n')
        return
    regex = pattern_regex(cmd.reference, cmd.pattern)
    boxes = {m.name: m for m in await s.store.list_mailboxes(_account_id(s))}
    parents = {
        name.rsplit(SEPARATOR, i)[0] for name in boxes for i in range(1, name.count(SEPARATOR) + 1)
    }
    out = bytearray()
    for name in sorted(boxes.keys() | parents, key=_sort_key):
        if not regex.fullmatch(name):
            continue
        mbx = boxes.get(name)
        attrs = []
        if mbx is None or not mbx.selectable:
            attrs.append("\\Noselect")
        attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
        if mbx is not None and mbx.special_use:
            attrs.append(mbx.special_use)
        out += (
            f'* LIST ({" ".join(attrs)}) "/" '.encode()
            + encoder.mailbox(name, utf8=s.utf8)
            + b"\r\n"
        )
    s.send(bytes(out))


async def _lsub(s: Session, cmd: c.List) -> None:
    regex = pattern_regex(cmd.reference, cmd.pattern)
    account_id = _account_id(s)
    subscribed = set(await s.store.list_subscriptions(account_id))
    boxes = {m.name: m for m in await s.store.list_mailboxes(account_id)}
    found: dict[str, bool] = {}
    for name in subscribed:
        if regex.fullmatch(name):
            mbx = boxes.get(name)
            found[name] = mbx is None or not mbx.selectable
            continue
        # RFC 3501 §6.3.9: "%" matching an unsubscribed parent of a subscribed name
        levels = name.split(SEPARATOR)
        for i in range(1, len(levels)):
            parent = SEPARATOR.join(levels[:i])
            if parent not in subscribed and regex.fullmatch(parent):
                found.setdefault(parent, True)
    out = bytearray()
    for name in sorted(found, key=_sort_key):
        attrs = "\\Noselect" if found[name] else ""
        out += f'* LSUB ({attrs}) "/" '.encode() + encoder.mailbox(name, utf8=s.utf8) + b"\r\n"
    s.send(bytes(out))


async def status(s: Session, cmd: c.Status) -> None:
    """RFC 3501 §6.3.10."""
    mbx = await s.store.get_mailbox(_account_id(s), cmd.mailbox)
    if mbx is None or not mbx.selectable:
        raise c.no(f"No such mailbox: {cmd.mailbox}", "NONEXISTENT")
    values: list[str] = []
    for item in cmd.items:
        if item == "MESSAGES":
            n = mbx.exists
        elif item == "RECENT":
            infos = await s.store.message_infos(mbx.id)
            n = sum(1 for i in infos if i.uid >= mbx.first_recent_uid)
        elif item == "UIDNEXT":
            n = mbx.uidnext
        elif item == "UIDVALIDITY":
            n = mbx.uidvalidity
        else:
            n = mbx.unseen
        values.append(f"{item} {n}")
    s.send(
        b"* STATUS "
        + encoder.mailbox(mbx.name, utf8=s.utf8)
        + f" ({' '.join(values)})\r\n".encode()
    )
