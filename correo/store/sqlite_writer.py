"""Group commit: one thread owns the SQLite write connection (DESIGN.md principle 4).

Async callers submit *jobs*, plain functions taking a :class:`WriteTx`. The writer thread
takes every job waiting, runs them in ONE transaction with a SAVEPOINT around each (a
job that raises is rolled back alone and its caller gets the exception), commits once
(one WAL fsync with ``synchronous=FULL`` for the whole batch), and only then resolves each
caller's future through ``loop.call_soon_threadsafe`` and publishes the batch's mailbox
changes. So when an awaited write returns, it is durable.

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
        pending: list[_Job] = []
        stopping = False
        while True:
            if not pending:
                if stopping:
                    return
                item = self._queue.get()
                if item is _STOP:
                    return
                pending.append(item)
            while len(pending) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                pending.append(item)
            if pending[0].exclusive:
                self._run_exclusive(pending.pop(0))
                continue
            batch: list[_Job] = []
            while pending and not pending[0].exclusive:
                batch.append(pending.pop(0))
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

    def _run_batch(self, batch: list[_Job]) -> None:
        conn = self._conn
        outcomes: list[tuple[_Job, bool, Any, WriteTx | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail(batch, map_error(exc))
            return
        for job in batch:
            tx = WriteTx(conn, self._blobs)
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
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                    except sqlite3.Error as begin_exc:
                        rest = batch[batch.index(job) + 1 :]
                        self._fail(rest, map_error(begin_exc))
                        return
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

    def _finish(
        self, outcomes: list[tuple[_Job, bool, Any, WriteTx | None]], *, committed: bool
    ) -> None:
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
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, ok, value, _tx in outcomes:
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, results in by_loop.items():
            # Listeners first (same loop, FIFO): other sessions learn of the change before
            # the writer's caller can answer OK to its client.
            self._hub.publish_threadsafe(loop, changed.items())
            _call_soon(loop, _settle, results)

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
