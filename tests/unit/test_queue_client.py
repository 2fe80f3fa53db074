"""The outbound SMTP client against a scripted server on loopback: PIPELINING in one
write, per-recipient replies, dot-stuffing, 421, malformed replies, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from correo.queue.client import (
    ConnectionLost,
    Reply,
    SmtpClient,
    Timeouts,
    dot_stuff,
    xtext,
)

EHLO = b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-DSN\r\n250 SIZE 1000\r\n"


@dataclass
class Scripted:
    """Answers each command line with ``answer(line)``; collects DATA content."""

    answer: Callable[[str], bytes]
    greeting: bytes = b"220 sink.test ESMTP\r\n"
    reads: list[bytes] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.greeting)
        buf = b""
        in_data: bytes | None = None
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            self.reads.append(chunk)
            buf += chunk
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                if in_data is not None:
                    if line == b".":
                        self.messages.append(in_data)
                        in_data = None
                        writer.write(self.answer("."))
                    else:
                        in_data += line + b"\r\n"
                    continue
                text = line.decode()
                self.lines.append(text)
                reply = self.answer(text)
                writer.write(reply)
                if text == "DATA" and reply.startswith(b"354"):
                    in_data = b""
                if text == "QUIT" or reply.startswith(b"421"):
                    await writer.drain()
                    writer.close()
                    return
            await writer.drain()


def default(line: str) -> bytes:
    verb = line.split(" ", 1)[0].upper()
    if verb == "EHLO":
        return EHLO
    if verb == "DATA":
        return b"354 go ahead\r\n"
    if verb == "QUIT":
        return b"221 bye\r\n"
    if line.startswith("RCPT TO:<bad"):
        return b"550 5.1.1 no such user\r\n"
    if line.startswith("RCPT TO:<later"):
        return b"451 4.2.0 greylisted\r\n"
    return b"250 2.0.0 ok\r\n"


@pytest.fixture
async def server() -> AsyncIterator[Callable[..., Scripted]]:
    servers: list[asyncio.AbstractServer] = []

    async def make(answer: Callable[[str], bytes] = default, **kw: bytes) -> Scripted:
        s = Scripted(answer, **kw)
        srv = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        s.port = srv.sockets[0].getsockname()[1]
        servers.append(srv)
        return s

    yield make  # type: ignore[misc]
    for srv in servers:
        srv.close()


async def connect(s: Scripted, timeouts: Timeouts | None = None) -> SmtpClient:
    client, greeting = await SmtpClient.connect("127.0.0.1", s.port, timeouts or Timeouts())
    assert greeting.code == 220
    assert (await client.ehlo("mx.example.test")).ok
    return client


async def test_pipelined_transaction_in_one_write(server: Callable[..., Scripted]) -> None:
    s = await server()
    client = await connect(s)
    assert client.supports("pipelining") and client.size_limit == 1000
    reads_before = len(s.reads)
    tx = await client.send_mail(
        "a@x.test",
        ["SIZE=20"],
        [("good@y.test", ["NOTIFY=FAILURE"]), ("bad@y.test", []), ("later@y.test", [])],
        b"Subject: t\r\n\r\n.dot\r\nend",
    )
    assert tx.mail.ok
    assert [r.code for r in tx.rcpts if r] == [250, 550, 451]
    assert tx.data is not None and tx.data.code == 354
    assert tx.final is not None and tx.final.ok
    assert s.messages == [b"Subject: t\r\n\r\n..dot\r\nend\r\n"]
    first = s.reads[reads_before]
    assert first.count(b"\r\n") == 5 and first.endswith(b"DATA\r\n")  # one write
    assert "RCPT TO:<good@y.test> NOTIFY=FAILURE" in s.lines
    await client.quit()
    assert s.lines[-1] == "QUIT"


async def test_no_data_when_every_rcpt_fails(server: Callable[..., Scripted]) -> None:
    s = await server()
    client = await connect(s)
    tx = await client.send_mail("a@x.test", [], [("bad@y.test", [])], b"x\r\n")
    assert tx.final is None and s.messages == [b""]  # the 354 got an empty message
    await client.close()


async def test_without_pipelining_one_command_at_a_time(
    server: Callable[..., Scripted],
) -> None:
    def answer(line: str) -> bytes:
        return b"250-old.test\r\n250 8BITMIME\r\n" if line.startswith("EHLO") else default(line)

    s = await server(answer)
    client = await connect(s)
    tx = await client.send_mail("a@x.test", [], [("bad@y.test", [])], b"x\r\n")
    assert [r.code for r in tx.rcpts if r] == [550] and tx.data is None
    assert "DATA" not in s.lines
    tx = await client.send_mail("a@x.test", [], [("ok@y.test", [])], b"x\r\n")
    assert tx.final is not None and tx.final.ok
    await client.close()


async def test_421_marks_the_connection_broken(server: Callable[..., Scripted]) -> None:
    def answer(line: str) -> bytes:
        if line.startswith("MAIL"):
            return b"421 4.3.2 shutting down\r\n"
        return default(line)

    s = await server(answer)
    client = await connect(s)
    tx = await client.send_mail("a@x.test", [], [("ok@y.test", [])], b"x\r\n")
    assert tx.mail.code == 421 and client.broken
    await client.close()


async def test_malformed_and_silent_servers(server: Callable[..., Scripted]) -> None:
    s = await server(lambda line: b"hello there\r\n" if line.startswith("EHLO") else b"")
    client, _ = await SmtpClient.connect("127.0.0.1", s.port)
    with pytest.raises(ConnectionLost, match="not an SMTP reply"):
        await client.ehlo("x")
    await client.close()
    s = await server(greeting=b"")
    with pytest.raises(ConnectionLost, match="no reply within"):
        await SmtpClient.connect("127.0.0.1", s.port, Timeouts(greeting=0.2))


async def test_connection_refused() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(ConnectionLost, match="connect to"):
        await SmtpClient.connect("127.0.0.1", port)


def test_reply_status() -> None:
    assert Reply(550, ("5.1.1 unknown",)).status() == "5.1.1"
    assert Reply(550, ("4.1.1 mismatched class",)).status() == "5.0.0"
    assert Reply(451, ("try later",)).status() == "4.0.0"
    assert str(Reply(250, ("a", "b"))) == "250 a b"


def test_dot_stuff_and_xtext() -> None:
    assert dot_stuff(b".a\r\nb\r\n..c\r\n") == b"..a\r\nb\r\n...c\r\n.\r\n"
    assert dot_stuff(b"no newline") == b"no newline\r\n.\r\n"
    assert xtext("rfc822;a+b=c d@x") == "rfc822;a+2Bb+3Dc+20d@x"
