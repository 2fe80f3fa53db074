"""SMTP policy and delivery against a real SQLite store (no server, no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from correo import config
from correo.auth.service import Authenticator
from correo.context import Context
from correo.smtp import delivery, policy, replies
from correo.smtp.commands import Mail, Rcpt
from correo.smtp.policy import Client, Counters, Policy, Recipient
from correo.store.base import (
    DeliveryResult,
    DiskFullError,
    IncomingMessage,
    LocalDelivery,
    QueueRequest,
    Store,
    TemporaryStoreError,
)
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
    assert isinstance(team, Recipient) and team.remote == ("far@remote.test",)
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
    assert await resolve(p, "alice@example.test") == replies.R550_DISABLED
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
    rcpts = [await resolve(p, a) for a in ("alice@example.test", "bob@example.test")]
    assert all(isinstance(r, Recipient) for r in rcpts)
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
        queue: QueueRequest | None = None,
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
