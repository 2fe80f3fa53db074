"""The POP3 session: runs the sans-I/O core (``protocol.py``) against the store.

RFC 1939 (POP3), RFC 2449 (CAPA, response codes), RFC 2595 §4 (STLS), RFC 3206 (SYS and
AUTH response codes), RFC 5034 (AUTH), RFC 6856 (UTF8), RFC 8314 (port 995).

Life of a session: greeting; AUTHORIZATION (USER/PASS or AUTH, refused before TLS unless
``plaintext_allowed``); login takes the account's maildrop lock (``-ERR [IN-USE]`` when
another session holds it, RFC 2449 §8.1.2) and snapshots the INBOX (``maildrop.py``);
TRANSACTION; QUIT enters UPDATE, which expunges the marked messages durably *before* the
``+OK`` (DESIGN.md principle 4). A connection that ends any other way (EOF, timeout,
shutdown) removes nothing (RFC 1939 §6). The lock is released on every path.

Replies are written as commands are executed and flushed when the client's input runs
dry, so pipelined commands (RFC 2449 §6.6) share packets. RETR and TOP of a message up
to :data:`WHOLE_REPLY` octets (nearly all mail) cost one body read (no thread hop when
cached), one byte-stuffing pass in C and one write of status line + message +
terminator; bodies are opened :data:`PREFETCH` at a time with one store look-up while
the client walks its maildrop. Larger messages are streamed in :data:`STREAM_CHUNK`
pieces with byte-stuffing on the fly (``stuffing.py``), waiting for the client whenever
``[limits] output_buffer`` bytes are queued, so memory per session stays bounded. A body
that cannot be read is answered ``-ERR`` (removed by another session, or ``[SYS/TEMP]``)
if that happens before the first octet of the reply, and the session goes on; once a
multi-line reply has started, no ``-ERR`` can follow it, so the connection is closed
(the client sees a truncated reply, never a forged end) and nothing is deleted.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

from correo.auth import sasl
from correo.auth.service import AuthReason, plaintext_allowed
from correo.net.connection import ConnectionClosed, IdleTimeout, ServerShutdown
from correo.pop3 import protocol as p
from correo.pop3.capa import capabilities
from correo.pop3.maildrop import Entry, Maildrop, MaildropError
from correo.pop3.stuffing import DotStuffer, TopFilter, stuff_reply
from correo.store.base import Account, Body, NotFound, StoredMessage, StoreError

if TYPE_CHECKING:
    from correo.context import Context
    from correo.net.connection import Connection

BUSY = b"-ERR [SYS/TEMP] too many connections, try again later\r\n"
"""Sent instead of a greeting when a connection limit refuses the client (RFC 3206 §4)."""
SHUTDOWN = b"-ERR [SYS/TEMP] server shutting down, nothing was deleted\r\n"
"""Sent to a session when the server stops; the maildrop is left untouched (RFC 1939 §6)."""

DELETED = "\\Deleted"
PREFETCH = 16
"""Messages opened per store look-up while a client walks through its maildrop (RETR 1,
RETR 2, ...): one query instead of one or two per message. Inline bodies come with it, so
this times ``[storage] inline_threshold`` octets may be held per session."""
WHOLE_REPLY = 256 * 1024
"""Messages up to this size are read, stuffed and written in one piece; larger ones are
streamed in :data:`STREAM_CHUNK` pieces (memory per session stays bounded)."""
STREAM_CHUNK = 256 * 1024
LOCK_MARGIN = 120.0
"""Seconds the maildrop lock outlives the inactivity timeout, so that a crashed node's
lock expires on its own while a live session keeps refreshing its own."""


@dataclass(slots=True)
class Pop3Shared:
    """Server-wide POP3 state in ``ctx.extras``: the last login per account, for
    LOGIN-DELAY (RFC 2449 §6.5). In memory, so per node."""

    last_login: dict[int, float] = field(default_factory=dict)

    def too_soon(self, account_id: int, delay: float, now: float) -> bool:
        last = self.last_login.get(account_id)
        return last is not None and now - last < delay

    def record(self, account_id: int, delay: float, now: float) -> None:
        if len(self.last_login) > 10_000:  # bounded: forget logins older than the delay
            self.last_login = {k: t for k, t in self.last_login.items() if now - t < delay}
        self.last_login[account_id] = now


OpenBodies = Callable[[int, Sequence[int]], Awaitable[dict[int, Body]]]
"""An optional store method, ``open_bodies(mailbox_id, uids)`` (``SqliteStore`` has it):
the bodies of a few messages of a mailbox in one look-up, by uid, expunged ones left
out. A store without it is read with ``get_messages`` + ``open_body``."""


class _Abort(Exception):
    """The response cannot be completed (a failure in the middle of a multi-line reply):
    the only honest thing left is to close the connection."""


async def handle(conn: Connection, ctx: Context) -> None:
    """Serve one POP3 or POP3S connection (the runner's session entry point)."""
    session = Pop3Session(conn, ctx)
    try:
        await session.run()
    except _Abort as exc:
        conn.log.error("closing: %s", exc)
    finally:
        if session.maildrop is not None and not session.updated:
            kept = len(session.maildrop.uids_to_expunge())
            conn.log.info("session ended without QUIT: %d marked message(s) kept", kept)
        await session.release()


class Pop3Session:
    def __init__(self, conn: Connection, ctx: Context) -> None:
        self.conn = conn
        self.ctx = ctx
        self.settings = ctx.settings
        self.store = ctx.store
        self.proto = p.Pop3Protocol()
        self.account: Account | None = None
        self.maildrop: Maildrop | None = None
        self.sasl: sasl.SaslExchange | None = None
        self.errors = 0
        self.owner = f"{conn.session_id}.{secrets.token_hex(6)}"
        self.locked_at = 0.0
        batches = getattr(ctx.store, "open_bodies", None)
        self.open_bodies: OpenBodies | None = batches if callable(batches) else None
        self.bodies: dict[int, Body] = {}
        self.records: dict[int, StoredMessage] = {}
        """Opened ahead (or records fetched ahead) of the client's next RETRs, by uid."""
        self.updated = False
        """QUIT reached the UPDATE state (whether or not the expunge worked)."""
        self.streaming = False
        """A multi-line reply is half written: no -ERR can follow, only a close."""
        shared = ctx.extras.get(__name__)
        if not isinstance(shared, Pop3Shared):
            shared = ctx.extras[__name__] = Pop3Shared()
        self.shared = shared
        self.handlers: dict[type[Any], Callable[[Any], Awaitable[None]]] = {
            p.Capa: self.capa,
            p.Stls: self.stls,
            p.Utf8: self.utf8,
            p.User: self.user,
            p.Pass: self.pass_,
            p.Auth: self.auth,
            p.SaslResponse: self.sasl_response,
            p.Stat: self.stat,
            p.List: self.scan_list,
            p.Uidl: self.uidl,
            p.Retr: self.retr,
            p.Top: self.top,
            p.Dele: self.dele,
            p.Noop: self.noop,
            p.Rset: self.rset,
            p.Quit: self.quit,
            p.Rejected: self.rejected,
        }

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        conn, proto = self.conn, self.proto
        conn.set_timeout(self.settings.limits.login_timeout)
        conn.write(p.ok(f"{self.settings.hostname} POP3 correo ready"))
        while proto.state is not p.State.CLOSED:
            event = proto.next_event()
            if event is p.NEED_DATA:
                if conn.buffered:  # the replies so far did not all go out at once
                    await conn.drain()
                proto.receive_data(await conn.read())
                continue
            if isinstance(event, p.ConnectionClosed):
                break
            self.trace(event)
            try:
                await self.handlers[type(event)](event)
            except StoreError as exc:  # before any reply to the command was written
                conn.log.warning("store error: %s", exc)
                self.reply(p.err("temporary failure, try again later", "SYS/TEMP"))
            except (_Abort, ConnectionClosed, IdleTimeout, ServerShutdown):
                raise
            except Exception:  # our bug: say so, log it, and end this session only
                conn.log.exception("internal error on %s", type(event).__name__)
                if not self.streaming:
                    self.reply(p.err("internal server error", "SYS/TEMP"))
                return

    def reply(self, data: bytes) -> None:
        self.conn.write(data)

    def trace(self, event: object) -> None:
        """Protocol trace at DEBUG with credentials redacted (STYLE.md)."""
        log = self.conn.log
        if not log.isEnabledFor(logging.DEBUG):
            return
        if isinstance(event, p.Pass):
            log.debug("C: PASS <redacted>")
        elif isinstance(event, p.SaslResponse):
            log.debug("C: <SASL response redacted>")
        elif isinstance(event, p.Auth):
            log.debug(
                "C: AUTH %s%s",
                event.mechanism,
                " <initial response redacted>" if event.initial_response else "",
            )
        else:
            log.debug("C: %r", event)

    @property
    def passwords_allowed(self) -> bool:
        return plaintext_allowed(self.conn.tls, self.conn.listener_is_loopback, self.settings)

    # ------------------------------------------------------------------ AUTHORIZATION

    async def rejected(self, event: p.Rejected) -> None:
        """Bad input (RFC 1939 §3: -ERR, the session goes on) until ``max_errors``."""
        if self.proto.state is not p.State.SASL:
            self.sasl = None  # an over-long SASL line ended the exchange in the core
        self.errors += 1
        if self.errors >= self.settings.limits.max_errors:
            self.conn.log.info("closing: too many errors")
            self.reply(p.err("too many errors, closing connection", "SYS/PERM"))
            self.proto.advance(p.Transition.EOF)
            return
        self.reply(p.err(event.text, event.code))

    async def capa(self, _event: p.Capa) -> None:
        """RFC 2449 §5."""
        conn = self.conn
        caps = capabilities(
            self.proto.state,
            passwords_allowed=self.passwords_allowed,
            stls=not conn.tls and conn.tls_available,
            mechanisms=sasl.MECHANISMS,
            expire=self.settings.pop3.expire,
            login_delay=math.ceil(self.settings.pop3.login_delay),
        )
        self.reply(p.multiline("Capability list follows", caps))

    async def stls(self, _event: p.Stls) -> None:
        """RFC 2595 §4; input pipelined after STLS is discarded (CVE-2011-0411)."""
        if self.conn.tls:
            self.reply(p.err("command not permitted when TLS active"))
            return
        if not self.conn.tls_available:
            self.reply(p.err("TLS is not available", "SYS/PERM"))
            return
        self.reply(p.ok("Begin TLS negotiation"))
        self.proto.start_tls()
        await self.conn.start_tls()

    async def utf8(self, _event: p.Utf8) -> None:
        """RFC 6856 §2. Messages are sent as stored in either mode (no RFC 6857 downgrade)."""
        self.proto.enable_utf8()
        self.reply(p.ok("UTF8 enabled"))

    async def user(self, event: p.User) -> None:
        """RFC 1939 §7 USER: always +OK (the answer must not reveal whether it exists)."""
        if not self.passwords_allowed:
            self.reply(p.err("plaintext authentication disallowed without TLS, use STLS", "AUTH"))
            return
        self.proto.accept_user(event.name)
        self.reply(p.ok("send PASS"))

    async def pass_(self, event: p.Pass) -> None:
        """RFC 1939 §7 PASS."""
        await self.login(event.user, event.password)

    async def auth(self, event: p.Auth) -> None:
        """RFC 5034 §4 AUTH; ``AUTH`` alone lists the mechanisms (RFC 1734 clients)."""
        allowed = self.passwords_allowed
        if event.mechanism is None:
            self.reply(p.multiline("methods supported", sasl.MECHANISMS if allowed else ()))
            return
        if not allowed:
            self.reply(p.err("plaintext authentication disallowed without TLS, use STLS", "AUTH"))
            return
        self.sasl = sasl.SaslExchange(sasl.MECHANISMS)
        initial = event.initial_response
        outcome = self.sasl.start(event.mechanism, initial.encode() if initial else None)
        if isinstance(outcome, sasl.Challenge):
            self.proto.advance(p.Transition.SASL_BEGIN)
        await self.sasl_outcome(outcome)

    async def sasl_response(self, event: p.SaslResponse) -> None:
        if self.sasl is None:  # cannot happen: the core is in SASL only after a challenge
            raise p.LocalProtocolError("SASL response without an exchange")
        await self.sasl_outcome(self.sasl.step(event.line.encode("utf-8", "surrogateescape")))

    async def sasl_outcome(self, outcome: sasl.Outcome) -> None:
        if isinstance(outcome, sasl.Challenge):
            self.reply(b"+ " + outcome.data + p.CRLF)
            return
        self.sasl = None
        if self.proto.state is p.State.SASL:
            self.proto.advance(p.Transition.SASL_END)
        if isinstance(outcome, sasl.SaslError):
            code = (
                "AUTH"
                if outcome.kind in (sasl.SaslErrorKind.INVALID, sasl.SaslErrorKind.AUTHZ_DENIED)
                else None
            )
            self.reply(p.err(outcome.message, code))
            return
        await self.login(outcome.username, outcome.password)

    async def login(self, username: str, password: str) -> None:
        """Verify, apply LOGIN-DELAY, lock the maildrop, snapshot the INBOX (RFC 1939 §4)."""
        conn, settings = self.conn, self.settings
        try:
            result = await self.ctx.auth.authenticate(
                self.store, username, password, conn.peer_ip, session=conn.session_id
            )
        except StoreError as exc:
            conn.log.warning("auth lookup failed: %s", exc)
            self.reply(p.err("authentication temporarily unavailable", "SYS/TEMP"))
            return
        if result.reason is AuthReason.RATE_LIMITED:
            wait = round(result.retry_after or 0)
            self.reply(p.err(f"too many failed logins, try again in {wait}s", "SYS/TEMP"))
            return
        if not result.ok or result.account is None:
            self.reply(p.err("authentication failed", "AUTH"))
            return
        account = result.account
        delay = settings.pop3.login_delay
        now = time.monotonic()
        if delay and self.shared.too_soon(account.id, delay, now):
            conn.log.info("login refused: login delay %r", account.address)
            self.reply(p.err(f"wait {math.ceil(delay)}s between logins", "LOGIN-DELAY"))
            return
        if not await self.store.lock_maildrop(account.id, self.owner, self.lock_ttl):
            conn.log.info("login refused: maildrop in use %r", account.address)
            self.reply(p.err("maildrop already locked by another session", "IN-USE"))
            return
        self.account, self.locked_at = account, now
        try:
            inbox = await self.store.get_mailbox(account.id, "INBOX")
            if inbox is None:
                raise StoreError(f"no INBOX for {account.address}")
            infos = await self.store.message_infos(inbox.id)
        except StoreError:
            await self.release()
            raise
        self.maildrop = Maildrop(inbox.id, inbox.uidvalidity, infos)
        self.proto.advance(p.Transition.LOGGED_IN)
        conn.set_timeout(settings.limits.pop3_timeout)
        if delay:
            self.shared.record(account.id, delay, now)
        count, size = self.maildrop.stat()
        conn.log.info("login %r: %d messages (%d octets)", account.address, count, size)
        self.reply(p.ok(f"maildrop has {count} messages ({size} octets)"))

    @property
    def lock_ttl(self) -> float:
        return self.settings.limits.pop3_timeout + LOCK_MARGIN

    async def refresh_lock(self) -> None:
        """Extend the maildrop lock of a long, busy session before it could expire."""
        now = time.monotonic()
        if self.account is None or now - self.locked_at < self.lock_ttl / 3:
            return
        if await self.store.lock_maildrop(self.account.id, self.owner, self.lock_ttl):
            self.locked_at = now
        else:  # expired and taken over: this session must not delete anything any more
            raise _Abort("maildrop lock lost")

    async def release(self) -> None:
        """Give the maildrop lock back (every exit path; idempotent)."""
        account, self.account = self.account, None
        if account is None:
            return
        try:
            await self.store.unlock_maildrop(account.id, self.owner)
        except Exception:  # the lock expires by itself after lock_ttl
            self.conn.log.exception("maildrop unlock failed")

    # ------------------------------------------------------------------ TRANSACTION

    def drop(self) -> Maildrop:
        if self.maildrop is None:  # the core allows these commands only after login
            raise p.LocalProtocolError("no maildrop outside TRANSACTION")
        return self.maildrop

    async def stat(self, _event: p.Stat) -> None:
        """RFC 1939 §5 STAT."""
        count, size = self.drop().stat()
        self.reply(p.ok(f"{count} {size}"))

    async def scan_list(self, event: p.List) -> None:
        """RFC 1939 §5 LIST [msg]: scan listings of the messages not marked deleted."""
        drop = self.drop()
        if event.msg is not None:
            try:
                entry = drop.get(event.msg)
            except MaildropError as exc:
                self.reply(p.err(str(exc)))
                return
            self.reply(p.ok(f"{entry.number} {entry.size}"))
            return
        count, size = drop.stat()
        lines = [f"{e.number} {e.size}" for e in drop.live()]
        self.reply(p.multiline(f"{count} messages ({size} octets)", lines))

    async def uidl(self, event: p.Uidl) -> None:
        """RFC 1939 §7 UIDL [msg]: ``uidvalidity.uid``, stable across sessions."""
        drop = self.drop()
        if event.msg is not None:
            try:
                entry = drop.get(event.msg)
            except MaildropError as exc:
                self.reply(p.err(str(exc)))
                return
            self.reply(p.ok(f"{entry.number} {drop.unique_id(entry)}"))
            return
        lines = [f"{e.number} {drop.unique_id(e)}" for e in drop.live()]
        self.reply(p.multiline("unique-id listing follows", lines))

    async def retr(self, event: p.Retr) -> None:
        """RFC 1939 §5 RETR msg: the whole message, byte-stuffed, streamed."""
        if await self.send_message(event.msg, None):
            self.drop().retrieved(event.msg)

    async def top(self, event: p.Top) -> None:
        """RFC 1939 §7 TOP msg n: the header, the blank line and n body lines."""
        await self.send_message(event.msg, event.lines)

    async def send_message(self, number: int, top_lines: int | None) -> bool:
        drop = self.drop()
        try:
            entry = drop.get(number)
        except MaildropError as exc:
            self.reply(p.err(str(exc)))
            return False
        await self.refresh_lock()
        body = await self.open_message(drop, entry)
        if body is None:  # expunged over IMAP since login
            self.reply(p.err(f"message {number} was removed by another session"))
            return False
        head = p.ok(f"{entry.size} octets" if top_lines is None else "top of message follows")
        if body.size <= WHOLE_REPLY:
            return await self.send_whole(entry, body, head, top_lines)
        return await self.send_streamed(entry, body, head, top_lines)

    async def send_whole(
        self, entry: Entry, body: Body, head: bytes, top_lines: int | None
    ) -> bool:
        """A message up to :data:`WHOLE_REPLY` octets: one read, one stuffing pass in C,
        one write (status line, message and terminator in one TCP segment run / TLS
        record run). A read failure happens before any octet of the reply is out."""
        try:
            data = await body.read()
        except (StoreError, OSError) as exc:
            await self.read_failed(entry, exc)
            return False
        if top_lines is not None:
            data = TopFilter(top_lines).feed(data)
        conn = self.conn
        conn.write(stuff_reply(head, data))
        if conn.buffered > self.settings.limits.output_buffer:  # pipelined RETRs
            await conn.drain()
        return True

    async def send_streamed(
        self, entry: Entry, body: Body, head: bytes, top_lines: int | None
    ) -> bool:
        """A large message in chunks (never whole in memory), stuffed on the fly, waiting
        for the client whenever ``[limits] output_buffer`` octets are queued."""
        conn, limit = self.conn, self.settings.limits.output_buffer
        top = TopFilter(top_lines) if top_lines is not None else None
        stuffer = DotStuffer()
        # The status line goes out with the first chunk and the terminator with the last
        # one: one write (one TLS record run, one syscall) instead of three per message.
        tail = b""
        read = 0
        self.streaming = True
        try:
            async for chunk in body.chunks(chunk=STREAM_CHUNK):
                read += len(chunk)
                part = stuffer.feed(chunk if top is None else top.feed(chunk))
                done = read >= body.size or (top is not None and top.done)
                if head or done:
                    tail = stuffer.finish() if done else b""
                    part = b"".join((head, part, tail))
                    head = b""
                conn.write(part)
                if done:
                    break
                if conn.buffered > limit:
                    await conn.drain()
        except (StoreError, OSError) as exc:
            if not head:  # part of the reply is out: only closing is honest now
                raise _Abort(f"reading message uid {entry.uid} failed: {exc}") from exc
            self.streaming = False
            await self.read_failed(entry, exc)
            return False
        if not tail:  # an empty body, or a store that yielded less than body.size
            conn.write(head + stuffer.finish())
        self.streaming = False
        return True

    async def open_message(self, drop: Maildrop, entry: Entry) -> Body | None:
        """The body of ``entry``, opened together with the next few (RETR 1, RETR 2, ...
        costs one store look-up per :data:`PREFETCH` messages); None once expunged."""
        uid = entry.uid
        if self.open_bodies is not None:
            body = self.bodies.pop(uid, None)
            if body is None:
                uids = [e.uid for e in islice(drop.live_from(entry.number), PREFETCH)]
                self.bodies = await self.open_bodies(drop.mailbox_id, uids)
                body = self.bodies.pop(uid, None)
            return body
        stored = self.records.pop(uid, None)
        if stored is None:
            uids = [e.uid for e in islice(drop.live_from(entry.number), PREFETCH)]
            found = await self.store.get_messages(drop.mailbox_id, uids)
            self.records = {m.uid: m for m in found}
            stored = self.records.pop(uid, None)
        if stored is None:
            return None
        try:
            return await self.store.open_body(stored)
        except NotFound:
            return None

    async def read_failed(self, entry: Entry, exc: Exception) -> None:
        """Answer a body that could not be read before any octet of the reply went out:
        expunged since it was opened (its file removed with its last reference), or a
        temporary failure."""
        try:
            gone = not await self.store.get_messages(self.drop().mailbox_id, [entry.uid])
        except StoreError:
            gone = False
        if gone:
            self.reply(p.err(f"message {entry.number} was removed by another session"))
            return
        self.conn.log.error("reading message uid %d failed: %s", entry.uid, exc)
        self.reply(p.err("cannot read the message now, try again later", "SYS/TEMP"))

    async def dele(self, event: p.Dele) -> None:
        """RFC 1939 §5 DELE msg: marks only; the store changes at QUIT."""
        try:
            self.drop().delete(event.msg)
        except MaildropError as exc:
            self.reply(p.err(str(exc)))
            return
        self.reply(p.ok(f"message {event.msg} deleted"))

    async def noop(self, _event: p.Noop) -> None:
        """RFC 1939 §5 NOOP."""
        await self.refresh_lock()
        self.reply(p.ok())

    async def rset(self, _event: p.Rset) -> None:
        """RFC 1939 §5 RSET."""
        drop = self.drop()
        drop.reset()
        count, size = drop.stat()
        self.reply(p.ok(f"maildrop has {count} messages ({size} octets)"))

    # ------------------------------------------------------------------ UPDATE

    async def quit(self, _event: p.Quit) -> None:
        """RFC 1939 §4/§6 QUIT. From TRANSACTION: the UPDATE state removes the marked
        messages (with EXPIRE 0 also the retrieved ones, RFC 2449 §6.7) in the store, and
        only then +OK; the lock is released before the reply so the client may log in
        again at once."""
        bye = f"{self.settings.hostname} POP3 correo signing off"
        if self.proto.state is p.State.AUTHORIZATION:
            self.proto.advance(p.Transition.QUIT)
            self.reply(p.ok(bye))
            return
        self.proto.advance(p.Transition.QUIT)
        self.updated = True
        drop = self.drop()
        uids = drop.uids_to_expunge(expire_retrieved=self.settings.pop3.expire == "0")
        try:
            await self.refresh_lock()
            removed = await self.expunge(drop.mailbox_id, uids)
        except StoreError as exc:
            self.conn.log.error("update failed: %s", exc)
            await self.release()
            self.reply(p.err("some deleted messages not removed", "SYS/TEMP"))
        else:
            await self.release()
            left = len(drop) - len(uids)
            if uids:
                self.conn.log.info("update: %d of %d marked messages removed", removed, len(uids))
            self.reply(p.ok(f"{bye} ({left} messages left)"))
        self.proto.advance(p.Transition.UPDATE_DONE)

    async def expunge(self, mailbox_id: int, uids: list[int]) -> int:
        """Remove exactly ``uids`` in one durable transaction (an IMAP user's own
        \\Deleted messages stay; a crash leaves either all or none removed)."""
        if not uids:
            return 0
        return len(await self.store.delete_messages(mailbox_id, uids))
