"""SMTP policy and delivery against a real SQLite store (no server, no sockets)."""

from __future__ import annotations

import contextlib
import email
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from correo import config
from correo.auth.service import Authenticator
from correo.context import Context
from correo.mail.message import prepare
from correo.queue import srs
from correo.smtp import delivery, policy, replies
from correo.smtp.commands import Mail, Rcpt
from correo.smtp.policy import Client, Counters, Policy, Recipient
from correo.store.base import (
    DeliveryResult,
    DiskFullError,
    IncomingMessage,
    LocalDelivery,
    QueueRecipient,
    QueueRequest,
    Store,
    TemporaryStoreError,
)
from correo.store.queue import queue_store_for
from correo.store.sqlite import SqliteStore

MX = Client("192.0.2.1", "smtp")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "correo.db", tmp_path / "blobs")
    await s.open()
    await s.add_domain("example.test")
    await s.add_domain("other.test")
    await s.add_account("alice@example.test", "x")
    await s.add_account("bob@example.test", "x", quota=1000)
    try:
        yield s
    finally:
        await s.close()


def context(store: Store, max_received: int = 100) -> Context:
    settings = config.loads(f"[smtp]\nmax_received_headers = {max_received}\n")
    return Context(settings, store, Authenticator(settings), None)


def make_policy(store: Store, toml: str = "") -> Policy:
    return Policy(config.loads(toml), store, Counters())


async def resolve(p: Policy, address: str, client: Client = MX) -> Recipient | replies.Reply:
    return await p.check_recipient(client, Rcpt(address), None)


def local_addresses(r: Recipient | replies.Reply) -> list[str]:
    assert isinstance(r, Recipient), r
    return sorted(t.address for t in r.local)


async def test_accounts_subaddress_and_case(store: SqliteStore) -> None:
    p = make_policy(store)
    assert local_addresses(await resolve(p, "alice@example.test")) == ["alice@example.test"]
    assert local_addresses(await resolve(p, "Alice+News@example.test")) == ["alice@example.test"]
    assert await resolve(p, "carol@example.test") == replies.R550_NO_SUCH_USER


async def test_aliases_recursive_catch_all_and_forwarding(store: SqliteStore) -> None:
    await store.add_alias("team@example.test", ["staff@example.test", "far@remote.test"])
    await store.add_alias("staff@example.test", ["alice@example.test", "bob@example.test"])
    await store.add_alias("@other.test", ["alice@example.test"])
    p = make_policy(store)
    team = await resolve(p, "team@example.test")
    assert local_addresses(team) == ["alice@example.test", "bob@example.test"]
    assert isinstance(team, Recipient) and team.remote == ()  # forwarded, not relayed
    assert team.forwards == (policy.Forward("far@remote.test", "team@example.test"),)
    assert team.loop_guard == {"team@example.test"}
    assert local_addresses(await resolve(p, "anyone@other.test")) == ["alice@example.test"]


async def test_alias_loop_is_refused(store: SqliteStore) -> None:
    await store.add_alias("a@example.test", ["b@example.test"])
    await store.add_alias("b@example.test", ["c@example.test"])
    await store.add_alias("c@example.test", ["a@example.test"])
    p = make_policy(store, "[queue]\nmax_alias_depth = 5\n")
    result = await resolve(p, "a@example.test")
    assert isinstance(result, replies.Reply) and result.code == 550


async def test_relay_rules(store: SqliteStore) -> None:
    p = make_policy(store)
    assert await resolve(p, "x@remote.test") == replies.R554_RELAY_DENIED
    assert await resolve(p, "x@remote.test", Client("127.0.0.1", "smtp")) == (
        replies.R554_RELAY_DENIED
    )  # loopback is not trusted by default
    trusted = make_policy(store, '[smtp]\ntrusted_networks = ["192.0.2.0/24"]\n')
    ok = await resolve(trusted, "x@remote.test")
    assert isinstance(ok, Recipient) and ok.remote == ("x@remote.test",)
    assert await resolve(p, "x%remote.test@example.test") == replies.R550_PERCENT_HACK
    assert await resolve(p, "remote.test!x@example.test") == replies.R550_PERCENT_HACK


