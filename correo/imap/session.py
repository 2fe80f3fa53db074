"""The IMAP session: executes parsed commands against the store (RFC 3501 §3, §6).

Bytes come from the runner's :class:`Connection`, commands from the sans-I/O
:class:`CommandReader`; responses go out through ``encoder.py``. Mailbox commands live
in ``mailboxes.py``, message commands in ``messages.py``; this module holds the loop,
the state machine (``commands.ALLOWED``), authentication, STARTTLS, SELECT, IDLE and the
untagged updates of the selected mailbox (``view.py``).

Errors at the boundary (DESIGN.md principle 7): syntax → ``BAD``; a store refusal →
``NO`` with its RFC 5530 code; anything unexpected → ``NO [SERVERBUG]``, logged with the
session id. The session never raises for a client's mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from correo import __version__
from correo.auth.service import plaintext_allowed
from correo.imap import commands as c
from correo.imap import encoder, login, mailboxes, messages, snapshot
from correo.imap.fetch import flag_atoms
from correo.imap.parser import (
    NEED_DATA,
    BadCommand,
    CommandReader,
    CommandReceived,
    ContinuationRequest,
    Event,
    LineReceived,
    LiteralTooBig,
    NeedData,
)
from correo.imap.spec import BodyLiteral
from correo.imap.view import Exists, Expunged, FlagsChanged, Keywords, MailboxView, Recent, Update
from correo.net.connection import ConnectionClosed, IdleTimeout, ServerShutdown
from correo.store.base import (
    Account,
    AlreadyExists,
    ChangeKind,
    DiskFullError,
    InvalidName,
    NotFound,
    OverQuota,
    Subscription,
    TemporaryStoreError,
    TooManyFlags,
)

if TYPE_CHECKING:
    from correo.context import Context
    from correo.net.connection import Connection

__all__ = ["BUSY", "SHUTDOWN", "Session", "handle"]

BUSY = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
SHUTDOWN = b"* BYE [UNAVAILABLE] Server shutting down\r\n"

log = logging.getLogger(__name__)

BASE_CAPABILITIES = (
    "IMAP4rev1",
    "LITERAL+",
    "ID",
    "ENABLE",
    "IDLE",
    "NAMESPACE",
    "UIDPLUS",
    "MOVE",
    "SPECIAL-USE",
    "CREATE-SPECIAL-USE",
    "UNSELECT",
    "CHILDREN",
    "UTF8=ACCEPT",
)
"""What is implemented, in every state (RFC 3501 §7.2.1)."""


async def handle(conn: Connection, ctx: Context) -> None:
    """The runner's entry point for the ``imap`` and ``imaps`` services."""
    await Session(conn, ctx).run()


Handler = Callable[["Session", Any], Awaitable[str | None]]


