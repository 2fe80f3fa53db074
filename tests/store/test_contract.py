"""The store contract: every backend must pass this file unchanged (see conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from correo.store.base import (
    Account,
    AlreadyExists,
    ChangeKind,
    FlagMode,
    IncomingMessage,
    InvalidName,
    LocalDelivery,
    NotFound,
    OverQuota,
    QueueRecipient,
    QueueRequest,
    Store,
)

MakeMessage = Callable[..., IncomingMessage]
DEFAULTS = {
    "INBOX": None,
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}


async def inbox_id(store: Store, account: Account) -> int:
    mb = await store.get_mailbox(account.id, "INBOX")
    assert mb is not None
    return mb.id


async def deliver_to(store: Store, msg: IncomingMessage, *accounts: Account, **kw: object) -> None:
    res = await store.deliver(msg, [LocalDelivery(a.id, **kw) for a in accounts])  # type: ignore[arg-type]
    assert len(res.delivered) == len(accounts)


# --------------------------------------------------------------------------- directory


async def test_domains(store: Store) -> None:
    d = await store.add_domain("Example.ORG")
    assert d.name == "example.org"
    with pytest.raises(AlreadyExists):
        await store.add_domain("example.org")
    await store.add_domain("b.example")
    assert [x.name for x in await store.list_domains()] == ["b.example", "example.org"]
    assert await store.is_local_domain("EXAMPLE.org")
    assert not await store.is_local_domain("other.example")
    await store.remove_domain("b.example")
    assert not await store.is_local_domain("b.example")
    with pytest.raises(NotFound):
        await store.remove_domain("b.example")


async def test_add_account_creates_default_mailboxes(store: Store, account: Account) -> None:
    assert account.address == "alice@example.org" and account.domain == "example.org"
    assert account.quota == 0 and account.used == 0 and not account.disabled
    boxes = {m.name: m for m in await store.list_mailboxes(account.id)}
    assert {n: m.special_use for n, m in boxes.items()} == DEFAULTS
    assert all(m.selectable and m.exists == 0 and m.uidnext == 1 for m in boxes.values())
    assert len({m.uidvalidity for m in boxes.values()}) == len(boxes)
    assert sorted(await store.list_subscriptions(account.id)) == sorted(DEFAULTS)


async def test_account_rules(store: Store, account: Account) -> None:
    with pytest.raises(NotFound):
        await store.add_account("bob@elsewhere.example", "h")
    with pytest.raises(AlreadyExists):
        await store.add_account("ALICE@example.org", "h")
    await store.add_alias("info@example.org", ["alice@example.org"])
    with pytest.raises(AlreadyExists):
        await store.add_account("info@example.org", "h")
    with pytest.raises(AlreadyExists):
        await store.add_alias("alice@example.org", ["x@example.net"])
    got = await store.get_account("Alice@Example.org")
    assert got == account
    assert await store.get_account_by_id(account.id) == account
    assert await store.get_account("nobody@example.org") is None


async def test_account_updates(store: Store, account: Account) -> None:
    await store.add_domain("b.example")
    bob = await store.add_account("bob@b.example", "hb", quota=1000)
    assert bob.quota == 1000
    await store.set_password("alice@example.org", "new-hash")
    await store.set_disabled("alice@example.org", True)
    await store.set_quota("alice@example.org", 5000)
    a = await store.get_account("alice@example.org")
    assert a is not None and (a.password_hash, a.disabled, a.quota) == ("new-hash", True, 5000)
    assert [x.address for x in await store.list_accounts()] == [
        "alice@example.org",
        "bob@b.example",
    ]
    assert [x.address for x in await store.list_accounts("b.example")] == ["bob@b.example"]
    for call in (
        store.set_password("zed@example.org", "h"),
        store.set_disabled("zed@example.org", True),
        store.set_quota("zed@example.org", 1),
        store.remove_account("zed@example.org"),
    ):
        with pytest.raises(NotFound):
            await call
    await store.remove_account("bob@b.example")
    assert await store.get_account("bob@b.example") is None
    assert await store.get_account_by_id(bob.id) is None


async def test_aliases(store: Store, account: Account) -> None:
    a = await store.add_alias("Sales@Example.org", ["alice@example.org", "ext@remote.example"])
    assert a.source == "sales@example.org"
    assert a.targets == ("alice@example.org", "ext@remote.example")
    catch = await store.add_alias("@example.org", ["alice@example.org"])
    assert catch.source == "@example.org"
    assert await store.get_alias("SALES@example.org") == a
    assert await store.get_alias("@example.org") == catch
    assert await store.get_alias("none@example.org") is None
    with pytest.raises(NotFound):
        await store.add_alias("x@remote.example", ["alice@example.org"])
    with pytest.raises(AlreadyExists):
        await store.add_alias("sales@example.org", ["alice@example.org"])
    assert [x.source for x in await store.list_aliases("example.org")] == [
        "@example.org",
        "sales@example.org",
    ]
    await store.remove_alias("sales@example.org")
    assert await store.get_alias("sales@example.org") is None
    with pytest.raises(NotFound):
        await store.remove_alias("sales@example.org")


async def test_remove_domain_refuses_then_force(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    await store.add_alias("info@example.org", ["alice@example.org"])
    await deliver_to(store, make_message("Subject: hi\n\nbody\n"), account)
    mid = await inbox_id(store, account)
    with pytest.raises(AlreadyExists):
        await store.remove_domain("example.org")
    await store.remove_domain("example.org", force=True)
    assert await store.list_accounts() == []
    assert await store.list_aliases() == []
    assert await store.get_mailbox_by_id(mid) is None
    assert not await store.is_local_domain("example.org")


# --------------------------------------------------------------------------- mailboxes


async def test_create_get_mailbox(store: Store, account: Account) -> None:
    mb = await store.create_mailbox(account.id, "Work/2024/Q1/")
    assert mb.name == "Work/2024/Q1" and mb.selectable and mb.highestmodseq >= 1
    names_ = [m.name for m in await store.list_mailboxes(account.id)]
    assert {"Work", "Work/2024", "Work/2024/Q1"} <= set(names_)
    with pytest.raises(AlreadyExists):
        await store.create_mailbox(account.id, "Work/2024/Q1")
    with pytest.raises(AlreadyExists):
        await store.create_mailbox(account.id, "inbox")
    with pytest.raises(InvalidName):
        await store.create_mailbox(account.id, "a//b")
    inbox = await store.get_mailbox(account.id, "iNbOx")
    assert inbox is not None and inbox.name == "INBOX"
    assert await store.get_mailbox(account.id, "work") is None
    assert await store.get_mailbox(account.id, "bad//name") is None
    assert await store.get_mailbox_by_id(mb.id) == mb
    with pytest.raises(NotFound):
        await store.create_mailbox(999999, "X")
    special = await store.create_mailbox(account.id, "Important", special_use="\\Flagged")
    assert special.special_use == "\\Flagged"


async def test_delete_create_gives_new_uidvalidity(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    mb = await store.create_mailbox(account.id, "Box")
    uv, uid = await store.append(mb.id, make_message("Subject: 1\n\n1\n"))
    assert (uv, uid) == (mb.uidvalidity, 1)
    await store.delete_mailbox(account.id, "Box")
    assert await store.get_mailbox(account.id, "Box") is None
    again = await store.create_mailbox(account.id, "Box")
    assert again.uidvalidity > mb.uidvalidity
    assert again.exists == 0
    with pytest.raises(NotFound):
        await store.delete_mailbox(account.id, "Nope")
    with pytest.raises(InvalidName):
        await store.delete_mailbox(account.id, "INBOX")


async def test_delete_with_children_leaves_noselect(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    parent = await store.create_mailbox(account.id, "P")
    await store.create_mailbox(account.id, "P/C")
    await store.append(parent.id, make_message("Subject: p\n\np\n"))
    await store.delete_mailbox(account.id, "P")
    p = await store.get_mailbox(account.id, "P")
    assert p is not None and not p.selectable and p.exists == 0 and p.size == 0
    with pytest.raises(NotFound):
        await store.append(p.id, make_message("Subject: x\n\nx\n"))
    with pytest.raises(InvalidName):  # \Noselect with children (RFC 3501 §6.3.4)
        await store.delete_mailbox(account.id, "P")
    revived = await store.create_mailbox(account.id, "P")
    assert revived.selectable and revived.uidvalidity > p.uidvalidity and revived.uidnext == 1
    # deleting the last child of a \Noselect parent removes the placeholder too
    await store.delete_mailbox(account.id, "P")
    await store.delete_mailbox(account.id, "P/C")
    assert await store.get_mailbox(account.id, "P") is None
    a = await store.get_account_by_id(account.id)
    assert a is not None and a.used == 0


async def test_rename_moves_children(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    a = await store.create_mailbox(account.id, "A")
    ab = await store.create_mailbox(account.id, "A/B")
    await store.create_mailbox(account.id, "AB")
    await store.append(ab.id, make_message("Subject: ab\n\nab\n"))
    await store.set_subscribed(account.id, "A/B", True)
    await store.rename_mailbox(account.id, "A", "X/Y")
    got = {m.name: m for m in await store.list_mailboxes(account.id)}
    assert "A" not in got and "A/B" not in got and "AB" in got and "X" in got
    assert got["X/Y"].id == a.id and got["X/Y"].uidvalidity == a.uidvalidity
    assert got["X/Y/B"].id == ab.id and got["X/Y/B"].exists == 1
    assert "A/B" in await store.list_subscriptions(account.id)  # RFC 9051 §6.3.6
    with pytest.raises(AlreadyExists):
        await store.rename_mailbox(account.id, "AB", "X/Y")
    with pytest.raises(NotFound):
        await store.rename_mailbox(account.id, "Nope", "Other")
    with pytest.raises(InvalidName):
        await store.rename_mailbox(account.id, "X", "X/Y/Z/W")
    with pytest.raises(AlreadyExists):
        await store.rename_mailbox(account.id, "AB", "inbox")


async def test_rename_inbox_moves_messages(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    await store.create_mailbox(account.id, "INBOX/Child")
    for i in range(3):
        await deliver_to(
            store,
            make_message(f"Subject: {i}\n\n{i}\n"),
            account,
            flags={"\\Seen"} if i == 0 else frozenset(),
        )
    before = await store.get_account_by_id(account.id)
    await store.rename_mailbox(account.id, "INBOX", "Old")
    old = await store.get_mailbox(account.id, "Old")
    now = await store.get_mailbox(account.id, "INBOX")
    assert old is not None and now is not None
    assert now.id == inbox.id and now.exists == 0 and now.size == 0 and now.unseen == 0
    assert old.exists == 3 and old.unseen == 2
    assert [m.uid for m in await store.message_infos(old.id)] == [1, 2, 3]
    assert await store.message_infos(now.id) == []
    assert await store.get_mailbox(account.id, "INBOX/Child") is not None
    after = await store.get_account_by_id(account.id)
    assert before is not None and after is not None and after.used == before.used
    kinds = {c.kind for c in await store.changes_since(now.id, 0)}
    assert kinds == {ChangeKind.EXPUNGED}
    # INBOX's children stay put, so INBOX may even move below itself
    await deliver_to(store, make_message("Subject: 4\n\n4\n"), account)
    await store.rename_mailbox(account.id, "inbox", "INBOX/Archive 2024")
    moved = await store.get_mailbox(account.id, "INBOX/Archive 2024")
    assert moved is not None and moved.exists == 1


async def test_subscriptions(store: Store, account: Account) -> None:
    await store.set_subscribed(account.id, "Ghost/Box", True)
    await store.set_subscribed(account.id, "Ghost/Box", True)
    assert "Ghost/Box" in await store.list_subscriptions(account.id)
    await store.set_subscribed(account.id, "Sent", False)
    subs = await store.list_subscriptions(account.id)
    assert "Sent" not in subs and subs.count("Ghost/Box") == 1
    with pytest.raises(InvalidName):
        await store.set_subscribed(account.id, "a//b", True)


# --------------------------------------------------------------------------- messages


async def test_deliver_counts_and_reads(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    msg = make_message("Subject: hello\n\nHello world\n", {"subject": "hello"})
    prefix = b"Return-Path: <s@remote.example>\r\nDelivered-To: alice@example.org\r\n"
    res = await store.deliver(msg, [LocalDelivery(account.id, prefix=prefix)])
    mid = await inbox_id(store, account)
    assert (
        res.delivered == ((account.id, mid, 1),) and res.over_quota == () and res.queue_id is None
    )
    mb = await store.get_mailbox_by_id(mid)
    assert mb is not None
    size = len(prefix) + len(msg.data)
    assert (mb.exists, mb.unseen, mb.size, mb.uidnext) == (1, 1, size, 2)
    (info,) = await store.message_infos(mid)
    assert info.uid == 1 and info.size == size and info.flags == frozenset()
    (stored,) = await store.get_messages(mid, [1, 7])
    assert stored.blob_id == msg.sha256 and stored.prefix == prefix and stored.meta == msg.meta
    assert stored.size == size and stored.modseq == info.modseq == mb.highestmodseq
    body = await store.open_body(stored)
    assert body.size == size
    assert await body.read() == prefix + msg.data
    assert await body.read(len(prefix), 7) == b"Subject"
    assert await body.read(size - 3) == msg.data[-3:]
    assert b"".join([c async for c in body.chunks(chunk=10)]) == prefix + msg.data
    assert b"".join([c async for c in body.chunks(5, 40, chunk=7)]) == (prefix + msg.data)[5:45]
    acct = await store.get_account_by_id(account.id)
    assert acct is not None and acct.used == size


async def test_big_body_reads_in_chunks(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    data = b"Subject: big\r\n\r\n" + b"".join(b"line %06d\r\n" % i for i in range(30000))
    msg = make_message(data)
    await store.deliver(msg, [LocalDelivery(account.id, prefix=b"X-P: 1\r\n")])
    (stored,) = await store.get_messages(await inbox_id(store, account), [1])
    body = await store.open_body(stored)
    whole = b"X-P: 1\r\n" + data
    pieces = [c async for c in body.chunks(chunk=65536)]
    assert len(pieces) > 1 and all(len(p) <= 65536 for p in pieces)
    assert b"".join(pieces) == whole
    assert await body.read(100_000, 5000) == whole[100_000:105_000]


async def test_one_body_for_many_recipients(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    others = [await store.add_account(f"u{i}@example.org", "h") for i in range(5)]
    msg = make_message(b"Subject: all\r\n\r\n" + b"x" * 20000)
    res = await store.deliver(msg, [LocalDelivery(a.id, prefix=b"P%d\r\n" % a.id) for a in others])
    assert len(res.delivered) == 5
    stored = [(await store.get_messages(mb, [uid]))[0] for _a, mb, uid in res.delivered]
    assert {s.blob_id for s in stored} == {msg.sha256}
    for s, a in zip(stored, others, strict=True):
        body = await store.open_body(s)
        assert await body.read() == b"P%d\r\n" % a.id + msg.data


async def test_quota_through_deliver_append_copy_expunge(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    bob = await store.add_account("bob@example.org", "h", quota=250)
    m100 = make_message(b"a" * 100)
    res = await store.deliver(m100, [LocalDelivery(bob.id), LocalDelivery(account.id)])
    assert len(res.delivered) == 2
    res = await store.deliver(make_message(b"b" * 100), [LocalDelivery(bob.id)])
    assert len(res.delivered) == 1
    res = await store.deliver(
        make_message(b"c" * 100), [LocalDelivery(bob.id), LocalDelivery(account.id)]
    )
    assert res.over_quota == (bob.id,) and [d[0] for d in res.delivered] == [account.id]
    bob_inbox = await inbox_id(store, bob)
    with pytest.raises(OverQuota) as exc:
        await store.append(bob_inbox, make_message(b"d" * 100))
    assert not exc.value.message_alone_exceeds
    with pytest.raises(OverQuota) as exc:
        await store.append(bob_inbox, make_message(b"e" * 300))
    assert exc.value.message_alone_exceeds
    with pytest.raises(OverQuota):
        await store.copy(bob_inbox, [1], bob_inbox)
    b = await store.get_account_by_id(bob.id)
    assert b is not None and b.used == 200
    await store.set_flags(bob_inbox, [1], frozenset({"\\Deleted"}), FlagMode.ADD)
    assert await store.expunge(bob_inbox) == [1]
    b = await store.get_account_by_id(bob.id)
    assert b is not None and b.used == 100
    _uv, uid = await store.append(bob_inbox, make_message(b"f" * 150))
    assert uid == 3  # refused appends took no UID; expunged uid 1 is not reused
    trash = await store.get_mailbox(bob.id, "Trash")
    assert trash is not None
    await store.move(bob_inbox, [2, 3], trash.id)  # a move within the account needs no room
    b = await store.get_account_by_id(bob.id)
    assert b is not None and b.used == 250
    await store.delete_mailbox(bob.id, "Trash")
    b = await store.get_account_by_id(bob.id)
    assert b is not None and b.used == 0


async def test_set_flags_modes(store: Store, account: Account, make_message: MakeMessage) -> None:
    mid = await inbox_id(store, account)
    for i in range(3):
        await deliver_to(store, make_message(f"Subject: {i}\n\n{i}\n"), account)
    mb0 = await store.get_mailbox_by_id(mid)
    assert mb0 is not None and mb0.unseen == 3
    ups = await store.set_flags(
        mid, [1, 2], frozenset({"\\seen", "$Work", "\\Recent"}), FlagMode.ADD
    )
    assert [u.uid for u in ups] == [1, 2]
    assert all(u.flags == {"\\Seen", "$Work"} and u.modseq > mb0.highestmodseq for u in ups)
    assert await store.set_flags(mid, [1, 2], frozenset({"\\Seen"}), FlagMode.ADD) == []
    ups = await store.set_flags(mid, [1, 2, 3], frozenset({"$Work"}), FlagMode.REMOVE)
    assert [(u.uid, u.flags) for u in ups] == [
        (1, frozenset({"\\Seen"})),
        (2, frozenset({"\\Seen"})),
    ]
    ups = await store.set_flags(mid, [1, 3, 99], frozenset({"\\Flagged"}), FlagMode.SET)
    assert [(u.uid, u.flags) for u in ups] == [
        (1, frozenset({"\\Flagged"})),
        (3, frozenset({"\\Flagged"})),
    ]
    mb = await store.get_mailbox_by_id(mid)
    assert mb is not None and mb.unseen == 2 and mb.highestmodseq == ups[0].modseq
    infos = {i.uid: i for i in await store.message_infos(mid)}
    assert infos[2].flags == {"\\Seen"} and infos[1].flags == {"\\Flagged"}
    # RFC 7162 §3.1.3: UNCHANGEDSINCE skips messages modified after the given modseq
    since = infos[2].modseq
    ups = await store.set_flags(
        mid, [1, 2, 3], frozenset({"$X"}), FlagMode.ADD, unchanged_since=since
    )
    assert [u.uid for u in ups] == [2]
    with pytest.raises(NotFound):
        await store.set_flags(999999, [1], frozenset({"$X"}), FlagMode.ADD)


async def test_change_log(store: Store, account: Account, make_message: MakeMessage) -> None:
    mid = await inbox_id(store, account)
    start = (await store.get_mailbox_by_id(mid)).highestmodseq  # type: ignore[union-attr]
    await deliver_to(store, make_message("Subject: 1\n\n1\n"), account)
    await deliver_to(store, make_message("Subject: 2\n\n2\n"), account, flags=frozenset({"\\Seen"}))
    ch = await store.changes_since(mid, start)
    assert [(c.kind, c.uid) for c in ch] == [(ChangeKind.ADDED, 1), (ChangeKind.ADDED, 2)]
    assert ch[1].flags == {"\\Seen"} and ch[0].modseq < ch[1].modseq
    mark = ch[-1].modseq
    await store.set_flags(mid, [1], frozenset({"\\Deleted"}), FlagMode.ADD)
    await store.set_flags(mid, [1], frozenset({"\\Answered"}), FlagMode.ADD)
    ch = await store.changes_since(mid, mark)
    assert [(c.kind, c.uid, c.flags) for c in ch] == [
        (ChangeKind.FLAGS, 1, frozenset({"\\Deleted", "\\Answered"}))
    ]
    mark2 = ch[-1].modseq
    assert await store.expunge(mid) == [1]
    ch = await store.changes_since(mid, mark2)
    assert [(c.kind, c.uid) for c in ch] == [(ChangeKind.EXPUNGED, 1)]
    mb = await store.get_mailbox_by_id(mid)
    assert mb is not None and mb.highestmodseq == ch[-1].modseq
    assert await store.changes_since(mid, mb.highestmodseq) == []
    full = await store.changes_since(mid, 0)
    assert [(c.kind, c.uid) for c in full] == [(ChangeKind.ADDED, 2), (ChangeKind.EXPUNGED, 1)]


async def test_expunge_only_given_uids(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    mid = await inbox_id(store, account)
    for i in range(4):
        await deliver_to(store, make_message(f"Subject: {i}\n\n{i}\n"), account)
    await store.set_flags(mid, [1, 2, 3], frozenset({"\\Deleted"}), FlagMode.ADD)
    assert await store.expunge(mid, [2, 3, 4]) == [2, 3]
    assert [i.uid for i in await store.message_infos(mid)] == [1, 4]
    assert await store.expunge(mid) == [1]
    assert await store.expunge(mid) == []
    mb = await store.get_mailbox_by_id(mid)
    assert mb is not None and mb.exists == 1 and mb.unseen == 1


async def test_delete_messages_ignores_flags_and_logs_expunges(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    mid = await inbox_id(store, account)
    for i in range(4):
        await deliver_to(store, make_message(f"Subject: {i}\n\n{i}\n"), account)
    before = (await store.get_mailbox_by_id(mid)).highestmodseq  # type: ignore[union-attr]
    await store.set_flags(mid, [4], frozenset({"\\Deleted"}), FlagMode.ADD)
    assert await store.delete_messages(mid, [1, 3, 99]) == [1, 3]
    assert [i.uid for i in await store.message_infos(mid)] == [2, 4]
    gone = [c.uid for c in await store.changes_since(mid, before) if c.kind.value == "expunged"]
    assert gone == [1, 3]
    acct = await store.get_account_by_id(account.id)
    assert acct is not None and acct.used == sum(i.size for i in await store.message_infos(mid))


async def test_copy_and_move(store: Store, account: Account, make_message: MakeMessage) -> None:
    mid = await inbox_id(store, account)
    for i in range(3):
        await store.deliver(
            make_message(f"Subject: {i}\n\n{i}\n"),
            [LocalDelivery(account.id, prefix=b"P: %d\r\n" % i, flags=frozenset({f"$k{i}"}))],
        )
    dst = await store.create_mailbox(account.id, "Dst")
    await store.append(dst.id, make_message("Subject: d\n\nd\n"))
    src_infos = {i.uid: i for i in await store.message_infos(mid)}
    res = await store.copy(mid, [3, 1, 42], dst.id)
    assert res.uidvalidity == dst.uidvalidity and res.pairs == ((1, 2), (3, 3))
    copied = {m.uid: m for m in await store.get_messages(dst.id, [2, 3])}
    assert copied[2].flags == {"$k0"} and copied[2].prefix == b"P: 0\r\n"
    assert copied[3].internaldate == src_infos[3].internaldate
    assert len(await store.message_infos(mid)) == 3
    res = await store.move(mid, [2, 3], dst.id)
    assert res.pairs == ((2, 4), (3, 5))
    assert [i.uid for i in await store.message_infos(mid)] == [1]
    kinds = [(c.kind, c.uid) for c in await store.changes_since(mid, src_infos[3].modseq)]
    assert kinds == [(ChangeKind.EXPUNGED, 2), (ChangeKind.EXPUNGED, 3)]
    d = await store.get_mailbox_by_id(dst.id)
    assert d is not None and d.exists == 5 and d.uidnext == 6
    assert (await store.copy(mid, [77], dst.id)).pairs == ()
    with pytest.raises(NotFound):
        await store.copy(mid, [1], 999999)


async def test_uid_not_reused_after_expunging_the_last(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    mid = await inbox_id(store, account)
    await deliver_to(store, make_message("Subject: 1\n\n1\n"), account)
    await store.set_flags(mid, [1], frozenset({"\\Deleted"}), FlagMode.ADD)
    await store.expunge(mid)
    res = await store.deliver(make_message("Subject: 1\n\n1\n"), [LocalDelivery(account.id)])
    assert res.delivered[0][2] == 2  # RFC 9051 §2.3.1.1


async def test_claim_recent(store: Store, account: Account, make_message: MakeMessage) -> None:
    mid = await inbox_id(store, account)
    await deliver_to(store, make_message("Subject: 1\n\n1\n"), account)
    await deliver_to(store, make_message("Subject: 2\n\n2\n"), account)
    assert await store.claim_recent(mid) == 1
    assert await store.claim_recent(mid) == 3
    await deliver_to(store, make_message("Subject: 3\n\n3\n"), account)
    mb = await store.get_mailbox_by_id(mid)
    assert mb is not None and mb.first_recent_uid == 3
    assert await store.claim_recent(mid) == 3


async def test_concurrent_deliveries_get_distinct_ascending_uids(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    mid = await inbox_id(store, account)
    msgs = [make_message(f"Subject: {i}\n\n{i}\n") for i in range(200)]
    results = await asyncio.gather(*(store.deliver(m, [LocalDelivery(account.id)]) for m in msgs))
    uids = [r.delivered[0][2] for r in results]
    assert sorted(uids) == list(range(1, 201))
    infos = await store.message_infos(mid)
    assert [i.uid for i in infos] == list(range(1, 201))
    modseqs = [i.modseq for i in infos]
    assert modseqs == sorted(modseqs) and len(set(modseqs)) == 200
    mb = await store.get_mailbox_by_id(mid)
    assert mb is not None and mb.exists == 200 and mb.uidnext == 201


async def test_deliver_with_queue_and_unknown_mailbox(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    q = QueueRequest(
        sender="alice@example.org",
        recipients=(QueueRecipient("x@remote.example", notify=frozenset({"FAILURE"})),),
        envid="E1",
        ret="HDRS",
    )
    res = await store.deliver(
        make_message("Subject: q\n\nq\n"), [LocalDelivery(account.id, mailbox="No/Such")], q
    )
    assert res.queue_id is not None and len(res.delivered) == 1
    assert res.delivered[0][1] == await inbox_id(store, account)
    only_queue = await store.deliver(make_message("Subject: r\n\nr\n"), [], q)
    assert only_queue.delivered == () and only_queue.queue_id not in (None, res.queue_id)


async def test_watch(store: Store, account: Account, make_message: MakeMessage) -> None:
    mid = await inbox_id(store, account)
    seen: list[tuple[int, int]] = []
    sub = store.watch(mid, lambda m, s: seen.append((m, s)))
    await deliver_to(store, make_message("Subject: 1\n\n1\n"), account)
    await asyncio.sleep(0.05)
    mb = await store.get_mailbox_by_id(mid)
    assert mb is not None and seen == [(mid, mb.highestmodseq)]
    sub.close()
    sub.close()
    await deliver_to(store, make_message("Subject: 2\n\n2\n"), account)
    await asyncio.sleep(0.05)
    assert len(seen) == 1


async def test_maildrop_lock(store: Store, account: Account) -> None:
    assert await store.lock_maildrop(account.id, "s1", 60)
    assert not await store.lock_maildrop(account.id, "s2", 60)
    assert await store.lock_maildrop(account.id, "s1", 60)  # refresh
    await store.unlock_maildrop(account.id, "s2")  # not ours: no effect
    assert not await store.lock_maildrop(account.id, "s2", 60)
    await store.unlock_maildrop(account.id, "s1")
    assert await store.lock_maildrop(account.id, "s2", 0.01)
    await asyncio.sleep(0.05)
    assert await store.lock_maildrop(account.id, "s3", 60)  # s2's lock expired


async def test_remove_account_releases_mail(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    bob = await store.add_account("bob@example.org", "h")
    msg = make_message(b"Subject: s\r\n\r\n" + b"z" * 10000)
    res = await store.deliver(msg, [LocalDelivery(account.id), LocalDelivery(bob.id)])
    await store.remove_account("alice@example.org")
    assert await store.list_mailboxes(account.id) == []
    _a, mb, uid = res.delivered[1]
    (stored,) = await store.get_messages(mb, [uid])
    assert await (await store.open_body(stored)).read() == msg.data


async def test_deliver_with_several_queue_requests_in_one_transaction(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    """A forwarded copy (SRS sender) and a direct relay leave in one delivery."""
    from correo.store.base import QueueRecipient, QueueRequest
    from correo.store.queue import queue_store_for

    first = QueueRequest("a@origin.test", (QueueRecipient("r1@remote.test"),))
    empty = QueueRequest("b@origin.test", ())
    second = QueueRequest(
        "", (QueueRecipient("r2@remote.test"), QueueRecipient("r3@remote.test")), prefix=b"X: 1\r\n"
    )
    msg = make_message("Subject: q\n\nbody\n")
    result = await store.deliver(msg, [LocalDelivery(account.id)], [first, empty, second])
    assert len(result.queue_ids) == 2 and result.queue_id == result.queue_ids[0]
    assert len(result.delivered) == 1
    qs = queue_store_for(store)
    one, two = [await qs.get_entry(i) for i in result.queue_ids]
    assert one is not None and two is not None
    assert one.message.sender == "a@origin.test"
    assert [r.address for r in one.recipients] == ["r1@remote.test"]
    assert two.message.sender == "" and two.message.prefix == b"X: 1\r\n"
    assert len(two.recipients) == 2
    nothing = await store.deliver(msg, [LocalDelivery(account.id)], [empty])
    assert (nothing.queue_id, nothing.queue_ids) == (None, ())
    for queue_id in result.queue_ids:
        assert await qs.remove(queue_id)
    assert len(await store.message_infos(await inbox_id(store, account))) == 2


async def test_ids_of_removed_accounts_and_mailboxes_are_never_reused(
    store: Store, account: Account
) -> None:
    """A session holding an old id must never reach a newer account's mail."""
    box = await store.create_mailbox(account.id, "Gone")
    await store.delete_mailbox(account.id, "Gone")
    newer = await store.create_mailbox(account.id, "Newer")
    assert newer.id != box.id
    temp = await store.add_account("temp@example.org", "!")
    await store.remove_account("temp@example.org")
    carol = await store.add_account("carol@example.org", "!")
    assert carol.id != temp.id
    assert await store.get_mailbox_by_id(box.id) is None


async def test_flags_per_message_are_limited(
    store: Store, account: Account, make_message: MakeMessage
) -> None:
    from correo.store.base import MAX_FLAGS, TooManyFlags

    mid = await inbox_id(store, account)
    await deliver_to(store, make_message("Subject: k\n\nk\n"), account)
    many = frozenset(f"k{i}" for i in range(MAX_FLAGS))
    assert len(await store.set_flags(mid, [1], many, FlagMode.ADD)) == 1
    with pytest.raises(TooManyFlags):
        await store.set_flags(mid, [1], frozenset({"one-more"}), FlagMode.ADD)
    with pytest.raises(TooManyFlags):
        await store.append(mid, make_message("Subject: a\n\na\n"), many | {"x"})
    (info,) = await store.message_infos(mid)
    assert info.flags == many  # the refused STORE changed nothing
