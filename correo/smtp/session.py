"""One SMTP connection on the runner: the sans-I/O core below, policy and delivery above.

Listeners (``conn.service.name``): ``smtp`` (MX, port 25: STARTTLS, no AUTH, no relay
without ``trusted_networks``), ``submission`` (587: STARTTLS, AUTH required before MAIL,
AUTH offered only under TLS, even on loopback: RFC 8314 §3.3 / the issue's "AUTH not
offered before TLS"; POP3 and IMAP keep the loopback exemption)
and ``submissions`` (465: implicit TLS, RFC 8314 §3.3).

Replies to pipelined commands (RFC 2920) are collected and written when the core needs
more input or marks a reply as not to be buffered (``flush_now``), so one group of
commands gets one write. Timeouts: the server waits
``[limits] smtp_timeout`` (at least 5 minutes, RFC 5321 §4.5.3.2.7) for each command and
each piece of message text; on timeout it says 421 4.4.2 and closes.

Logging: one INFO line per transaction outcome and AUTH result; a DEBUG trace of
commands with AUTH data redacted and no message text.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from correo.auth.sasl import Challenge, Credentials, SaslError, SaslErrorKind, SaslExchange
from correo.auth.service import AuthReason
from correo.net.connection import IdleTimeout
from correo.smtp import commands as c
from correo.smtp import delivery, replies
from correo.smtp.policy import SUBMISSION_SERVICES, Client, Counters, Policy, Recipient
from correo.smtp.protocol import NEED_DATA, Limits, NeedData, ServerProtocol, State
from correo.smtp.replies import Reply
from correo.store.base import Account, TemporaryStoreError

if TYPE_CHECKING:
    from correo.context import Context
    from correo.net.connection import Connection

BUSY = replies.R421_BUSY.render()
SHUTDOWN = replies.R421_SHUTDOWN.render()

_FLUSH_AT = 64 * 1024
_DATA, _CLOSED = State.DATA, State.CLOSED
"""As module constants: ``State.X`` costs a trip through the enum metaclass each time."""

_REPLY_CACHE: dict[tuple[object, ...], Reply] = {}
"""Greeting, HELO and EHLO replies by everything they are made of (so never stale): the
same few objects are sent to every client, and a Reply keeps its rendered bytes."""
_REPLY_CACHE_MAX = 64

_SASL_REPLIES = {
    SaslErrorKind.CANCELLED: replies.R501_AUTH_CANCELLED,
    SaslErrorKind.MALFORMED: replies.R501_BASE64,
    SaslErrorKind.TOO_LONG: replies.R500_AUTH_LINE_TOO_LONG,
    SaslErrorKind.UNKNOWN_MECHANISM: replies.R504_MECHANISM,
    SaslErrorKind.INVALID: replies.R535_AUTH_FAILED,
    SaslErrorKind.AUTHZ_DENIED: replies.R535_AUTH_FAILED,
}


async def handle(conn: Connection, ctx: Context) -> None:
    """The runner's entry point for the smtp, submission and submissions services."""
    await SmtpSession(conn, ctx).run()


def counters(ctx: Context) -> Counters:
    """The server-wide hourly submission counters (kept in ``ctx.extras``)."""
    found = ctx.extras.get(__name__)
    if not isinstance(found, Counters):
        found = Counters()
        ctx.extras[__name__] = found
    return found


def _remember(key: tuple[object, ...], reply: Reply) -> Reply:
    """Keep ``reply`` in :data:`_REPLY_CACHE` (bounded: settings change rarely, if ever)."""
    if len(_REPLY_CACHE) >= _REPLY_CACHE_MAX:
        _REPLY_CACHE.clear()
    _REPLY_CACHE[key] = reply
    return reply


