"""Mailbox change notifications: one in-process hub, fed by any number of sources.

A backend publishes ``(mailbox_id, highestmodseq)`` after a change commits; listeners
(IMAP IDLE, selected views, POP3) then read what changed with ``Store.changes_since``
(DESIGN.md principle 5). The SQLite writer thread schedules ``publish_many`` on the
caller's loop right after a commit (in the same callback that resolves the writers'
futures); PostgreSQL feeds the same hub from its LISTEN connection
(``postgres_events``); an SMTP worker process's deliveries arrive over its channel to
the main process (``correo.workers``), which a tap forwards on the worker's side.
Listeners run on the event loop and must not block; one raising is logged and the others
still run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from correo.store.base import MailboxListener

log = logging.getLogger(__name__)


class _Subscription:
    __slots__ = ("_hub", "_listener", "_mailbox_id")

    def __init__(self, hub: EventHub, mailbox_id: int, listener: MailboxListener) -> None:
        self._hub = hub
        self._mailbox_id = mailbox_id
        self._listener: MailboxListener | None = listener

    def close(self) -> None:
        """Stop being told; safe to call twice."""
        if self._listener is not None:
            self._hub._remove(self._mailbox_id, self._listener)
            self._listener = None


class EventHub:
    """Listeners per mailbox id; ``publish`` calls them on the loop thread."""

    def __init__(self) -> None:
        self._listeners: dict[int, list[MailboxListener]] = {}
        self._taps: list[Callable[[tuple[tuple[int, int], ...]], None]] = []

    def tap(self, fn: Callable[[tuple[tuple[int, int], ...]], None]) -> None:
        """Also hand every published batch to ``fn`` (on the loop thread): an SMTP worker
        process forwards its deliveries to the main process this way."""
        self._taps.append(fn)

    def subscribe(self, mailbox_id: int, listener: MailboxListener) -> _Subscription:
        self._listeners.setdefault(mailbox_id, []).append(listener)
        return _Subscription(self, mailbox_id, listener)

    def _remove(self, mailbox_id: int, listener: MailboxListener) -> None:
        listeners = self._listeners.get(mailbox_id)
        if listeners is None:
            return
        try:
            listeners.remove(listener)
        except ValueError:
            return
        if not listeners:
            del self._listeners[mailbox_id]

    def watched(self) -> list[int]:
        """Mailboxes someone listens to (to re-announce after notifications were lost)."""
        return list(self._listeners)

    def listener_count(self, mailbox_id: int) -> int:
        return len(self._listeners.get(mailbox_id, ()))

    def publish(self, mailbox_id: int, modseq: int) -> None:
        """Tell the mailbox's listeners; call on the event loop thread."""
        for listener in tuple(self._listeners.get(mailbox_id, ())):
            try:
                listener(mailbox_id, modseq)
            except Exception:
                log.exception("mailbox listener failed (mailbox %d)", mailbox_id)

    def publish_many(self, changes: Iterable[tuple[int, int]]) -> None:
        batch = tuple(changes)
        for mailbox_id, modseq in batch:
            self.publish(mailbox_id, modseq)
        for fn in self._taps:
            try:
                fn(batch)
            except Exception:
                log.exception("event tap failed")

    def publish_threadsafe(
        self, loop: asyncio.AbstractEventLoop, changes: Iterable[tuple[int, int]]
    ) -> None:
        """From another thread (a writer, a LISTEN connection): schedule on ``loop``."""
        batch = tuple(changes)
        if batch:
            try:
                loop.call_soon_threadsafe(self.publish_many, batch)
            except RuntimeError:  # the loop closed: nobody is listening any more
                return