class Session:
    """One IMAP connection, from greeting to BYE."""

    def __init__(self, conn: Connection, ctx: Context) -> None:
        self.conn = conn
        self.ctx = ctx
        self.store = ctx.store
        self.limits = ctx.settings.limits
        self.reader = CommandReader(
            max_line_length=self.limits.max_line_length,
            max_literal_size=self.limits.max_literal_size,
            max_message_size=self.limits.max_message_size,
            max_errors=self.limits.max_errors,
        )
        self.state = c.State.NOT_AUTHENTICATED
        self.account: Account | None = None
        self.view: MailboxView | None = None
        self.utf8 = False
        """ENABLE UTF8=ACCEPT was given (RFC 6855): UTF-8 in quoted strings and mailbox
        names; otherwise ENVELOPE/BODYSTRUCTURE are downgraded (RFC 6857)."""
        self._sub: Subscription | None = None
        self._dirty = False
        self._wake = asyncio.Event()
        self._read_task: asyncio.Task[bytes] | None = None
        self._ok_code: str | None = None

    # ------------------------------------------------------------------ I/O
    def send(self, data: bytes) -> None:
        self.conn.write(data)

    async def flush(self) -> None:
        """Bounded output buffer: a slow reader stalls this session, nothing else."""
        if self.conn.buffered > self.limits.output_buffer:
            await self.conn.drain()

    async def send_pieces(self, pieces: Iterable[encoder.Piece]) -> None:
        """Write responses, coalescing bytes (one send for many small FETCH responses)
        and streaming bodies in chunks; waits when the output buffer is full."""
        buf = bytearray()
        for piece in pieces:
            if isinstance(piece, BodyLiteral):
                if buf:
                    self.send(bytes(buf))
                    buf.clear()
                await self._stream(piece)
            else:
                buf += piece
                if len(buf) >= 65536:
                    self.send(bytes(buf))
                    buf.clear()
                    await self.flush()
        if buf:
            self.send(bytes(buf))
        await self.flush()

    async def _stream(self, lit: BodyLiteral) -> None:
        """The octets of a ``{n}`` literal already announced, chunk by chunk."""
        left = lit.length
        async for chunk in lit.body.chunks(lit.offset, lit.length):
            data = chunk[:left]
            self.send(data)
            left -= len(data)
            await self.flush()
            if not left:
                break
        if left:  # a short body would desynchronise the client: end the session
            self.conn.log.error("message body ended %d octet(s) early", left)
            raise ConnectionAbortedError("short message body")

    async def _read(self) -> bytes:
        if self._read_task is not None:
            task, self._read_task = self._read_task, None
            return await task
        return await self.conn.read()

    async def next_event(self) -> Event | None:
        """The next parser event, reading as needed; None at EOF."""
        while True:
            event = self.reader.next_event()
            if not isinstance(event, NeedData):
                return event
            await self.conn.drain()
            data = await self._read()
            if not data:
                return None
            self.reader.receive_data(data)

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        self.conn.set_timeout(self.limits.login_timeout)
        self.send(
            encoder.tagged(
                "*",
                "OK",
                f"{self.ctx.settings.hostname} correo IMAP4rev1 ready",
                "CAPABILITY " + self.capabilities(),
            )
        )
        try:
            await self._loop()
        except IdleTimeout:
            # RFC 3501 §7.1.5: say why before closing
            with contextlib.suppress(ConnectionClosed):
                self.send(b"* BYE Autologout; idle for too long\r\n")
            self.conn.log.info("idle timeout (%s)", self.state.value)
        finally:
            self.close_view()
            if self._read_task is not None:
                self._read_task.cancel()

    async def _loop(self) -> None:
        while self.state is not c.State.LOGOUT:
            event = await self.next_event()
            if event is None:
                if self.reader.in_command:
                    self.conn.log.info("client left mid-command; nothing was stored")
                return
            await self.on_event(event)
            if self.reader.too_many_errors and not self.logged_out:
                self.send(b"* BYE Too many invalid commands\r\n")
                self.conn.log.info("closing: too many errors")
                return

    async def on_event(self, event: Event) -> None:
        if isinstance(event, CommandReceived):
            await self.execute(event.command)
        elif isinstance(event, ContinuationRequest):
            self.send(encoder.continuation("Ready for literal data"))
        elif isinstance(event, BadCommand):
            self.conn.log.debug("bad command: %s", event.reason)
            self.send(encoder.tagged(event.tag, event.status, event.reason, event.code))
        elif isinstance(event, LiteralTooBig):
            if event.command == "APPEND":
                text = f"Message too big (limit {event.limit} octets)"
                self.send(encoder.tagged(event.tag, "NO", text, "TOOBIG"))
            else:
                text = f"Literal too big (limit {event.limit} octets)"
                self.send(encoder.tagged(event.tag, "BAD", text, "TOOBIG"))
        elif isinstance(event, LineReceived):  # pragma: no cover - only requested lines
            self.send(encoder.tagged("*", "BAD", "Unexpected line"))

    async def execute(self, cmd: c.Command) -> None:
        word = c.command_word(cmd)
        self.conn.log.debug("C: %r", cmd)
        if not c.allowed(cmd, self.state):
            self.reader.errors += 1
            self.send(
                encoder.tagged(
                    cmd.tag, "BAD", f"{word} not allowed in the {self.state.value} state"
                )
            )
            return
        handler = DISPATCH[type(cmd)]
        status, code, text = "OK", None, f"{word} completed"
        self._ok_code = None
        try:
            done = await handler(self, cmd)
            if done is not None:
                text = done
            code = self._ok_code
        except c.CommandFailed as exc:
            status, code, text = exc.status, exc.code, exc.text
            if status == "BAD":
                self.reader.errors += 1
        except AlreadyExists as exc:
            status, code, text = "NO", "ALREADYEXISTS", str(exc) or "Already exists"
        except NotFound as exc:
            status, code, text = "NO", "NONEXISTENT", str(exc) or "No such mailbox"
        except OverQuota:
            status, code, text = "NO", "OVERQUOTA", "Quota exceeded"
        except TooManyFlags as exc:
            status, code, text = "NO", "LIMIT", str(exc)
        except InvalidName as exc:
            status, code, text = "NO", "CANNOT", str(exc) or "Invalid mailbox name"
        except DiskFullError:
            self.conn.log.error("%s: disk full", word)
            status, code, text = "NO", "LIMIT", "Server storage is full, try again later"
        except TemporaryStoreError as exc:
            self.conn.log.warning("%s: store unavailable: %s", word, exc)
            status, code, text = "NO", "UNAVAILABLE", "Temporary failure, try again"
        except login.AlreadyAnswered:
            return
        except (ConnectionError, ConnectionClosed, IdleTimeout, ServerShutdown):
            raise
        except Exception:
            self.conn.log.exception("%s failed", word)
            status, code, text = "NO", "SERVERBUG", "Internal error, try again later"
        if self.state in (c.State.SELECTED, c.State.LOGOUT) and self.view is not None:
            await self.refresh(
                allow_expunge=_allows_expunge(cmd), poll=isinstance(cmd, c.Noop | c.Check)
            )
        self.send(encoder.tagged(cmd.tag, status, text, code))

    @property
    def logged_out(self) -> bool:
        return self.state is c.State.LOGOUT

    def ok_code(self, code: str) -> None:
        """The response code of the tagged OK of the running command."""
        self._ok_code = code

    # ------------------------------------------------------------------ capabilities
    def plaintext_ok(self) -> bool:
        return plaintext_allowed(self.conn.tls, self.conn.listener_is_loopback, self.ctx.settings)

    def capabilities(self) -> str:
        """RFC 3501 §7.2.1: exactly what is implemented, in this state."""
        caps = list(BASE_CAPABILITIES)
        if self.state is c.State.NOT_AUTHENTICATED:
            if not self.conn.tls and self.conn.tls_available:
                caps.append("STARTTLS")
            if self.plaintext_ok():
                caps += ["SASL-IR", *(f"AUTH={m}" for m in login.MECHANISMS)]
            else:
                caps.append("LOGINDISABLED")
        return " ".join(caps)

    # ------------------------------------------------------------------ any state
    async def do_capability(self, cmd: c.Capability) -> None:
        self.send(encoder.untagged("CAPABILITY " + self.capabilities()))

    async def do_noop(self, cmd: c.Noop) -> None:
        return None

    async def do_logout(self, cmd: c.Logout) -> str:
        self.send(b"* BYE Logging out\r\n")
        self.state = c.State.LOGOUT
        return "LOGOUT completed"

    async def do_id(self, cmd: c.Id) -> None:
        """RFC 2971 §3.3."""
        self.send(
            encoder.untagged(b'ID ("name" "correo" "version" ' + encoder.string(__version__) + b")")
        )

    # ------------------------------------------------------------------ authenticated
    async def do_select(self, cmd: c.Select) -> str:
        """RFC 3501 §6.3.1/§6.3.2; \\Recent is claimed by SELECT only (§2.3.2)."""
        assert self.account is not None
        if self.view is not None:
            self.close_view()
            self.state = c.State.AUTHENTICATED
        mbx = await self.store.get_mailbox(self.account.id, cmd.mailbox)
        if mbx is None or not mbx.selectable:
            raise c.no(f"No such mailbox: {cmd.mailbox}", "NONEXISTENT")
        sub = self.store.watch(mbx.id, self._on_change)
        try:
            snap = await snapshot.load(self.store, mbx)
            if cmd.readonly:
                first_recent = snap.first_recent_uid
            else:
                first_recent = await self.store.claim_recent(mbx.id)
        except BaseException:
            sub.close()
            raise
        uids = snap.uids
        first = bisect_left(uids, first_recent)
        view = MailboxView(
            mbx.id,
            snap.uidvalidity,
            uids,
            snap.highestmodseq,
            recent=uids[first:],
            keywords=snap.keywords,
            readonly=cmd.readonly,
        )
        self.view, self._sub, self._dirty = view, sub, True
        self.state = c.State.SELECTED
        flags = " ".join(view.flags)
        uidnext = max(snap.uidnext, uids[-1] + 1 if uids else 1)
        permanent = "" if cmd.readonly else flags + " \\*"
        out = [
            f"* FLAGS ({flags})",
            f"* OK [PERMANENTFLAGS ({permanent})] Limited",
            f"* {len(view)} EXISTS",
            f"* {len(view.recent)} RECENT",
        ]
        if snap.first_unseen is not None:
            out.append(f"* OK [UNSEEN {snap.first_unseen}] First unseen")
        out += [
            f"* OK [UIDVALIDITY {snap.uidvalidity}] UIDs valid",
            f"* OK [UIDNEXT {uidnext}] Predicted next UID",
        ]
        self.send(("\r\n".join(out) + "\r\n").encode("utf-8"))
        self.ok_code("READ-ONLY" if cmd.readonly else "READ-WRITE")
        return ("EXAMINE" if cmd.readonly else "SELECT") + " completed"

    async def do_namespace(self, cmd: c.Namespace) -> None:
        """RFC 2342 §5: one personal namespace, no prefix, ``/`` separator."""
        self.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')

    async def do_enable(self, cmd: c.Enable) -> None:
        """RFC 5161 §3.1; UTF8=ACCEPT (RFC 6855 §3) is the one extension to enable."""
        enabled = []
        if "UTF8=ACCEPT" in cmd.capabilities:
            self.utf8 = self.reader.utf8 = True
            enabled.append("UTF8=ACCEPT")
        self.send(("* ENABLED " + " ".join(enabled)).rstrip().encode() + b"\r\n")

    async def do_idle(self, cmd: c.Idle) -> str:
        """RFC 2177: updates are pushed as soon as the store reports a change."""
        self.send(encoder.continuation("idling"))
        self.reader.want_line()
        poll = True
        while True:
            if self.view is not None:
                await self.refresh(allow_expunge=True, poll=poll)
                poll = False
            event = self.reader.next_event()
            if isinstance(event, LineReceived):
                if event.data.strip().upper() == b"DONE":
                    return "IDLE terminated"
                raise c.bad("Expected DONE")
            if event is not NEED_DATA:
                raise c.bad("IDLE interrupted by an invalid line")
            await self.conn.drain()
            if self._read_task is None:
                self._read_task = asyncio.ensure_future(self.conn.read())
            wake = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((self._read_task, wake), return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()
            if self._read_task.done():
                data = await self._read()
                if not data:
                    raise ConnectionResetError("client left during IDLE")
                self.reader.receive_data(data)

    # ------------------------------------------------------------------ selected
    async def do_check(self, cmd: c.Check) -> None:
        return None  # RFC 3501 §6.4.1: every change is already committed

    async def do_close(self, cmd: c.Close) -> None:
        """RFC 3501 §6.4.2: expunge silently (not in EXAMINE), then deselect."""
        assert self.view is not None
        if not self.view.readonly:
            await self.store.expunge(self.view.mailbox_id)
        self.close_view()
        self.state = c.State.AUTHENTICATED

    async def do_unselect(self, cmd: c.Unselect) -> None:
        """RFC 3691: deselect without expunging."""
        self.close_view()
        self.state = c.State.AUTHENTICATED

    # ------------------------------------------------------------------ selected view
    def _on_change(self, mailbox_id: int, modseq: int) -> None:
        self._dirty = True
        self._wake.set()

    def close_view(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        self.view = None
        self._dirty = False

    async def refresh(self, *, allow_expunge: bool, poll: bool = False) -> None:
        """Send the untagged updates owed (RFC 3501 §7.4.1: EXPUNGE only if allowed).

        The store's notification marks the view dirty; ``poll`` reads the change log
        even without one (NOOP, CHECK, entering IDLE: the commands clients poll with),
        as a notification may trail the reply of the command that made the change."""
        view = self.view
        if view is None:
            return
        updates: list[Update]
        if self._dirty or poll:
            self._dirty = False
            self._wake.clear()
            changes = await self.store.changes_since(view.mailbox_id, view.modseq)
            recent_from = None
            last = view.uids[-1] if len(view) else 0
            if not view.readonly and any(
                ch.kind is ChangeKind.ADDED and ch.uid > last for ch in changes
            ):
                recent_from = await self.store.claim_recent(view.mailbox_id)
            updates = view.apply(changes, allow_expunge=allow_expunge, recent_from=recent_from)
        elif allow_expunge:
            updates = view.flush_expunges()
        else:
            return
        self.send_updates(updates)
        await self.flush()

    def send_updates(self, updates: Iterable[Update]) -> None:
        view = self.view
        out = bytearray()
        for u in updates:
            if isinstance(u, Expunged):
                out += b"* %d EXPUNGE\r\n" % u.seq
            elif isinstance(u, Exists):
                out += b"* %d EXISTS\r\n" % u.count
            elif isinstance(u, Recent):
                out += b"* %d RECENT\r\n" % u.count
            elif isinstance(u, FlagsChanged):
                recent = view is not None and u.uid in view.recent
                items: list[tuple[str, object]] = [
                    ("UID", u.uid),
                    ("FLAGS", flag_atoms(u.flags, recent=recent)),
                ]
                out += b"".join(
                    p for p in encoder.fetch_response(u.seq, items) if isinstance(p, bytes)
                )
            elif isinstance(u, Keywords):
                flags = " ".join(u.flags)
                out += f"* FLAGS ({flags})\r\n".encode()
                if view is not None and not view.readonly:
                    out += f"* OK [PERMANENTFLAGS ({flags} \\*)] Limited\r\n".encode()
        if out:
            self.send(bytes(out))


def _allows_expunge(cmd: c.Command) -> bool:
    """RFC 3501 §7.4.1: no EXPUNGE during FETCH, STORE or SEARCH (UID forms may)."""
    if isinstance(cmd, c.Fetch | c.Store | c.Search):
        return cmd.uid
    return True


DISPATCH: dict[type[c.Command], Handler] = {
    c.Capability: Session.do_capability,
    c.Noop: Session.do_noop,
    c.Logout: Session.do_logout,
    c.Id: Session.do_id,
    c.StartTls: login.starttls,
    c.Login: login.login,
    c.Authenticate: login.authenticate,
    c.Select: Session.do_select,
    c.Namespace: Session.do_namespace,
    c.Enable: Session.do_enable,
    c.Idle: Session.do_idle,
    c.Check: Session.do_check,
    c.Close: Session.do_close,
    c.Unselect: Session.do_unselect,
    c.Create: mailboxes.create,
    c.Delete: mailboxes.delete,
    c.Rename: mailboxes.rename,
    c.Subscribe: mailboxes.subscribe,
    c.List: mailboxes.list_mailboxes,
    c.Status: mailboxes.status,
    c.Append: messages.append,
    c.Expunge: messages.expunge,
    c.Search: messages.search,
    c.Fetch: messages.fetch,
    c.Store: messages.store,
    c.Copy: messages.copy,
}