class SmtpSession:
    def __init__(self, conn: Connection, ctx: Context) -> None:
        self.conn = conn
        self.ctx = ctx
        self.settings = ctx.settings
        lim = ctx.settings.limits
        self.proto = ServerProtocol(
            Limits(lim.max_message_size, lim.max_recipients, lim.max_errors), tls=conn.tls
        )
        self.policy = Policy(ctx.settings, ctx.store, counters(ctx))
        self.submission = conn.service.name in SUBMISSION_SERVICES
        self.account: Account | None = None
        self.helo = ""
        self.mail: c.Mail | None = None
        self.recipients: list[Recipient] = []
        self.sasl: SaslExchange | None = None
        self._out: list[bytes] = []
        """Replies not yet written (a pipelined group's, RFC 2920 §3.2)."""
        self._out_size = 0
        self._client: Client | None = None

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        conn = self.conn
        conn.set_timeout(self.settings.limits.smtp_timeout)
        s = self.settings
        key = ("greeting", s.hostname, s.smtp.banner)
        greeting = _REPLY_CACHE.get(key)
        if greeting is None:
            greeting = _remember(key, replies.reply(220, "", f"{s.hostname} {s.smtp.banner}"))
        self._send(greeting)
        try:
            await self._loop()
        except IdleTimeout:
            self._out.append(replies.R421_TIMEOUT.render())
            await self._flush()
            raise

    async def _loop(self) -> None:
        conn, proto = self.conn, self.proto
        logger = conn.log.logger  # the adapter's own level test, without the indirection
        while True:
            event = proto.next_event()
            if event is NEED_DATA:
                if self._out:
                    await self._flush()
                proto.receive_data(await conn.read())
                continue
            assert not isinstance(event, NeedData)
            if isinstance(event, c.Closed):
                if proto.state is _DATA or self.mail is not None:
                    conn.log.info("client left in a transaction; nothing stored")
                return
            if logger.isEnabledFor(logging.DEBUG):
                self._trace(event)
            try:
                reply = await self._dispatch(event)
            except Exception:  # DESIGN.md principle 7: log it, answer 4xx, carry on
                conn.log.exception("error handling %s", type(event).__name__)
                self._reset()
                self.sasl = None
                reply = replies.R451_LOCAL_ERROR
            self._send(reply)
            if proto.state is _CLOSED:
                await self._flush()
                return
            if isinstance(event, c.StartTls) and reply.code == 220:
                await self._flush()
                await conn.start_tls()
                self._forget()
            elif proto.flush_now or self._out_size >= _FLUSH_AT:
                await self._flush()

    def _send(self, reply: Reply) -> None:
        wire = self.proto.send(reply)
        self._out.append(wire)
        self._out_size += len(wire)
        if wire.startswith(b"421"):  # ours, or the core's "too many errors"
            self.conn.log.info("closing: %s", wire.decode("utf-8", "replace").rstrip())

    async def _flush(self) -> None:
        out = self._out
        if out:
            # usually one reply: written as the (cached) bytes it is, no copy
            self.conn.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            self._out_size = 0
            await self.conn.drain()

    def _trace(self, event: c.Event) -> None:
        """The DEBUG trace of one command (AUTH data and message text left out)."""
        log = self.conn.log
        if isinstance(event, c.Auth):
            log.debug("< AUTH %s%s", event.mechanism, " <redacted>" if event.initial else "")
        elif isinstance(event, c.AuthResponse):
            log.debug("< <redacted SASL response>")
        elif isinstance(event, c.Message):
            log.debug("< message text, %d octets", len(event.data))
        else:
            log.debug("< %r", event)

    @property
    def client(self) -> Client:
        """The policy's view of the client; made again when the account changes."""
        found = self._client
        if found is None or found.account is not self.account:
            found = self._client = Client(self.conn.peer_ip, self.conn.service.name, self.account)
        return found

    def _reset(self) -> None:
        self.mail = None
        self.recipients = []

    def _forget(self) -> None:
        """RFC 3207 §4.2: after TLS starts, discard what the client told us before."""
        self._reset()
        self.helo = ""
        self.account = None
        self.sasl = None

    # ------------------------------------------------------------------ commands
    async def _dispatch(self, event: c.Event) -> Reply:
        match event:  # the event classes are disjoint: the most frequent come first
            case c.Mail():
                return await self._mail(event)
            case c.Rcpt():
                return await self._rcpt(event)
            case c.Data():
                return replies.R354_DATA
            case c.Message():
                return await self._message(event)
            case c.Hello():
                return self._hello(event)
            case c.Quit():
                return replies.R221_BYE
            case c.Invalid(reply=reply):
                if reply.code >= 500:
                    self.conn.log.info(
                        "refused %r: %s %s", event.verb or "line", reply.code, reply.lines[0]
                    )
                return reply
            case c.Bdat(size=size):
                return replies.r250_chunk(size)
            case c.Rset():
                self._reset()
                return replies.R250_RESET
            case c.Noop():
                return replies.R250_OK
            case c.Vrfy(argument=arg):
                return await self._vrfy(arg)
            case c.Expn():
                return replies.R502_NOT_IMPLEMENTED
            case c.Help():
                return replies.R214_HELP
            case c.StartTls():
                if not self.conn.tls_available:
                    return replies.R454_TLS_UNAVAILABLE
                return replies.R220_TLS_GO
            case c.Auth():
                return await self._auth(event)
            case c.AuthResponse(line=line):
                return await self._auth_step(line)
        raise AssertionError(f"unhandled event {event!r}")

    def _auth_offered(self) -> bool:
        return self.submission and self.account is None and self.conn.tls

    def _hello(self, event: c.Hello) -> Reply:
        """RFC 5321 §4.1.1.1 HELO/EHLO; EHLO lists the service extensions offered (§2.2.2).

        The replies are shared: one object per distinct set of lines, bytes rendered once."""
        self.helo = event.domain
        self._reset()
        host = self.settings.hostname
        if not event.extended:
            key: tuple[object, ...] = ("HELO", host)
            found = _REPLY_CACHE.get(key)
            return found if found is not None else _remember(key, replies.Reply(250, "", (host,)))
        size = self.settings.limits.max_message_size
        starttls = not self.conn.tls and self.conn.tls_available
        auth = self._auth_offered()
        key = ("EHLO", host, size, starttls, auth)
        found = _REPLY_CACHE.get(key)
        if found is not None:
            return found
        lines = [
            host,
            "PIPELINING",
            f"SIZE {size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",
        ]
        if starttls:
            lines.append("STARTTLS")
        if auth:
            lines.append("AUTH PLAIN LOGIN")
        return _remember(key, replies.Reply(250, "", tuple(lines)))

    async def _mail(self, event: c.Mail) -> Reply:
        try:
            refusal = await self.policy.check_sender(self.client, event)
        except TemporaryStoreError:
            return replies.R451_LOCAL_ERROR
        if refusal is not None:
            return refusal
        self.mail = event
        self.recipients = []
        return replies.R250_SENDER_OK

    async def _rcpt(self, event: c.Rcpt) -> Reply:
        assert self.mail is not None
        try:
            result = await self.policy.check_recipient(self.client, event, self.mail.size)
        except TemporaryStoreError:
            return replies.R451_LOCAL_ERROR
        if isinstance(result, Reply):
            self.conn.log.info(
                "rcpt <%s> refused: %d %s", event.recipient, result.code, result.enhanced
            )
            return result
        self.recipients.append(result)
        return replies.R250_RECIPIENT_OK

    async def _message(self, event: c.Message) -> Reply:
        mail, recipients = self.mail, self.recipients
        self._reset()
        assert mail is not None and recipients
        trace = delivery.Trace(
            helo=self.helo,
            ip=self.conn.peer_ip,
            hostname=self.settings.hostname,
            session_id=self.conn.session_id,
            extended=self.proto.extended,
            tls=self.conn.tls_info,
            authenticated=self.account is not None,
            submission=self.submission and self.account is not None,
        )
        return await delivery.deliver(self.ctx, trace, mail, recipients, event.data)

    async def _vrfy(self, argument: str) -> Reply:
        """RFC 5321 §3.5.3: 252 unless ``[smtp] vrfy`` is on (it helps harvesters)."""
        if not self.settings.smtp.vrfy:
            return replies.R252_VRFY_DISABLED
        address = argument.strip("<>")
        if "@" in address and await self.policy.verify(address):
            return replies.reply(250, "2.1.5", f"<{address.lower()}>")
        return replies.R550_NO_SUCH_USER

    # ------------------------------------------------------------------ AUTH
    async def _auth(self, event: c.Auth) -> Reply:
        """RFC 4954 §4 on submission/submissions only, never before TLS."""
        if not self.submission:
            return replies.R502_AUTH_NOT_OFFERED
        if not self.conn.tls:
            return replies.R538_ENCRYPTION_REQUIRED
        self.sasl = SaslExchange()
        initial = event.initial.encode() if event.initial is not None else None
        return await self._outcome(self.sasl.start(event.mechanism, initial))

    async def _auth_step(self, line: str) -> Reply:
        assert self.sasl is not None
        return await self._outcome(self.sasl.step(line.encode()))

    async def _outcome(self, outcome: Challenge | Credentials | SaslError) -> Reply:
        if isinstance(outcome, Challenge):
            return replies.r334(outcome.data.decode("ascii"))
        self.sasl = None
        if isinstance(outcome, SaslError):
            self.conn.log.info("auth failed: %s", outcome.message)
            return _SASL_REPLIES[outcome.kind]
        try:
            result = await self.ctx.auth.authenticate(
                self.ctx.store, outcome.username, outcome.password, self.conn.peer_ip,
                session=self.conn.session_id,
            )  # fmt: skip
        except TemporaryStoreError:
            return replies.R454_AUTH_TEMPORARY
        if result.ok and result.account is not None:
            self.account = result.account
            return replies.R235_AUTH_OK
        if result.reason is AuthReason.RATE_LIMITED:
            return replies.R454_AUTH_LOCKED
        return replies.R535_AUTH_FAILED
