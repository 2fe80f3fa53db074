"""Group commit: one thread owns the SQLite write connection (DESIGN.md principle 4).

Async callers submit *jobs*, plain functions taking a :class:`WriteTx`. The writer thread
takes every job waiting, runs them in ONE transaction with a SAVEPOINT around each but
the first (a job that raises is rolled back alone and its caller gets the exception; for
the first, rolling back the transaction is the same thing), commits once (one WAL fsync
with ``synchronous=FULL`` for the whole batch), and only then publishes the batch's
mailbox changes and resolves each caller's future, in one ``loop.call_soon_threadsafe``
per caller loop. So when an awaited write returns, it is durable.

After the commit the writer removes blob files whose last reference went, inside a short
``BEGIN IMMEDIATE`` that re-checks the ``blobs`` table, so a concurrent job (in this or
another process) re-adding the same body never loses its file.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from correo.store.base import StoreError, TemporaryStoreError
from correo.store.blobs import BlobFiles, os_error
from correo.store.events import EventHub
from correo.store.sqlite_schema import map_error

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 512
"""Most jobs in one transaction: bounds the latency a large burst adds to its first job."""


@dataclass(slots=True)
class WriteTx:
    """What a write job sees: the connection, plus effects that apply after commit."""

    conn: sqlite3.Connection
    blobs: BlobFiles
    changed: dict[int, int] = field(default_factory=dict)
    """mailbox_id → highestmodseq to publish once committed."""
    dropped_files: set[str] = field(default_factory=set)
    """Blob files whose row went; removed after commit if still unreferenced."""

    def notify(self, mailbox_id: int, modseq: int) -> None:
        self.changed[mailbox_id] = max(modseq, self.changed.get(mailbox_id, 0))

    def drop_file(self, sha: str) -> None:
        self.dropped_files.add(sha)


@dataclass(slots=True)
class _Job:
    fn: Callable[[WriteTx], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    exclusive: bool = False
    """Run outside any transaction, between batches (backup, checkpoints)."""


_Outcome = tuple[_Job, bool, Any, WriteTx | None]
"""A job, whether it succeeded, its result or (mapped) exception, and its effects."""

_STOP = object()


def _map(exc: BaseException) -> BaseException:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return map_error(exc)
    if isinstance(exc, OSError):
        return os_error(exc, "store")
    return exc


def _settle(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in results:
        if fut.done():  # the caller was cancelled; the write happened anyway
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _complete(
    hub: EventHub,
    changes: tuple[tuple[int, int], ...],
    results: list[tuple[asyncio.Future[Any], bool, Any]],
) -> None:
    """On a caller's loop: listeners first, then the callers, so other sessions learn of
    a change before the writer's caller can answer OK to its client. One callback (one
    self-pipe write, one loop wake-up) per loop and batch."""
    try:
        if changes:
            hub.publish_many(changes)
    finally:
        _settle(results)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Schedule on a caller's loop; a loop closed meanwhile has nobody left to tell."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        log.debug("event loop closed before a store write completed")


class Writer:
    """The writer thread and its job queue."""

    def __init__(self, conn: sqlite3.Connection, blobs: BlobFiles, hub: EventHub) -> None:
        self._conn = conn
        self._blobs = blobs
        self._hub = hub
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0
        self.jobs = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="correo-store-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Finish the queued jobs, then close the connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self._conn.close()

    async def run(self, fn: Callable[[WriteTx], T]) -> T:
        """Run ``fn`` in the next group-committed transaction; return once durable."""
        return await self._submit(fn, exclusive=False)

    async def run_exclusive(self, fn: Callable[[WriteTx], T]) -> T:
        """Run ``fn`` alone on the write connection, outside any transaction."""
        return await self._submit(fn, exclusive=True)

    async def _submit(self, fn: Callable[[WriteTx], T], *, exclusive: bool) -> T:
        if self._closed:
            raise TemporaryStoreError("store is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, loop, fut, exclusive))
        return await fut

    # ------------------------------------------------------------------ thread side

    def _run(self) -> None:
        queue_ = self._queue
        pending: deque[_Job] = deque()
        stopping = False
        while True:
            if not pending:
                if stopping:
                    return
                item = queue_.get()
                if item is _STOP:
                    return
                pending.append(item)
            # empty() first: no queue.Empty raised and caught per batch (one consumer, so
            # a queue not empty has an item for get_nowait)
            while len(pending) < MAX_BATCH and not queue_.empty():
                item = queue_.get_nowait()
                if item is _STOP:
                    stopping = True
                    break
                pending.append(item)
            if pending[0].exclusive:
                self._run_exclusive(pending.popleft())
                continue
            batch: list[_Job] = []
            while pending and not pending[0].exclusive:
                batch.append(pending.popleft())
            try:
                self._run_batch(batch)
            except BaseException:  # never let the thread die with callers waiting
                log.exception("store writer batch failed")
                self._fail(batch, TemporaryStoreError("store writer failed"))

    def _fail(self, jobs: list[_Job], exc: BaseException) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job in jobs:
            by_loop.setdefault(job.loop, []).append((job.future, False, exc))
        for loop, results in by_loop.items():
            _call_soon(loop, _settle, results)

    def _run_exclusive(self, job: _Job) -> None:
        tx = WriteTx(self._conn, self._blobs)
        try:
            result: tuple[asyncio.Future[Any], bool, Any] = (job.future, True, job.fn(tx))
        except BaseException as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            result = (job.future, False, _map(exc))
        _call_soon(job.loop, _settle, [result])

    def _begin(self, jobs: list[_Job]) -> bool:
        """BEGIN IMMEDIATE for ``jobs``; if that fails, they fail with its error."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail(jobs, map_error(exc))
            return False
        return True

    def _run_batch(self, batch: list[_Job]) -> None:
        """Run ``batch`` in one transaction (a fresh one after SQLite rolled it back).

        The first job of a transaction runs without a SAVEPOINT: if it raises, rolling
        back the whole transaction undoes exactly its writes, as ``ROLLBACK TO`` would,
        and the rest go on in a new transaction. Every later job gets a SAVEPOINT, so a
        failure undoes it alone. A batch of one job thus costs BEGIN, the job, COMMIT.
        """
        conn = self._conn
        outcomes: list[_Outcome] = []
        if not self._begin(batch):
            return
        fresh = True  # the open transaction holds no job's writes (and no success)
        for index, job in enumerate(batch):
            tx = WriteTx(conn, self._blobs)
            if fresh:
                try:
                    value = job.fn(tx)
                except BaseException as exc:
                    outcomes.append((job, False, _map(exc), None))
                    if conn.in_transaction:  # not when SQLite rolled back already (SQLITE_FULL)
                        try:
                            conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                    rest = batch[index + 1 :]
                    if not rest:
                        self._finish(outcomes, committed=False)
                        return
                    if not self._begin(rest):
                        self._finish(outcomes, committed=False)
                        return
                    continue
                outcomes.append((job, True, value, tx))
                fresh = False
                continue
            try:
                conn.execute("SAVEPOINT job")
                value = job.fn(tx)
                conn.execute("RELEASE job")
                outcomes.append((job, True, value, tx))
            except BaseException as exc:
                mapped = _map(exc)
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    except sqlite3.Error:
                        pass
                outcomes.append((job, False, mapped, None))
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back (e.g. SQLITE_FULL): the
                    # earlier jobs are undone too; fail them with the same error and go
                    # on with the rest in a fresh transaction.
                    outcomes = [(j, False, mapped if ok else v, None) for j, ok, v, _t in outcomes]
                    self._finish(outcomes, committed=False)
                    outcomes = []
                    if not self._begin(batch[index + 1 :]):
                        return
                    fresh = True
        self._commit(outcomes)

    def _commit(self, outcomes: list[_Outcome]) -> None:
        """COMMIT the open transaction; if that fails, the jobs that had succeeded fail
        with its error (nothing of theirs is durable)."""
        conn = self._conn
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            mapped_commit = map_error(exc)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            outcomes = [(j, False, mapped_commit if ok else v, None) for j, ok, v, _t in outcomes]
            self._finish(outcomes, committed=False)
            return
        self._finish(outcomes, committed=True)

    def _finish(self, outcomes: list[_Outcome], *, committed: bool) -> None:
        changed: dict[int, int] = {}
        dropped: set[str] = set()
        if committed:
            for _job, ok, _value, tx in outcomes:
                if ok and tx is not None:
                    for mailbox_id, modseq in tx.changed.items():
                        changed[mailbox_id] = max(modseq, changed.get(mailbox_id, 0))
                    dropped |= tx.dropped_files
            self.batches += 1
            self.jobs += len(outcomes)
        if dropped:
            self._remove_files(dropped)
        changes = tuple(changed.items())
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, ok, value, _tx in outcomes:
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, results in by_loop.items():
            _call_soon(loop, _complete, self._hub, changes, results)

    def _remove_files(self, shas: set[str]) -> None:
        """Unlink files whose rows are still gone, holding the write lock meanwhile."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sha in shas:
                    row = conn.execute("SELECT 1 FROM blobs WHERE sha = ?", (sha,)).fetchone()
                    if row is None:
                        self._blobs.remove(sha)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error:
            log.warning("could not remove %d unreferenced blob files now", len(shas))
