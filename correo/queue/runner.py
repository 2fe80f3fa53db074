"""The queue runner: claim due recipients, deliver them by domain, record, report.

The server starts :func:`run` as a background task. One :class:`QueueRunner` per
process leases recipients under an owner token unique to the process, renews the leases
while it holds them, and so a recipient held by a crashed process is claimed again once
its lease runs out (RFC 5321 §4.5.4.1 retries; delivery is at-least-once).

Scheduling: the runner sleeps until the earliest due time in the queue, and is woken
at once by :func:`wake` (called after a message is queued in this process) or when a
delivery finishes. Changes made by other processes — ``correo queue retry``, another
node — are noticed within :data:`RECHECK` seconds, when the due time is read again.

Concurrency: claimed recipients are grouped by destination domain; each domain gets up
to ``[relay] max_connections_per_domain`` workers, all domains together up to
``[relay] max_connections``. A worker keeps its connection for the next message to the
same domain (RFC 5321 §4.5.4.1 asks for that) and quits when its domain has no more.

Every state change is logged as ``queue <id>: <recipient> <state> …``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from correo.config import Settings
from correo.queue import schedule
from correo.queue.bounce import Reporter
from correo.queue.client import Timeouts
from correo.queue.relay import DestinationError, Outcome, Relay, Session, Verdict
from correo.queue.resolver import DnsResolverSource, MxResolver
from correo.store.base import Store, StoreError
from correo.store.queue import (
    DsnAction,
    QueuedMessage,
    QueuedRecipient,
    QueueEntry,
    QueueStore,
    RecipientResult,
    RecipientState,
    queue_store_for,
)

if TYPE_CHECKING:
    from correo.context import Context

log = logging.getLogger(__name__)

EXTRAS_KEY = "correo.queue.runner"
RECHECK = 2.0
"""Seconds between reads of the earliest due time while idle (other processes' changes)."""
MAX_INFLIGHT = 2000
"""Recipients claimed and not yet recorded, at most (bounds memory and lease renewals)."""


@dataclass(slots=True)
class _Job:
    message: QueuedMessage
    recipients: tuple[QueuedRecipient, ...]


def timeouts_for(settings: Settings) -> Timeouts:
    """RFC 5321 §4.5.3.2 waits; ``[relay] connect_timeout`` bounds connect + greeting."""
    t = settings.relay.connect_timeout
    return Timeouts(connect=t, greeting=t)


class QueueRunner:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: QueueStore,
        relay: Relay,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.relay = relay
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.reporter = Reporter(
            store,
            queue,
            settings.hostname,
            settings.queue.expire_after,
            settings.relay.srs_secret,
        )
        self._wake = asyncio.Event()
        self._domains: dict[str, deque[_Job]] = {}
        self._workers: dict[str, int] = {}
        self._worker_tasks: set[asyncio.Task[None]] = set()
        self._held: set[int] = set()
        self._record_tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0
        self.deferred = 0

    # ------------------------------------------------------------------ control

    @property
    def in_flight(self) -> int:
        """Recipients claimed whose result is not committed yet."""
        return len(self._held)

    def wake(self) -> None:
        """Look at the queue now (a message was queued, a delivery finished)."""
        self._wake.set()

    async def run(self) -> None:
        renew = asyncio.create_task(self._renew_leases(), name="correo-queue-lease")
        log.info("queue runner started (owner %s)", self.owner)
        try:
            while True:
                try:
                    await self._step()
                except StoreError as exc:
                    log.error("queue runner: store error, pausing: %s", exc)
                    await asyncio.sleep(RECHECK)
                except Exception:  # a bug: keep the queue running, say so loudly
                    log.exception("queue runner: unexpected error, pausing")
                    await asyncio.sleep(RECHECK)
        finally:
            renew.cancel()
            for task in list(self._worker_tasks):
                task.cancel()
            for task in list(self._worker_tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._record_tasks:
                await asyncio.gather(*self._record_tasks, return_exceptions=True)
            if self._held:
                with contextlib.suppress(Exception):
                    await self.queue.release(self.owner, sorted(self._held))
            log.info("queue runner stopped")

    async def _step(self) -> None:
        self._wake.clear()
        if await self.reporter.send_owed():
            return  # a report was queued: it is due now
        room = MAX_INFLIGHT - len(self._held)
        if room > 0:
            now = self.clock()
            entries = await self.queue.claim_due(self.owner, now, self.settings.queue.lease, room)
            if entries:
                self._dispatch(entries)
                return
            due = await self.queue.next_due_time(self.owner)
            delay = RECHECK if due is None else min(RECHECK, max(due - now, 0.05))
        else:
            delay = RECHECK
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def _renew_leases(self) -> None:
        lease = self.settings.queue.lease
        while True:
            await asyncio.sleep(max(lease / 3, 0.05))
            if self._held:
                try:
                    await self.queue.renew_lease(self.owner, self.clock() + lease)
                except StoreError as exc:
                    log.warning("queue: could not renew leases: %s", exc)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, entries: list[QueueEntry]) -> None:
        touched: set[str] = set()
        for entry in entries:
            by_domain: dict[str, list[QueuedRecipient]] = {}
            for r in entry.recipients:
                by_domain.setdefault(r.domain, []).append(r)
                self._held.add(r.id)
            for domain, recipients in by_domain.items():
                self._domains.setdefault(domain, deque()).append(
                    _Job(entry.message, tuple(recipients))
                )
                touched.add(domain)
        for domain in touched:
            self._spawn(domain)

    def _spawn(self, domain: str) -> None:
        relay = self.settings.relay
        jobs = self._domains.get(domain)
        while (
            jobs
            and self._workers.get(domain, 0) < max(relay.max_connections_per_domain, 1)
            and len(self._worker_tasks) < max(relay.max_connections, 1)
            and len(jobs) > self._workers.get(domain, 0)
        ):
            self._workers[domain] = self._workers.get(domain, 0) + 1
            task = asyncio.create_task(self._worker(domain), name=f"correo-relay-{domain}")
            self._worker_tasks.add(task)
            task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._worker_tasks.discard(task)
        for domain in list(self._domains):
            if self._domains[domain]:
                self._spawn(domain)
        self._wake.set()

    async def _worker(self, domain: str) -> None:
        session: Session | None = None
        jobs = self._domains[domain]
        try:
            while jobs:
                job = jobs.popleft()
                try:
                    if session is None or not session.usable:
                        if session is not None:
                            await session.client.close()
                        session = None
                        try:
                            session = await self.relay.open(domain)
                        except DestinationError as exc:
                            failed = [job, *jobs]
                            jobs.clear()
                            for j in failed:
                                await self._finish(j, _all(j, exc))
                            continue
                    body = await self.queue.read_body(job.message)
                    outcomes = await self.relay.send(session, job.message, body, job.recipients)
                except StoreError as exc:
                    # Cannot read the body (or record): give this domain's work back,
                    # it is claimed again once the store answers.
                    log.error("queue %d: store error, retrying later: %s", job.message.id, exc)
                    await self._give_back([job, *jobs])
                    jobs.clear()
                    break
                except Exception as exc:
                    log.exception("queue %d: delivery to %s failed", job.message.id, domain)
                    outcomes = [
                        Outcome(r, Verdict.DEFERRED, "4.3.0", f"x-local; internal error: {exc}")
                        for r in job.recipients
                    ]
                self._record_later(job, outcomes)
        finally:
            self._workers[domain] -= 1
            if not self._workers[domain]:
                del self._workers[domain]
                if not jobs:
                    self._domains.pop(domain, None)
            if session is not None:
                with contextlib.suppress(Exception):
                    await session.client.quit()

    # ------------------------------------------------------------------ results

    async def _give_back(self, given: list[_Job]) -> None:
        ids = [r.id for j in given for r in j.recipients]
        try:
            await self.queue.release(self.owner, ids)
        except StoreError as exc:
            log.warning("queue: could not release %d recipient(s) now: %s", len(ids), exc)
        finally:
            self._held.difference_update(ids)

    def _record_later(self, job: _Job, outcomes: list[Outcome]) -> None:
        """Record without holding up the connection: the worker sends its next message
        while this result waits for the next group commit. A crash before the commit
        means the message is sent again (at-least-once), never lost."""
        task = asyncio.create_task(self._finish(job, outcomes))
        self._record_tasks.add(task)
        task.add_done_callback(self._record_done)

    def _record_done(self, task: asyncio.Task[None]) -> None:
        self._record_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "queue: recording a result failed (will be retried after the lease runs out): %s",
                task.exception(),
            )

    async def _finish(self, job: _Job, outcomes: list[Outcome]) -> None:
        now = self.clock()
        results = [self._result(job.message, o, now) for o in outcomes]
        ids = [r.id for r in job.recipients]
        try:
            applied = await self._record(results, now)
        except StoreError:
            # Give the rows back so they are tried again (the message may be sent twice).
            with contextlib.suppress(StoreError):
                await self.queue.release(self.owner, ids)
            raise
        finally:
            self._held.difference_update(ids)
        if applied < len(results):
            log.warning(
                "queue %d: %d result(s) not recorded: lease lost (bounced, removed or taken"
                " over meanwhile)",
                job.message.id,
                len(results) - applied,
            )
        if any(res.dsn is not None for res in results):
            self._wake.set()

    async def _record(self, results: list[RecipientResult], now: float) -> int:
        """Record, retrying a temporary store error twice (the delivery already happened;
        losing its result would mean sending it again)."""
        for pause in (1.0, 3.0):
            try:
                return await self.queue.record(self.owner, results, now)
            except StoreError as exc:
                log.warning("queue: recording results failed, retrying: %s", exc)
                await asyncio.sleep(pause)
        return await self.queue.record(self.owner, results, now)

    def _result(self, message: QueuedMessage, o: Outcome, now: float) -> RecipientResult:
        r = o.recipient
        qid = message.id
        if o.verdict is Verdict.DELIVERED:
            self.delivered += 1
            owe = "SUCCESS" in r.notify and not o.dsn_passed_on
            log.info(
                "queue %d: %s delivered via %s: %s", qid, r.address, o.remote_mta, o.diagnostic
            )
            return RecipientResult(
                r.id,
                RecipientState.DELIVERED,
                o.status,
                o.diagnostic,
                o.remote_mta,
                dsn=DsnAction.RELAYED if owe else None,
            )
        if o.verdict is Verdict.FAILED:
            self.failed += 1
            log.info("queue %d: %s failed: %s %s", qid, r.address, o.status, o.diagnostic)
            return RecipientResult(
                r.id,
                RecipientState.FAILED,
                o.status,
                o.diagnostic,
                o.remote_mta,
                dsn=DsnAction.FAILED,
            )
        attempts = r.attempts + 1
        when = schedule.next_attempt(now, message.created, attempts, self.settings.queue)
        if when is None:
            self.failed += 1
            age = schedule_age(now - message.created)
            log.info(
                "queue %d: %s expired after %s and %d attempts: %s",
                qid,
                r.address,
                age,
                attempts,
                o.diagnostic,
            )
            return RecipientResult(
                r.id,
                RecipientState.FAILED,
                "4.4.7",
                o.diagnostic,
                o.remote_mta,
                dsn=DsnAction.FAILED,
            )
        self.deferred += 1
        warn = not r.delay_warned and schedule.delay_warning_due(
            now, message.created, self.settings.queue
        )
        log.info(
            "queue %d: %s deferred (attempt %d, next in %.0fs): %s",
            qid,
            r.address,
            attempts,
            when - now,
            o.diagnostic,
        )
        return RecipientResult(
            r.id,
            RecipientState.DEFERRED,
            o.status,
            o.diagnostic,
            o.remote_mta,
            next_attempt=when,
            dsn=DsnAction.DELAYED if warn else None,
            delay_warned=warn,
        )


