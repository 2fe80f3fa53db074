"""Mailbox change notifications across nodes: PostgreSQL LISTEN/NOTIFY → ``EventHub``.

Every write transaction that changes a mailbox runs
``pg_notify('correo_mailbox', '<mailbox_id>:<modseq>')`` before it commits; PostgreSQL
delivers notifications only once (and only if) the transaction commits, in commit order
(DESIGN.md principle 5). Each node keeps one dedicated connection that LISTENs on the
channel and publishes what arrives to the same in-process :class:`EventHub` the SQLite
backend feeds from its writer thread, so IMAP IDLE, NOOP and POP3 work unchanged.

The node that made a change publishes it to its own hub right after the commit (not
waiting for the round trip); its own notification then comes back through LISTEN and is
dropped because that modseq was already published (:class:`Relay`).

If the LISTEN connection drops, notifications sent meanwhile are lost, so after it is
back every watched mailbox is published with its current MODSEQ: sessions then re-read
``changes_since`` and miss nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg

from correo.store.base import MailboxListener, Subscription
from correo.store.events import EventHub

log = logging.getLogger(__name__)

CHANNEL = "correo_mailbox"
RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
"""Seconds between attempts to get the LISTEN connection back (the last one repeats)."""
HEALTH_INTERVAL = 2.0
"""How often an idle LISTEN connection is checked (a dropped TCP connection is not always
noticed otherwise)."""


def payload(mailbox_id: int, modseq: int) -> str:
    return f"{mailbox_id}:{modseq}"


def parse_payload(text: str) -> tuple[int, int] | None:
    mailbox, sep, modseq = text.partition(":")
    if not sep or not mailbox.isdigit() or not modseq.isdigit():
        return None
    return int(mailbox), int(modseq)


class _Watch:
    __slots__ = ("_inner", "_mailbox_id", "_relay")

    def __init__(self, relay: Relay, mailbox_id: int, inner: Subscription) -> None:
        self._relay: Relay | None = relay
        self._mailbox_id = mailbox_id
        self._inner = inner

    def close(self) -> None:
        self._inner.close()
        if self._relay is not None:
            self._relay._unwatched(self._mailbox_id)
            self._relay = None


class Relay:
    """The hub plus what this node has published, so each modseq is told once."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self._watched: Counter[int] = Counter()
        self._published: dict[int, int] = {}

    def watch(self, mailbox_id: int, listener: MailboxListener) -> Subscription:
        self._watched[mailbox_id] += 1
        return _Watch(self, mailbox_id, self.hub.subscribe(mailbox_id, listener))

    def _unwatched(self, mailbox_id: int) -> None:
        self._watched[mailbox_id] -= 1
        if self._watched[mailbox_id] <= 0:
            del self._watched[mailbox_id]
            self._published.pop(mailbox_id, None)

    def watched(self) -> list[int]:
        return sorted(self._watched)

    def publish(self, mailbox_id: int, modseq: int, *, force: bool = False) -> None:
        """Tell the mailbox's listeners unless this modseq (or a later one) was told."""
        if mailbox_id not in self._watched:
            return
        if not force and self._published.get(mailbox_id, 0) >= modseq:
            return
        self._published[mailbox_id] = max(modseq, self._published.get(mailbox_id, 0))
        self.hub.publish(mailbox_id, modseq)


Connect = Callable[[], Awaitable[asyncpg.Connection]]
Current = Callable[[list[int]], Awaitable[dict[int, int]]]


class Listener:
    """The LISTEN connection of one node, reconnected whenever it drops."""

    def __init__(self, relay: Relay, connect: Connect, current: Current) -> None:
        self._relay = relay
        self._connect = connect
        self._current = current
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self.connected = asyncio.Event()
        self.reconnects = 0

    async def start(self) -> None:
        """Connect once (so a bad URL fails ``open``), then supervise in a task."""
        await self._attach()
        self._task = asyncio.create_task(self._supervise(), name="correo-pg-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._detach()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, text: object) -> None:
        parsed = parse_payload(str(text))
        if parsed is None:
            log.warning("ignoring malformed %s notification %r", CHANNEL, text)
            return
        self._relay.publish(*parsed)

    def _on_terminate(self, _conn: object) -> None:
        self._lost.set()

    async def _attach(self) -> None:
        conn = await self._connect()
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_terminate)
        self._conn = conn
        self._lost.clear()
        self.connected.set()

    async def _detach(self) -> None:
        conn, self._conn = self._conn, None
        self.connected.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.remove_termination_listener(self._on_terminate)
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2.0)
            conn.terminate()

    async def _healthy(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await asyncio.wait_for(conn.execute("SELECT 1"), HEALTH_INTERVAL * 2)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            return False
        return True

    async def _supervise(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), HEALTH_INTERVAL)
            if not self._lost.is_set() and await self._healthy():
                continue
            log.warning("LISTEN connection lost; reconnecting")
            await self._detach()
            await self._reconnect()

    async def _reconnect(self) -> None:
        attempt = 0
        while True:
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            await asyncio.sleep(delay)
            attempt += 1
            try:
                await self._attach()
                watched = self._relay.watched()
                current = await self._current(watched) if watched else {}
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.warning("LISTEN reconnect attempt %d failed: %s", attempt, exc)
                await self._detach()
                continue
            self.reconnects += 1
            log.info("LISTEN connection back; re-announcing %d watched mailboxes", len(watched))
            for mailbox_id in watched:
                self._relay.publish(mailbox_id, current.get(mailbox_id, 0), force=True)
            return
