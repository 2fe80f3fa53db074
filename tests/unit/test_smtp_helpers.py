"""Helpers for the SMTP core tests (no tests here): a scripted peer that feeds bytes,
answers every event with a fixed policy, and returns the exact bytes the server would
have written."""

from __future__ import annotations

from collections.abc import Callable

from correo.smtp import commands as c
from correo.smtp import replies
from correo.smtp.protocol import NEED_DATA, Limits, NeedData, ServerProtocol
from correo.smtp.replies import Reply

GREETING = replies.reply(220, "", "mx.example.test ESMTP correo")
EHLO = Reply(250, "", ("mx.example.test", "PIPELINING", "CHUNKING"))


def accept_all(event: c.Event) -> Reply:
    """The most permissive session: every command succeeds."""
    match event:
        case c.Hello():
            return EHLO
        case c.Mail():
            return replies.R250_SENDER_OK
        case c.Rcpt():
            return replies.R250_RECIPIENT_OK
        case c.Data():
            return replies.R354_DATA
        case c.Bdat(size=size):
            return replies.r250_chunk(size)
        case c.Message():
            return replies.R250_QUEUED
        case c.Quit():
            return replies.R221_BYE
        case c.StartTls():
            return replies.R220_TLS_GO
        case c.Auth():
            return replies.R235_AUTH_OK
        case c.Invalid(reply=reply):
            return reply
        case c.Vrfy():
            return replies.R252_VRFY_DISABLED
        case c.Help():
            return replies.R214_HELP
        case _:
            return replies.R250_OK


class Peer:
    def __init__(
        self,
        limits: Limits | None = None,
        policy: Callable[[c.Event], Reply] = accept_all,
        tls: bool = False,
    ) -> None:
        self.proto = ServerProtocol(limits or Limits(), tls=tls)
        self.policy = policy
        self.events: list[c.Event] = []
        self.greeting = self.proto.send(GREETING)

    def feed(self, data: bytes) -> bytes:
        """Feed ``data`` and answer every complete event; the server's bytes."""
        if data:  # b"" would mean EOF
            self.proto.receive_data(data)
        out = bytearray()
        while True:
            event = self.proto.next_event()
            if event is NEED_DATA or isinstance(event, c.Closed):
                if isinstance(event, c.Closed):
                    self.events.append(event)
                return bytes(out)
            assert not isinstance(event, NeedData)
            self.events.append(event)
            out += self.proto.send(self.policy(event))

    def messages(self) -> list[bytes]:
        return [e.data for e in self.events if isinstance(e, c.Message)]


def session(data: bytes, **kwargs: object) -> tuple[bytes, Peer]:
    """EHLO then ``data``; returns the reply bytes after the EHLO reply."""
    peer = Peer(**kwargs)  # type: ignore[arg-type]
    peer.feed(b"EHLO client.example\r\n")
    return peer.feed(data), peer