def _all(job: _Job, exc: DestinationError) -> list[Outcome]:
    verdict = Verdict.FAILED if exc.permanent else Verdict.DEFERRED
    return [Outcome(r, verdict, exc.status, exc.diagnostic, exc.remote_mta) for r in job.recipients]


def schedule_age(seconds: float) -> str:
    from correo.config import format_duration

    return format_duration(round(seconds))


# ---------------------------------------------------------------------- server hooks


def build(ctx: Context) -> QueueRunner:
    settings = ctx.settings
    relay = Relay(settings, MxResolver(DnsResolverSource()), timeouts_for(settings))
    return QueueRunner(settings, ctx.store, queue_store_for(ctx.store), relay)


async def run(ctx: Context) -> None:
    """The server's background task (cancelled at shutdown)."""
    runner = ctx.extras.get(EXTRAS_KEY)
    if not isinstance(runner, QueueRunner):
        runner = build(ctx)
        ctx.extras[EXTRAS_KEY] = runner
    await runner.run()


def wake(ctx: Context) -> None:
    """Call after ``Store.deliver(..., queue=...)`` returned: deliver without waiting."""
    # the runner itself, or in an SMTP worker the channel to the main process's runner
    waker = getattr(ctx.extras.get(EXTRAS_KEY), "wake", None)
    if callable(waker):
        waker()