async def test_queue_flag_refuses_remote_temporarily(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy, "QUEUE_AVAILABLE", False)
    p = make_policy(store, '[smtp]\ntrusted_networks = ["192.0.2.0/24"]\n')
    assert await resolve(p, "x@remote.test") == replies.R451_NO_QUEUE


async def test_postmaster(store: SqliteStore) -> None:
    p = make_policy(store)
    assert await resolve(p, "postmaster") == replies.R451_POSTMASTER_UNSET
    fallback = make_policy(store, '[smtp]\npostmaster = "bob@example.test"\n')
    assert local_addresses(await resolve(fallback, "postmaster")) == ["bob@example.test"]
    assert local_addresses(await resolve(fallback, "postmaster@other.test")) == ["bob@example.test"]
    await store.add_alias("postmaster@example.test", ["alice@example.test"])
    assert local_addresses(await resolve(p, "postmaster")) == ["alice@example.test"]
    assert local_addresses(await resolve(p, "POSTMASTER@example.test")) == ["alice@example.test"]


async def test_disabled_account_and_quota(store: SqliteStore) -> None:
    await store.set_disabled("alice@example.test", True)
    p = make_policy(store)
    alice = await store.get_account("alice@example.test")
    assert alice is not None
    # still receives (issue 2)
    assert local_addresses(await resolve(p, "alice@example.test")) == ["alice@example.test"]
    me = Client("192.0.2.9", "submission", alice)  # authenticated before the disable
    assert await p.check_sender(me, Mail("alice@example.test")) == replies.R535_DISABLED
    assert await p.check_recipient(MX, Rcpt("bob@example.test"), 2000) == replies.R552_QUOTA
    assert await p.check_recipient(MX, Rcpt("bob@example.test"), 999) != replies.R552_QUOTA


async def test_sender_rules_and_hourly_limits(store: SqliteStore) -> None:
    alice = await store.get_account("alice@example.test")
    await store.add_alias("sales@example.test", ["alice@example.test"])
    p = make_policy(store, "[smtp]\nhourly_messages = 2\nhourly_recipients = 3\n")
    sub = Client("192.0.2.9", "submission", None)
    assert await p.check_sender(sub, Mail("alice@example.test")) == replies.R530_AUTH_REQUIRED
    me = Client("192.0.2.9", "submission", alice)
    assert await p.check_sender(me, Mail("bob@example.test")) == replies.R553_NOT_OWNER
    assert await p.check_sender(me, Mail("")) == replies.R553_NOT_OWNER
    assert await p.check_sender(me, Mail("sales@example.test")) is None
    assert await p.check_sender(me, Mail("alice+x@example.test")) is None
    assert await p.check_sender(me, Mail("alice@example.test")) == replies.R450_RATE_LIMITED
    results = [await resolve(p, f"r{i}@remote.test", me) for i in range(4)]
    assert [isinstance(r, Recipient) for r in results] == [True, True, True, False]
    assert results[3] == replies.R450_RATE_LIMITED
    loose = make_policy(store, "[smtp]\nrequire_sender_ownership = false\n")
    assert await loose.check_sender(me, Mail("bob@example.test")) is None


# --------------------------------------------------------------------------- delivery

TRACE = delivery.Trace(
    helo="client.test",
    ip="192.0.2.1",
    hostname="mx.example.test",
    session_id="abc123",
    extended=True,
    tls="",
    authenticated=False,
    submission=False,
)
TEXT = b"Subject: t\r\n\r\nbody\r\n"


