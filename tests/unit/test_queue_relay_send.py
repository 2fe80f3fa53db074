"""Relay.send against a scripted server: extension parameters (SIZE, BODY, SMTPUTF8,
DSN's RET/ENVID/NOTIFY/ORCPT) and the reply table of the issue, one branch each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import test_queue_client
from test_queue_client import EHLO, Scripted, default

from correo import config
from correo.queue.client import Timeouts
from correo.queue.relay import DestinationError, Relay, Verdict
from correo.queue.resolver import MxResolver
from correo.store.queue import QueuedMessage, QueuedRecipient, RecipientState

server = test_queue_client.server  # the fixture

DSN_EHLO = EHLO.replace(b"250 SIZE 1000", b"250-SMTPUTF8\r\n250 SIZE 1000")


def message(data_8bit: bool = False, smtputf8: bool = False) -> QueuedMessage:
    return QueuedMessage(
        id=1, blob_id="0" * 64, sender="a@x.test", envid="E+1", ret="HDRS",
        smtputf8=smtputf8, body_8bit=data_8bit, prefix=b"Received: x\r\n", size=0, created=0,
    )  # fmt: skip


def rcpt(i: int, address: str, **kw: object) -> QueuedRecipient:
    base: dict[str, object] = {
        "id": i, "queue_id": 1, "address": address, "domain": "y.test", "orcpt": None,
        "notify": frozenset(), "state": RecipientState.PENDING, "attempts": 0,
        "next_attempt": 0.0, "last_error": None, "status": None, "remote_mta": None,
        "delay_warned": False, "dsn_pending": None, "lease_owner": "me", "lease_until": 1.0,
    }  # fmt: skip
    base.update(kw)
    return QueuedRecipient(**base)  # type: ignore[arg-type]


def relay(tmp_path: Path, port: int) -> Relay:
    settings = config.loads(
        f'hostname = "mx.x.test"\n[relay.routes]\n"y.test" = "127.0.0.1:{port}"\n',
        tmp_path / "c.toml",
    )
    return Relay(settings, MxResolver(None), Timeouts(connect=2, greeting=2, command=2))  # type: ignore[arg-type]


def answering(ehlo: bytes, **by_prefix: bytes) -> Callable[[str], bytes]:
    def answer(line: str) -> bytes:
        if line.startswith("EHLO"):
            return ehlo
        for prefix, reply in by_prefix.items():
            if line.startswith(prefix.replace("_", " ")):
                return reply
        return default(line)

    return answer


async def test_dsn_parameters_are_passed_on(
    server: Callable[..., Scripted], tmp_path: Path
) -> None:
    s = await server(answering(DSN_EHLO))
    r = relay(tmp_path, s.port)
    session = await r.open("y.test")
    recipients = [
        rcpt(1, "good@y.test", notify=frozenset({"SUCCESS", "FAILURE"}), orcpt="rfc822;G+@y.test"),
        rcpt(2, "bad@y.test"),
        rcpt(3, "later@y.test"),
    ]
    out = await r.send(
        session, message(smtputf8=True), b"Subject: \xc3\xa9\r\n\r\nhi\r\n", recipients
    )
    mail = next(line for line in s.lines if line.startswith("MAIL"))
    assert mail == "MAIL FROM:<a@x.test> SIZE=32 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=E+2B1"
    assert "RCPT TO:<good@y.test> NOTIFY=FAILURE,SUCCESS ORCPT=rfc822;G+2B@y.test" in s.lines
    verdicts = {o.recipient.address: (o.verdict, o.status) for o in out}
    assert verdicts == {
        "good@y.test": (Verdict.DELIVERED, "2.0.0"),
        "bad@y.test": (Verdict.FAILED, "5.1.1"),
        "later@y.test": (Verdict.DEFERRED, "4.2.0"),
    }
    assert all(o.dsn_passed_on for o in out if o.verdict is Verdict.DELIVERED)
    assert s.messages[0].startswith(b"Received: x\r\nSubject:")
    await session.client.quit()


async def test_capability_mismatches_fail_before_sending(
    server: Callable[..., Scripted], tmp_path: Path
) -> None:
    plain = b"250-old.test\r\n250 SIZE 10\r\n"
    s = await server(answering(plain))
    r = relay(tmp_path, s.port)
    session = await r.open("y.test")
    [o] = await r.send(session, message(), b"\xff\r\n", [rcpt(1, "a@y.test")])
    assert (o.verdict, o.status) == (Verdict.FAILED, "5.6.3")
    [o] = await r.send(session, message(smtputf8=True), b"x\r\n", [rcpt(1, "a@y.test")])
    assert (o.verdict, o.status) == (Verdict.FAILED, "5.6.7")
    [o] = await r.send(session, message(), b"x" * 20 + b"\r\n", [rcpt(1, "a@y.test")])
    assert (o.verdict, o.status) == (Verdict.FAILED, "5.3.4")
    assert not any(line.startswith("MAIL") for line in s.lines)
    await session.client.quit()


async def test_mail_and_data_replies_apply_to_every_recipient(
    server: Callable[..., Scripted], tmp_path: Path
) -> None:
    replies = iter([b"550 5.7.1 sender refused\r\n", b"250 ok\r\n", b"250 ok\r\n"])
    # the first "." ends the empty message a 354 gets after a refused MAIL (RFC 2920 §3.1)
    finals = iter([b"250 ignored\r\n", b"452 4.3.1 full\r\n", b"554 5.6.0 refused\r\n"])

    def answer(line: str) -> bytes:
        if line.startswith("MAIL"):
            return next(replies)
        if line == ".":
            return next(finals)
        return default(line)

    s = await server(answer)
    r = relay(tmp_path, s.port)
    session = await r.open("y.test")
    two = [rcpt(1, "a@y.test"), rcpt(2, "b@y.test")]
    outs = await r.send(session, message(), b"x\r\n", two)
    assert {(o.verdict, o.status) for o in outs} == {(Verdict.FAILED, "5.7.1")}
    assert "RSET" in s.lines
    outs = await r.send(session, message(), b"x\r\n", two)
    assert {(o.verdict, o.status) for o in outs} == {(Verdict.DEFERRED, "4.3.1")}
    outs = await r.send(session, message(), b"x\r\n", two)
    assert {(o.verdict, o.status) for o in outs} == {(Verdict.FAILED, "5.6.0")}
    assert outs[0].diagnostic == "smtp; 554 5.6.0 refused"
    await session.client.quit()


async def test_connection_lost_mid_transaction_defers(
    server: Callable[..., Scripted], tmp_path: Path
) -> None:
    s = await server(lambda line: b"" if line.startswith(("RCPT", "DATA")) else default(line))
    r = relay(tmp_path, s.port)
    r.timeouts = Timeouts(connect=2, greeting=2, command=0.3)
    session = await r.open("y.test")
    [o] = await r.send(session, message(), b"x\r\n", [rcpt(1, "a@y.test")])
    assert o.verdict is Verdict.DEFERRED and "no reply within" in o.diagnostic
    assert not session.usable
    await session.client.close()


async def test_drop_after_ehlo_is_a_destination_failure(
    server: Callable[..., Scripted], tmp_path: Path
) -> None:
    s = await server(lambda line: b"421 4.3.2 bye\r\n" if line.startswith("EHLO") else b"")
    with pytest.raises(DestinationError) as info:
        await relay(tmp_path, s.port).open("y.test")
    assert not info.value.permanent and "EHLO: 421" in info.value.diagnostic
    s2 = await server(lambda line: b"" if line.startswith("EHLO") else default(line))
    r = relay(tmp_path, s2.port)
    r.timeouts = Timeouts(connect=2, greeting=2, command=0.3)
    with pytest.raises(DestinationError) as info:
        await r.open("y.test")
    assert not info.value.permanent and "no reply within" in info.value.diagnostic
