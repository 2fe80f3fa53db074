"""The outbound queue end to end: a real correo server relays to real SMTP sinks on
loopback (aiosmtpd, scripted per recipient and per DATA), routed with [relay.routes].

Bounces are read back from the sender's INBOX and parsed with the stdlib email package,
as a mail client would.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from correo.mail.message import prepare
from correo.queue import runner as queue_runner
from correo.store.base import QueueRecipient, QueueRequest
from correo.store.queue import RecipientState, queue_store_for

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@remote.test>\r\n"
    b"Subject: queue test\r\n"
    b"Message-ID: <q1@example.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".leading dot stays\r\n"
)


# --------------------------------------------------------------------------- sinks


@dataclass
class Received:
    tls: bool
    login: Any
    sender: str
    rcpts: list[str]
    data: bytes
    mail_options: list[str]
    rcpt_options: list[list[str]]


@dataclass
class Script:
    rcpt: dict[str, str] = field(default_factory=dict)
    """address → reply to its RCPT (e.g. "550 5.1.1 no such user")."""
    data: list[str] = field(default_factory=list)
    """Replies to successive final dots; "" or an exhausted list means 250, "hold" means
    never answer."""


class Handler:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[Received] = []
        self.attempts = 0

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.script.rcpt.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.attempts += 1
        reply = self.script.data.pop(0) if self.script.data else ""
        if reply == "hold":  # take the message, never answer the final dot
            await asyncio.Event().wait()
        if reply.startswith("sleep:"):  # answer 250, slowly
            await asyncio.sleep(float(reply[6:]))
            reply = ""
        if reply:
            return reply
        content = envelope.original_content or b""
        self.received.append(
            Received(
                bool(session.ssl),
                session.auth_data,
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                content,
                list(envelope.mail_options),
                [list(o) for o in envelope.rcpt_options],
            )
        )
        return "250 2.0.0 OK queued"


class _Hang(asyncio.Protocol):
    """Accepts and never says anything."""


class _Drop(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        transport.close()


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        transport.write(b"421 4.3.2 too busy, go away\r\n")
        transport.close()


class Sink:
    """A loopback SMTP server in its own thread: "smtp" (aiosmtpd with a script),
    "hang", "drop" or "refuse" (421 greeting)."""

    def __init__(
        self,
        kind: str = "smtp",
        script: Script | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **smtp_kw: Any,
    ) -> None:
        self.smtp_kw = smtp_kw
        self.kind = kind
        self.handler = Handler(script or Script())
        self.host = host
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.start()

    def _count(self) -> asyncio.BaseProtocol:
        self.connections += 1
        return self._factory()

    def _factory(self) -> asyncio.BaseProtocol:
        if self.kind == "hang":
            return _Hang()
        if self.kind == "drop":
            return _Drop()
        if self.kind == "refuse":
            return _Refuse()
        kw = {"enable_SMTPUTF8": True, **self.smtp_kw}
        return SMTP(self.handler, hostname="sink.remote.test", **kw)

    def start(self) -> None:
        async def go() -> asyncio.AbstractServer:
            return await self.loop.create_server(self._count, self.host, self.port)

        self.server = asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self.server is None:
            return

        async def go() -> None:
            assert self.server is not None
            self.server.close()
            self.server.close_clients()  # type: ignore[attr-defined]

        try:
            asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)
        except AttributeError:  # Python < 3.13: no close_clients
            pass
        self.server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def received(self) -> list[Received]:
        return self.handler.received


@pytest.fixture
def sinks() -> Iterator[Callable[..., Sink]]:
    made: list[Sink] = []

    def make(kind: str = "smtp", script: Script | None = None, **kw: Any) -> Sink:
        s = Sink(kind, script, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


# --------------------------------------------------------------------------- helpers


def routed(port: int, extra: str = "", domain: str = "remote.test") -> str:
    return f'[relay.routes]\n"{domain}" = "127.0.0.1:{port}"\n' + extra


FAST = '[queue]\nretry_intervals = ["1s"]\njitter = 0\nlease = "3s"\n'


def enqueue(
    ms: Any,
    rcpts: tuple[str, ...] = ("bob@remote.test",),
    sender: str = "alice@example.test",
    data: bytes = MESSAGE,
    **kw: Any,
) -> int:
    async def go() -> int:
        req = QueueRequest(
            sender=sender,
            recipients=tuple(
                r if isinstance(r, QueueRecipient) else QueueRecipient(r) for r in rcpts
            ),
            prefix=b"Received: from client.example.test by mx.example.test\r\n",
            **kw,
        )
        result = await ms.store.deliver(prepare(data), [], req)
        queue_runner.wake(ms.ctx)
        assert result.queue_id is not None
        return int(result.queue_id)

    return int(ms.run(go()))


def wait_for(cond: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def queue_entries(ms: Any) -> list[Any]:
    return list(ms.run(queue_store_for(ms.store).list_entries()))


def inbox(ms: Any, address: str) -> list[EmailMessage]:
    async def go() -> list[bytes]:
        acct = await ms.store.get_account(address)
        box = await ms.store.get_mailbox(acct.id, "INBOX")
        infos = await ms.store.message_infos(box.id)
        msgs = await ms.store.get_messages(box.id, [i.uid for i in infos])
        out = []
        for m in msgs:
            body = await ms.store.open_body(m)
            out.append(await body.read())
        return out

    return [
        email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
        for raw in ms.run(go())
    ]


def status_fields(report: EmailMessage) -> list[dict[str, str]]:
    """The message/delivery-status blocks as dicts (per-message block first)."""
    part = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    blocks = []
    for sub in part.get_payload():  # type: ignore[union-attr]
        blocks.append({k.lower(): str(v) for k, v in sub.items()})
    return blocks


# --------------------------------------------------------------------------- tests


def test_delivers_through_a_route_and_empties_the_queue(make_mailserver: Any, sinks: Any) -> None:
    sink = sinks()
    ms = make_mailserver(routed(sink.port))
    qid = enqueue(
        ms,
        rcpts=(
            QueueRecipient(
                "bob@remote.test", notify=frozenset({"FAILURE"}), orcpt="rfc822;Bob@Remote.test"
            ),
        ),
        envid="E1",
        ret="HDRS",
    )
    got = wait_for(lambda: sink.received)
    assert got[0].sender == "alice@example.test"
    assert got[0].rcpts == ["bob@remote.test"]
    assert got[0].data.startswith(b"Received: from client.example.test by mx.example.test\r\n")
    assert b"\r\n.leading dot stays\r\n" in got[0].data  # dot-stuffing undone by the sink
    assert "SIZE=" + str(len(got[0].data)) in " ".join(got[0].mail_options)
    wait_for(lambda: not queue_entries(ms))
    assert ms.run(queue_store_for(ms.store).get_entry(qid)) is None
    assert inbox(ms, "alice@example.test") == []


def test_one_connection_carries_several_messages(make_mailserver: Any, sinks: Any) -> None:
    sink = sinks()
    ms = make_mailserver(routed(sink.port, "[relay]\nmax_connections_per_domain = 1\n"))
    req = QueueRequest("alice@example.test", (QueueRecipient("bob@remote.test"),))

    async def five() -> None:  # one group commit: the runner finds all five at once
        await asyncio.gather(
            *(ms.store.deliver(prepare(MESSAGE + f"n{i}\r\n".encode()), [], req) for i in range(5))
        )
        queue_runner.wake(ms.ctx)

    ms.run(five())
    wait_for(lambda: len(sink.received) == 5)
    wait_for(lambda: not queue_entries(ms))
    assert sink.connections == 1
    assert sorted(r.data[-4:] for r in sink.received) == [f"n{i}\r\n".encode() for i in range(5)]


def test_rcpt_5xx_fails_that_recipient_and_bounces(make_mailserver: Any, sinks: Any) -> None:
    sink = sinks(script=Script(rcpt={"nobody@remote.test": "550 5.1.1 no such user here"}))
    ms = make_mailserver(routed(sink.port))
    enqueue(ms, rcpts=("bob@remote.test", "nobody@remote.test"), envid="ENV-7")
    wait_for(lambda: sink.received)
    assert sink.received[0].rcpts == ["bob@remote.test"]
    [report] = wait_for(lambda: inbox(ms, "alice@example.test"))
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["Auto-Submitted"] == "auto-replied"
    assert "Undelivered" in str(report["Subject"])
    parts = [p.get_content_type() for p in report.iter_parts()]
    assert parts == ["text/plain", "message/delivery-status", "message/rfc822"]
    text = next(report.iter_parts()).get_content()
    assert "nobody@remote.test" in text and "no such user here" in text
    head, rcpt = status_fields(report)
    assert head["reporting-mta"] == "dns; mx.example.test"
    assert head["original-envelope-id"] == "ENV-7"
    assert rcpt["final-recipient"] == "rfc822; nobody@remote.test"
    assert rcpt["action"] == "failed"
    assert rcpt["status"] == "5.1.1"
    assert rcpt["remote-mta"] == "dns; 127.0.0.1"
    assert rcpt["diagnostic-code"] == "smtp; 550 5.1.1 no such user here"
    original = list(report.iter_parts())[2].get_content()
    assert original["Message-ID"] == "<q1@example.test>"
    wait_for(lambda: not queue_entries(ms))


def test_4xx_after_data_is_retried_then_delivered(make_mailserver: Any, sinks: Any) -> None:
    sink = sinks(script=Script(data=["451 4.3.0 try again later"]))
    ms = make_mailserver(routed(sink.port, FAST))
    qid = enqueue(ms)
    entry = wait_for(
        lambda: (
            (e := ms.run(queue_store_for(ms.store).get_entry(qid)))
            and e.recipients[0].state is RecipientState.DEFERRED
            and e
        )
    )
    assert entry.recipients[0].last_error == "smtp; 451 4.3.0 try again later"
    assert entry.recipients[0].attempts == 1
    wait_for(lambda: sink.received)
    assert sink.handler.attempts == 2
    wait_for(lambda: not queue_entries(ms))
    assert inbox(ms, "alice@example.test") == []


def test_null_sender_failure_is_dropped_not_bounced(
    make_mailserver: Any, sinks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sink = sinks(script=Script(rcpt={"bob@remote.test": "550 5.1.1 gone"}))
    ms = make_mailserver(routed(sink.port))
    with caplog.at_level("INFO", logger="correo.queue"):
        enqueue(ms, sender="")
        wait_for(lambda: not queue_entries(ms))
    assert inbox(ms, "alice@example.test") == []
    assert inbox(ms, "bob@example.test") == []
    assert any("null sender" in r.getMessage() for r in caplog.records)


def test_notify_never_sends_no_bounce(make_mailserver: Any, sinks: Any) -> None:
    sink = sinks(script=Script(rcpt={"bob@remote.test": "550 5.1.1 gone"}))
    ms = make_mailserver(routed(sink.port))
    enqueue(ms, rcpts=(QueueRecipient("bob@remote.test", notify=frozenset({"NEVER"})),))
    wait_for(lambda: not queue_entries(ms))
    assert inbox(ms, "alice@example.test") == []


def test_expiry_bounces_with_4_4_7(make_mailserver: Any, sinks: Any) -> None:
    down = sinks("refuse")
    ms = make_mailserver(routed(down.port, FAST + 'expire_after = "2s"\n'))
    enqueue(ms)
    [report] = wait_for(lambda: inbox(ms, "alice@example.test"), timeout=20)
    _head, rcpt = status_fields(report)
    assert rcpt["action"] == "failed"
    assert rcpt["status"] == "4.4.7"
    assert "421" in rcpt["diagnostic-code"]
    wait_for(lambda: not queue_entries(ms))


def test_one_delay_notice_then_delivery(make_mailserver: Any, sinks: Any) -> None:
    sink = sinks(script=Script(data=["451 4.4.5 busy"] * 4))
    ms = make_mailserver(routed(sink.port, FAST + 'delay_warning_after = "1s"\n'))
    enqueue(ms)
    wait_for(lambda: sink.received, timeout=20)
    wait_for(lambda: not queue_entries(ms))
    reports = inbox(ms, "alice@example.test")
    assert len(reports) == 1
    _head, rcpt = status_fields(reports[0])
    assert rcpt["action"] == "delayed"
    assert "will-retry-until" in rcpt
    assert "Delayed" in str(reports[0]["Subject"])
    assert [p.get_content_type() for p in reports[0].iter_parts()][2] == "text/rfc822-headers"


@pytest.mark.parametrize("kind", ["hang", "drop", "refuse"])
def test_unreachable_destination_defers(make_mailserver: Any, sinks: Any, kind: str) -> None:
    bad = sinks(kind)
    ms = make_mailserver(routed(bad.port, '[relay]\nconnect_timeout = "1s"\n'))
    qid = enqueue(ms)
    entry = wait_for(
        lambda: (
            (e := ms.run(queue_store_for(ms.store).get_entry(qid)))
            and e.recipients[0].state is RecipientState.DEFERRED
            and e
        )
    )
    assert entry.recipients[0].last_error.startswith("smtp; ")
    assert entry.recipients[0].next_attempt > time.time() + 60


def test_route_with_required_tls_defers_when_not_offered(make_mailserver: Any, sinks: Any) -> None:
    sink = sinks()
    extra = (
        f'[relay.routes]\n"remote.test" = {{ host = "127.0.0.1", port = {sink.port},'
        ' tls = "require" }\n'
    )
    ms = make_mailserver(extra)
    qid = enqueue(ms)
    entry = wait_for(
        lambda: (
            (e := ms.run(queue_store_for(ms.store).get_entry(qid)))
            and e.recipients[0].state is RecipientState.DEFERRED
            and e
        )
    )
    assert "TLS required" in entry.recipients[0].last_error
    assert entry.recipients[0].status == "4.7.5"
    assert sink.received == []


def test_smtputf8_message_to_a_server_without_it_fails(make_mailserver: Any, sinks: Any) -> None:
    sink = sinks()
    sink.stop()
    sink.kind = "smtp"
    # aiosmtpd advertises SMTPUTF8 when enabled: use a plain one for this test
    sink._factory = lambda: SMTP(sink.handler, hostname="old.remote.test")  # type: ignore[method-assign]
    sink.start()
    ms = make_mailserver(routed(sink.port))
    enqueue(ms, smtputf8=True)
    [report] = wait_for(lambda: inbox(ms, "alice@example.test"))
    _head, rcpt = status_fields(report)
    assert rcpt["status"] == "5.6.7"
    assert "SMTPUTF8" in rcpt["diagnostic-code"]
    assert sink.received == []


# --------------------------------------------------------------------------- TLS, AUTH


def server_tls(cert: tuple[Any, Any]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def test_opportunistic_starttls_is_used(make_mailserver: Any, sinks: Any, test_cert: Any) -> None:
    sink = sinks(tls_context=server_tls(test_cert))  # self-signed: not verified, still used
    ms = make_mailserver(routed(sink.port))
    enqueue(ms)
    [got] = wait_for(lambda: sink.received)
    assert got.tls


def test_failed_handshake_falls_back_to_plaintext(
    make_mailserver: Any, sinks: Any, test_cert: Any
) -> None:
    ctx = server_tls(test_cert)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("aNULL")  # nothing our client accepts: the handshake fails
    sink = sinks(tls_context=ctx)
    ms = make_mailserver(routed(sink.port))
    enqueue(ms)
    [got] = wait_for(lambda: sink.received)
    assert not got.tls
    assert sink.connections == 2


def test_smarthost_with_auth_over_tls(
    make_mailserver: Any, sinks: Any, test_cert: Any, tmp_path: Any
) -> None:
    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = auth_data.login == b"relayuser" and auth_data.password == b"relay pass"
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)

    sink = sinks(
        tls_context=server_tls(test_cert), authenticator=authenticator, auth_require_tls=True
    )
    secret = tmp_path / "relay.pw"
    secret.write_text("relay pass\n")
    extra = (
        f'[relay.routes]\n"*" = {{ host = "127.0.0.1", port = {sink.port},'
        f' username = "relayuser", password_file = "{secret}" }}\n'
    )
    ms = make_mailserver(extra)
    enqueue(ms, rcpts=("someone@anywhere.test",))
    [got] = wait_for(lambda: sink.received)
    assert got.tls and got.login == b"relayuser"
    secret.write_text("wrong\n")
    qid = enqueue(ms, rcpts=("other@anywhere.test",))
    entry = wait_for(
        lambda: (
            (e := ms.run(queue_store_for(ms.store).get_entry(qid)))
            and e.recipients[0].state is RecipientState.DEFERRED
            and e
        )
    )
    assert entry.recipients[0].last_error.startswith("smtp; AUTH: 535")


def test_bounce_to_a_remote_sender_goes_through_the_queue(make_mailserver: Any, sinks: Any) -> None:
    dest = sinks(script=Script(rcpt={"bob@remote.test": "550 5.1.1 unknown"}))
    home = sinks()
    extra = (
        f'[relay.routes]\n"remote.test" = "127.0.0.1:{dest.port}"\n'
        f'"sender.test" = "127.0.0.1:{home.port}"\n'
    )
    ms = make_mailserver(extra)
    enqueue(ms, sender="carol@sender.test")
    [bounce] = wait_for(lambda: home.received)
    assert bounce.sender in ("", "<>")  # null reverse-path (RFC 5321 §4.5.5)
    assert bounce.rcpts == ["carol@sender.test"]
    msg = email.message_from_bytes(bounce.data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    wait_for(lambda: not queue_entries(ms))


def test_local_failure_after_acceptance_bounces(mailserver: Any) -> None:
    from correo.queue.bounce import LocalOutcome, report_local

    sent = mailserver.run(
        report_local(
            mailserver.ctx, "alice@example.test", [LocalOutcome("bob@example.test")], MESSAGE
        )
    )
    assert sent
    [report] = inbox(mailserver, "alice@example.test")
    _head, rcpt = status_fields(report)
    assert (rcpt["action"], rcpt["status"]) == ("failed", "5.2.2")
    assert not mailserver.run(
        report_local(mailserver.ctx, "", [LocalOutcome("bob@example.test")], MESSAGE)
    )


def test_notify_success_to_a_server_without_dsn_reports_relayed(
    make_mailserver: Any, sinks: Any
) -> None:
    sink = sinks()  # aiosmtpd does not offer DSN: we report "relayed" (RFC 3461 §5.2.2)
    ms = make_mailserver(routed(sink.port))
    notify = frozenset({"SUCCESS"})
    enqueue(
        ms,
        rcpts=(QueueRecipient("bob@remote.test", notify=notify, orcpt="rfc822;bob@remote.test"),),
    )
    [report] = wait_for(lambda: inbox(ms, "alice@example.test"))
    _head, rcpt = status_fields(report)
    assert rcpt["action"] == "relayed"
    assert rcpt["original-recipient"] == "rfc822; bob@remote.test"
    assert [p.get_content_type() for p in report.iter_parts()][2] == "text/rfc822-headers"
    wait_for(lambda: not queue_entries(ms))


def test_wake_delivers_at_once_without_waiting_for_a_recheck(
    make_mailserver: Any, sinks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = sinks()
    ms = make_mailserver(routed(sink.port))
    monkeypatch.setattr(queue_runner, "RECHECK", 60.0)
    time.sleep(2.5)  # the runner finishes the 2 s wait it began before the patch
    start = time.monotonic()
    enqueue(ms)  # calls wake(ctx)
    wait_for(lambda: sink.received, timeout=10)
    assert time.monotonic() - start < 5