async def test_delivery_store_once_with_prefixes(store: SqliteStore) -> None:
    p = make_policy(store)
    rcpts = recipients(*[await resolve(p, a) for a in ("alice@example.test", "bob@example.test")])
    reply = await delivery.deliver(context(store, 100), TRACE, Mail("s@remote.test"), rcpts, TEXT)
    assert reply.code == 250
    for name in ("alice@example.test", "bob@example.test"):
        account = await store.get_account(name)
        assert account is not None
        box = await store.get_mailbox(account.id, "INBOX")
        assert box is not None
        (msg,) = await store.get_messages(box.id, [1])
        assert msg.prefix == f"Return-Path: <s@remote.test>\r\nDelivered-To: {name}\r\n".encode()
        data = await (await store.open_body(msg)).read()
        assert data.startswith(msg.prefix + b"Received: from client.test ([192.0.2.1])\r\n")
        assert data.endswith(TEXT)


async def test_received_header_and_keywords() -> None:
    assert delivery.protocol_keyword(False, False, False, False) == "SMTP"
    assert delivery.protocol_keyword(True, True, True, False) == "ESMTPSA"
    assert delivery.protocol_keyword(True, True, False, True) == "UTF8SMTPS"
    one = [Recipient("a@example.test")]
    head = delivery.received_header(TRACE, Mail("s@x.test"), one)
    assert head.startswith(
        b"Received: from client.test ([192.0.2.1])\r\n\tby mx.example.test "
        b"(correo)\r\n\twith ESMTP id abc123\r\n\tfor <a@example.test>;\r\n\t"
    )
    assert head.endswith(b"\r\n") and b"\n\r" not in head.replace(b"\r\n", b"")


def test_submission_fixups() -> None:
    names = delivery.header_names(b"From: a\r\nmessage-id: <x>\r\n\r\nDate: in body\r\n")
    assert names == [b"from", b"message-id"]
    fix = delivery.submission_fixups(names, "mx.example.test")
    assert fix.startswith(b"Date: ") and b"Message-ID" not in fix


class FailingStore(SqliteStore):
    """A real store whose ``deliver`` fails the way a full or locked disk does."""

    error: Exception = TemporaryStoreError("database is locked")

    async def deliver(
        self,
        message: IncomingMessage,
        local: Sequence[LocalDelivery],
        queue: QueueRequest | Sequence[QueueRequest] | None = None,
    ) -> DeliveryResult:
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TemporaryStoreError("locked"), replies.R451_LOCAL_ERROR),
        (DiskFullError("full"), replies.R452_DISK_FULL),
        (RuntimeError("bug"), replies.R451_LOCAL_ERROR),
    ],
)
async def test_store_failures_are_temporary(
    tmp_path: Path, error: Exception, expected: replies.Reply
) -> None:
    s = FailingStore(tmp_path / "f.db", tmp_path / "blobs")
    await s.open()
    try:
        s.error = error
        r = Recipient("a@example.test", local=(policy.LocalTarget(1, "a@example.test"),))
        assert await delivery.deliver(context(s, 100), TRACE, Mail(""), [r], TEXT) == expected
    finally:
        await s.close()


async def test_loop_detection(store: SqliteStore) -> None:
    p = make_policy(store)
    r = await resolve(p, "alice@example.test")
    assert isinstance(r, Recipient)
    hops = b"Received: x\r\n" * 4
    assert await delivery.deliver(context(store, 3), TRACE, Mail(""), [r], hops + TEXT) == (
        replies.R554_LOOP
    )
    assert (
        await delivery.deliver(context(store, 4), TRACE, Mail(""), [r], hops + TEXT)
    ).code == 250


async def test_late_over_quota_for_everyone_is_temporary(store: SqliteStore) -> None:
    p = make_policy(store)
    r = await resolve(p, "bob@example.test")  # quota 1000
    assert isinstance(r, Recipient)
    big = b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n"
    assert await delivery.deliver(context(store, 100), TRACE, Mail(""), [r], big) == (
        replies.R452_MAILBOX_FULL
    )


# --------------------------------------------------------------------------- forwarding

SECRET = "s3cret"
SRS_TOML = f'[relay]\nsrs_secret = "{SECRET}"\n'


def srs_context(store: Store, secret: str = SECRET) -> Context:
    settings = config.loads(f'[relay]\nsrs_secret = "{secret}"\n')
    return Context(settings, store, Authenticator(settings), None)


def recipients(*results: Recipient | replies.Reply) -> list[Recipient]:
    assert all(isinstance(r, Recipient) for r in results), results
    return [r for r in results if isinstance(r, Recipient)]


async def inbox(store: Store, address: str) -> list[bytes]:
    account = await store.get_account(address)
    assert account is not None
    box = await store.get_mailbox(account.id, "INBOX")
    assert box is not None
    infos = await store.message_infos(box.id)
    msgs = await store.get_messages(box.id, [i.uid for i in infos])
    return [await (await store.open_body(m)).read() for m in msgs]


def refcount(db: Path, sha: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT refcount FROM blobs WHERE sha = ?", (sha,)).fetchone()
    return int(row[0]) if row else 0


async def test_forward_chain_catch_all_and_subaddress(store: SqliteStore) -> None:
    await store.add_alias("outer@example.test", ["inner@example.test", "alice@example.test"])
    await store.add_alias("inner@example.test", ["x@remote.test", "alice@example.test"])
    await store.add_alias("@other.test", ["y@remote.test"])
    p = make_policy(store)
    (outer, caught, plain) = recipients(
        await resolve(p, "Outer+tag@example.test"),
        await resolve(p, "someone@other.test"),
        await resolve(p, "alice@example.test"),
    )
    # Delivered-To / SRS forwarder: the alias that names the remote target
    assert outer.forwards == (policy.Forward("x@remote.test", "inner@example.test"),)
    assert outer.loop_guard == {"outer@example.test", "inner@example.test"}
    assert local_addresses(outer) == ["alice@example.test"] and outer.remote == ()
    # a catch-all forwards as the address it caught, not "@other.test"
    assert caught.forwards == (policy.Forward("y@remote.test", "someone@other.test"),)
    assert caught.loop_guard == {"someone@other.test"}
    assert plain.forwards == () and plain.loop_guard == frozenset()


async def test_srs_bounce_addresses(store: SqliteStore) -> None:
    p = make_policy(store, SRS_TOML)
    addr = srs.forward("carol@origin.test", "example.test", SECRET)
    (back,) = recipients(await resolve(p, addr))  # an unauthenticated MX client
    assert back.remote == ("carol@origin.test",) and back.local == () and back.forwards == ()
    # an original sender in a local domain is delivered locally
    own = srs.forward("alice@example.test", "other.test", SECRET)
    assert local_addresses(await resolve(p, own)) == ["alice@example.test"]
    # SRS1 of ours wrapping an SRS0 of ours (both local domains) unwinds twice
    inner = srs.forward("carol@origin.test", "other.test", SECRET)
    outer = srs.forward(inner, "example.test", SECRET)
    assert outer.startswith("SRS1=")
    (twice,) = recipients(await resolve(p, outer))
    assert twice.remote == ("carol@origin.test",)
    # SRS1 naming another forwarder: relayed to that forwarder's SRS0 address
    theirs = srs.forward("carol@origin.test", "first.test", "their-secret")
    (hop,) = recipients(await resolve(p, srs.forward(theirs, "example.test", SECRET)))
    assert hop.remote == (theirs,)
    # forged, stale, malformed: 550 5.7.1, never relayed
    assert await resolve(p, addr.replace("=carol@", "=mallory@")) == policy.R550_BAD_SRS
    old = srs.forward("carol@origin.test", "example.test", SECRET, time.time() - 30 * 86400)
    assert await resolve(p, old) == policy.R550_BAD_SRS
    assert await resolve(p, "SRS0=nonsense@example.test") == policy.R550_BAD_SRS
    # SRS is off without a secret: just an unknown local part
    assert await resolve(make_policy(store), addr) == replies.R550_NO_SUCH_USER


def test_srs_accepts_a_stamp_from_a_clock_a_day_ahead() -> None:
    now = 1_780_000_000.0
    tomorrow = srs.forward("carol@origin.test", "example.test", SECRET, now + 86400)
    assert srs.reverse(tomorrow, SECRET, now) == "carol@origin.test"
    two_days = srs.forward("carol@origin.test", "example.test", SECRET, now + 2 * 86400)
    with pytest.raises(srs.SrsError):
        srs.reverse(two_days, SECRET, now)


class SpyStore(SqliteStore):
    """The real store, recording what ``deliver`` was asked to do."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[tuple[list[LocalDelivery], Any]] = []

    async def deliver(
        self,
        message: IncomingMessage,
        local: Sequence[LocalDelivery],
        queue: QueueRequest | Sequence[QueueRequest] | None = None,
    ) -> DeliveryResult:
        self.calls.append((list(local), queue))
        return await super().deliver(message, local, queue)


async def test_forwarded_and_relayed_copies_commit_together(tmp_path: Path) -> None:
    spy = SpyStore(tmp_path / "spy.db", tmp_path / "blobs")
    await spy.open()
    try:
        await spy.add_domain("example.test")
        alice = await spy.add_account("alice@example.test", "x")
        await spy.add_alias(
            "mix@example.test", ["alice@example.test", "far@remote.test", "both@remote.test"]
        )
        p = make_policy(spy, SRS_TOML)
        me = Client("192.0.2.9", "submission", alice)
        rcpts = recipients(
            *[
                await p.check_recipient(me, Rcpt(a), None)
                for a in ("mix@example.test", "both@remote.test", "direct@remote.test")
            ]
        )
        mail = Mail("carol@origin.test", envid="E1", ret="HDRS")
        reply = await delivery.deliver(srs_context(spy), TRACE, mail, rcpts, TEXT)
        assert reply.code == 250
        ((local, queue),) = spy.calls  # ONE transaction: local copy and both entries
        assert [d.account_id for d in local] == [alice.id]
        assert isinstance(queue, list) and len(queue) == 2
        entries = sorted(await queue_store_for(spy).list_entries(), key=lambda e: e.message.id)
        direct, fwd = (e.message for e in entries)
        assert direct.sender == "carol@origin.test" and direct.prefix == b""
        assert sorted(r.address for r in entries[0].recipients) == [
            "both@remote.test",  # relayed directly: sent once, under the original sender
            "direct@remote.test",
        ]
        assert fwd.sender.startswith("SRS0=") and fwd.sender.endswith("@example.test")
        assert srs.reverse(fwd.sender, SECRET) == "carol@origin.test"
        assert fwd.prefix == b"Delivered-To: mix@example.test\r\n"
        assert (fwd.envid, fwd.ret) == ("E1", "HDRS")
        assert [(r.address, r.orcpt) for r in entries[1].recipients] == [
            ("far@remote.test", "rfc822;mix@example.test")  # RFC 3461 §4.2
        ]
        (stored,) = await inbox(spy, "alice@example.test")
        assert stored.startswith(b"Return-Path: <carol@origin.test>\r\n")
        assert refcount(tmp_path / "spy.db", fwd.blob_id) == 3
    finally:
        await spy.close()


async def test_null_sender_and_no_secret(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    await store.add_alias("fwd@example.test", ["far@remote.test"])
    (fwd,) = recipients(await resolve(make_policy(store, SRS_TOML), "fwd@example.test"))
    assert (await delivery.deliver(srs_context(store), TRACE, Mail(""), [fwd], TEXT)).code == 250
    unsigned = srs_context(store, secret="")
    for _ in range(2):
        reply = await delivery.deliver(unsigned, TRACE, Mail("carol@origin.test"), [fwd], TEXT)
        assert reply.code == 250
    senders = [e.message.sender for e in await queue_store_for(store).list_entries()]
    assert sorted(senders) == ["", "carol@origin.test", "carol@origin.test"]
    warnings = [r for r in caplog.records if "srs_secret is not set" in r.getMessage()]
    assert len(warnings) == 1  # once per server, not per message


async def test_forwarding_loops(store: SqliteStore) -> None:
    await store.add_account("carol@example.test", "x")
    await store.add_alias("fwd@example.test", ["far@remote.test"])
    p = make_policy(store, SRS_TOML)
    (fwd, alice) = recipients(
        await resolve(p, "fwd@example.test"), await resolve(p, "alice@example.test")
    )
    ctx = srs_context(store)
    qs = queue_store_for(store)
    carol = Mail("carol@example.test")
    for looped in (
        b"Delivered-To: <FWD@example.test>\r\n" + TEXT,
        b"X-A: 1\r\nDelivered-To:\r\n fwd@example.test\r\n" + TEXT,  # folded
    ):
        reply = await delivery.deliver(ctx, TRACE, carol, [fwd], looped)
        assert reply == delivery.r554_forwarding_loop("fwd@example.test")
        assert (reply.code, reply.enhanced) == (554, "5.4.6")
    assert await qs.list_entries() == [] and await inbox(store, "carol@example.test") == []
    # with a deliverable recipient too: one 250, a 5.4.6 report for the looping one
    looped = b"Delivered-To: fwd@example.test\r\n" + TEXT
    assert (await delivery.deliver(ctx, TRACE, carol, [fwd, alice], looped)).code == 250
    assert len(await inbox(store, "alice@example.test")) == 1
    assert await qs.list_entries() == []
    (raw,) = await inbox(store, "carol@example.test")
    report = email.message_from_bytes(raw)
    assert report.get_content_type() == "multipart/report"
    assert b"Final-Recipient: rfc822; fwd@example.test" in raw or (
        b"Final-Recipient: rfc822;fwd@example.test" in raw
    )
    assert b"Status: 5.4.6" in raw
    # the report for a looping message from an SRS sender of ours goes to the original
    srs_carol = Mail(srs.forward("carol@example.test", "other.test", SECRET))
    assert (await delivery.deliver(ctx, TRACE, srs_carol, [fwd, alice], looped)).code == 250
    assert len(await inbox(store, "carol@example.test")) == 2
    # Delivered-To naming somebody else is no loop
    other = b"Delivered-To: alice@example.test\r\n" + TEXT
    assert (await delivery.deliver(ctx, TRACE, carol, [fwd], other)).code == 250
    assert len(await qs.list_entries()) == 1


async def test_store_deliver_takes_several_queue_requests(
    store: SqliteStore, tmp_path: Path
) -> None:
    alice = await store.get_account("alice@example.test")
    assert alice is not None
    first = QueueRequest("a@origin.test", (QueueRecipient("r1@remote.test"),))
    empty = QueueRequest("b@origin.test", ())
    second = QueueRequest(
        "", (QueueRecipient("r2@remote.test"), QueueRecipient("r3@remote.test")), prefix=b"X: 1\r\n"
    )
    msg = prepare(TEXT)
    result = await store.deliver(msg, [LocalDelivery(alice.id)], [first, empty, second])
    assert len(result.queue_ids) == 2 and result.queue_id == result.queue_ids[0]
    assert len(result.delivered) == 1
    qs = queue_store_for(store)
    one, two = [await qs.get_entry(i) for i in result.queue_ids]
    assert one is not None and two is not None
    assert (one.message.sender, [r.address for r in one.recipients]) == (
        "a@origin.test",
        ["r1@remote.test"],
    )
    assert two.message.sender == "" and two.message.prefix == b"X: 1\r\n"
    assert two.message.size == len(msg.data) + 6 and len(two.recipients) == 2
    db = tmp_path / "correo.db"
    assert refcount(db, msg.sha256) == 3  # the mailbox copy and one per queue entry
    single = await store.deliver(msg, [], first)
    assert single.queue_ids == (single.queue_id,) and single.queue_id is not None
    nothing = await store.deliver(msg, [LocalDelivery(alice.id)], [empty])
    assert (nothing.queue_id, nothing.queue_ids) == (None, ())
    assert refcount(db, msg.sha256) == 5
    for queue_id in (*result.queue_ids, single.queue_id):
        assert await qs.remove(queue_id)
    assert refcount(db, msg.sha256) == 2  # the two mailbox copies remain
