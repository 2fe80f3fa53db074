"""SMTP worker processes: the MX listener (``[listen] smtp``) served by several processes.

Why: one Python process runs its protocol code on one core (the GIL). Receiving mail one
connection per message costs about a millisecond of CPU per message in correo, so a
single process tops out well below what the machine can do, while Postfix runs as many
``smtpd`` processes as it likes. With ``[smtp] workers = N`` the main process binds the
``smtp`` addresses (before dropping privileges, port 25 being privileged) and starts N
``python -m correo.workers`` processes that all accept on those sockets: a worker that
dies leaves the others serving the port. Submission, POP3, IMAP and the queue runner
stay in the main process.

Each worker opens the same store (SQLite in WAL mode takes writers from several
processes, each with its own group commit; PostgreSQL is built for it) and reports to
the main process over a private socketpair, one line per event:

* ``M <mailbox>:<modseq> ...``: mailboxes it changed (SQLite only: PostgreSQL's
  LISTEN/NOTIFY already crosses processes). The main process publishes them on its event
  hub, so IMAP IDLE and POP3 there see a delivery made by a worker at once.
* ``Q``: it queued mail (a forwarding alias, a DSN); the main process wakes its queue
  runner.
* ``R``: it is serving.

Start-up: workers are spawned while the main process still has its privileges, with
``-P`` (no current directory on the import path of a root process) and the main
process's own ``correo`` first on ``PYTHONPATH``. They import what they need, then block
reading their settings on stdin, which come only once the main process has opened
(created, migrated) the store; then each loads the TLS certificates (keys are often
readable by root only), drops privileges itself and opens the store.

A worker that exits unexpectedly is restarted with backoff. Restarts are spawned by the
main process after it dropped privileges, so the interpreter, correo and the TLS key
must then be readable by ``[server] user``; if they are not, the error is logged at
each attempt and the remaining workers go on serving the port. If a worker dies, the
main process also re-announces every watched mailbox, so changes the worker had not yet
reported are not missed by IDLE clients. SIGHUP (new TLS certificates) is passed on; at
shutdown each worker gets SIGTERM and finishes its sessions like the main process; a
worker whose main process disappears (its channel reaches EOF) stops too.

Connection limits (``[limits] max_connections``, ``max_connections_per_ip``) hold for
the main process and the workers together, through a shared-memory table of counts
(``correo.net.limits``). The MX listener has no AUTH, so the login failure limits are
not involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from correo.config import HostPort, Settings
from correo.net.limits import ConnectionCounts, SharedTable

if TYPE_CHECKING:
    from correo.context import Context
    from correo.net.tls import TlsContexts
    from correo.store.events import EventHub

log = logging.getLogger("correo.workers")  # also when run as __main__

READY_TIMEOUT = 60.0
"""Seconds a worker has to open the store and start serving."""
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Pauses before restarting a worker that keeps dying (the last one repeats)."""
CHANNEL_LINE_LIMIT = 1 << 20
"""Longest channel line the main process reads; workers send far shorter ones
(:data:`PAIRS_PER_LINE`)."""
PAIRS_PER_LINE = 1000
"""Mailbox changes per ``M`` line (a batch of many-recipient deliveries is split)."""
FLUSH_DELAY = 0.005
"""Seconds a worker gathers changes and queue wake-ups before telling the main process."""


class WorkerError(RuntimeError):
    """A worker could not start (``correo serve`` prints it as one line)."""


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    configured: bool = False
    """Its settings were sent: it may have dropped privileges, signals reach it. Before,
    it is still root and only the EOF of its stdin stops it."""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ready_at: float = 0.0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    channel: asyncio.StreamWriter | None = None
    """Our end of the channel; kept open (its EOF tells the worker we are gone)."""
    failures: int = 0


STABLE_AFTER = 60.0
"""Seconds a worker must have served before a crash counts as a first one again."""


class WorkerPool:
    """The main process's side: sockets, spawning, the channels, restarts, shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.smtp.workers
        self.table = SharedTable.create(self.count + 1)
        """Connection counts: row 0 is the main process's, row i + 1 worker i's."""
        self.sockets: list[tuple[HostPort, socket.socket]] = []
        """The listening sockets every worker accepts on."""
        self._workers = [_Worker(i) for i in range(self.count)]
        self._ctx: Context | None = None
        self._stopping = False
        self._supervisors: set[asyncio.Task[None]] = set()

    def bind(self) -> list[HostPort]:
        """Bind every ``smtp`` address (call while still privileged)."""
        from correo.net.runner import bind_listener

        bound = []
        for addr in self.settings.listen.smtp:
            for sock in bind_listener(addr):
                self.sockets.append((addr, sock))
                host, port = sock.getsockname()[:2]
                bound.append(HostPort(host, port))
                log.info("listening: smtp on %s (%d worker processes)", bound[-1], self.count)
        return bound

    async def spawn_all(self) -> None:
        """Start the processes; they wait for :meth:`start` before opening the store."""
        for worker in self._workers:
            await self._spawn(worker)

    async def start(self, ctx: Context) -> None:
        """Hand the settings over (the store is open) and wait until all serve."""
        self._ctx = ctx
        for worker in self._workers:
            await self._configure(worker)
        for worker in self._workers:
            await self._first_start(worker)
        for worker in self._workers:
            task = asyncio.create_task(self._supervise(worker))
            self._supervisors.add(task)

    async def _first_start(self, worker: _Worker) -> None:
        """Wait until the worker serves; a worker that cannot start stops start-up with
        one line (what went wrong is in the worker's own log lines just before)."""
        proc = worker.proc
        assert proc is not None
        ready = asyncio.create_task(worker.ready.wait())
        exited = asyncio.create_task(proc.wait())
        await asyncio.wait(
            {ready, exited}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        ready.cancel()
        exited.cancel()
        if not worker.ready.is_set():
            status = proc.returncode
            raise WorkerError(
                f"smtp worker {worker.index} did not start"
                + (f" (exit status {status})" if status is not None else " in time")
                + "; see the log lines above"
            )

    # ---------------------------------------------------------------- processes
    async def _spawn(self, worker: _Worker) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [child_end.fileno(), self.table.fd] + [s.fileno() for _a, s in self.sockets]
        args = [str(worker.index), str(child_end.fileno()), f"{self.table.fd}:{self.table.rows}"]
        args += [f"{s.fileno()}={addr}" for addr, s in self.sockets]
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # a root process: nothing from the current directory
                "-m",
                "correo.workers",
                *args,
                stdin=asyncio.subprocess.PIPE,
                pass_fds=fds,
                env=_child_env(),
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        worker.configured = False
        worker.ready.clear()
        if worker.channel is not None:  # the previous process's, on a restart
            worker.channel.close()
        reader, worker.channel = await asyncio.open_unix_connection(
            sock=parent_end, limit=CHANNEL_LINE_LIMIT
        )
        task = asyncio.create_task(self._listen(worker, reader))
        worker.tasks.add(task)
        task.add_done_callback(worker.tasks.discard)

    async def _configure(self, worker: _Worker) -> None:
        proc = worker.proc
        assert proc is not None and proc.stdin is not None
        proc.stdin.write(pickle.dumps(self.settings))
        worker.configured = True
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()

    async def _listen(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        """One worker's event lines (module docstring)."""
        from correo.queue.runner import wake

        while line := await reader.readline():
            kind, _, rest = line.rstrip(b"\n").partition(b" ")
            ctx = self._ctx
            if kind == b"M" and ctx is not None:
                hub = _hub(ctx)
                if hub is not None:
                    hub.publish_many(_pairs(rest))
            elif kind == b"Q" and ctx is not None:
                wake(ctx)
            elif kind == b"R":
                worker.ready_at = asyncio.get_running_loop().time()
                worker.ready.set()

    async def _supervise(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        while True:
            proc = worker.proc
            assert proc is not None
            code = await proc.wait()
            self.table.clear_row(worker.index + 1)  # its connections died with it
            if self._stopping:
                return
            if worker.ready.is_set() and loop.time() - worker.ready_at >= STABLE_AFTER:
                worker.failures = 0
            log.error("smtp worker %d (pid %d) exited with status %s", worker.index, proc.pid, code)
            await self._reannounce()
            while True:
                delay = RESTART_DELAYS[min(worker.failures, len(RESTART_DELAYS) - 1)]
                worker.failures += 1
                log.info("smtp worker %d: restarting in %.1fs", worker.index, delay)
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                try:
                    await self._spawn(worker)
                    await self._configure(worker)
                    break
                except OSError as exc:
                    log.error(
                        "smtp worker %d: cannot restart (the interpreter and correo must be"
                        " readable by [server] user): %s",
                        worker.index,
                        exc,
                    )

    async def _reannounce(self) -> None:
        """A dead worker may not have reported its last few milliseconds of changes:
        tell every watched mailbox its current MODSEQ (listeners read what is new)."""
        ctx = self._ctx
        hub = _hub(ctx) if ctx is not None else None
        highest = getattr(ctx.store, "highest_modseqs", None) if ctx is not None else None
        if hub is None or highest is None:
            return
        watched = hub.watched()
        if watched:
            try:
                hub.publish_many((await highest(watched)).items())
            except Exception as exc:  # a store error: IDLE clients poll again anyway
                log.warning("could not re-announce watched mailboxes: %s", exc)

    # ---------------------------------------------------------------- control
    @property
    def pids(self) -> list[int]:
        """The running workers' process ids (for operators' tools and tests)."""
        return [
            w.proc.pid for w in self._workers if w.proc is not None and w.proc.returncode is None
        ]

    def signal_all(self, signum: int) -> None:
        """Signal the workers that run as we do (a worker not yet configured may still be
        root, out of our reach after the privilege drop: :meth:`stop` closes its stdin)."""
        for worker in self._workers:
            proc = worker.proc
            if proc is not None and proc.returncode is None and worker.configured:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    proc.send_signal(signum)

    async def stop(self, grace: float) -> None:
        """Stop every worker: SIGTERM (it finishes its sessions within ``grace``) and the
        channel's EOF; a worker never configured gets EOF on stdin and exits. SIGKILL for
        whatever is left after ``grace`` + 5 s."""
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        for worker in self._workers:
            proc = worker.proc
            if proc is not None and not worker.configured and proc.stdin is not None:
                proc.stdin.close()
        self.signal_all(signal.SIGTERM)
        for worker in self._workers:
            if worker.channel is not None:
                worker.channel.close()
        procs = [w.proc for w in self._workers if w.proc is not None]
        waits = [asyncio.create_task(p.wait()) for p in procs]
        if waits:
            _done, pending = await asyncio.wait(waits, timeout=grace + 5)
            if pending:
                self.signal_all(signal.SIGKILL)
                await asyncio.wait(pending, timeout=5)
        for worker in self._workers:
            for task in list(worker.tasks):
                task.cancel()
        for _addr, sock in self.sockets:
            sock.close()
        self.table.close_fd()


def _hub(ctx: Context) -> EventHub | None:
    """The store's hub when worker deliveries must be relayed over the channel (SQLite);
    None on PostgreSQL, whose NOTIFY already crosses processes."""
    from correo.store.events import EventHub

    hub = getattr(ctx.store, "events", None)
    if ctx.settings.storage.backend != "sqlite" or not isinstance(hub, EventHub):
        return None
    return hub


def _child_env() -> dict[str, str]:
    """The environment for a worker: this process's ``correo`` first on the path, so the
    workers run the same code as the main process (with ``-P``, not the current
    directory's)."""
    import correo

    root = str(Path(correo.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _pairs(text: bytes) -> list[tuple[int, int]]:
    out = []
    for item in text.split():
        mailbox, sep, modseq = item.partition(b":")
        if sep and mailbox.isdigit() and modseq.isdigit():
            out.append((int(mailbox), int(modseq)))
    return out


# ---------------------------------------------------------------------- the worker


class _Channel:
    """The worker's side of the channel; also the queue runner stand-in in ``extras``.

    Changes and queue wake-ups are gathered for :data:`FLUSH_DELAY` and sent together:
    waking the main process for every commit costs both processes CPU and, on a busy
    machine, the next client a few hundred microseconds; a few milliseconds more before
    an IDLE client hears of new mail costs nobody anything."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._changes: dict[int, int] = {}
        self._wake = False
        self._timer: asyncio.TimerHandle | None = None

    def _send(self, line: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(line)

    def _later(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)

    def changed(self, batch: tuple[tuple[int, int], ...]) -> None:
        changes = self._changes
        for mailbox, modseq in batch:
            if modseq > changes.get(mailbox, 0):
                changes[mailbox] = modseq
        if changes:
            self._later()

    def wake(self) -> None:
        self._wake = True
        self._later()

    def flush(self) -> None:
        """Send what was gathered (also called at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pairs = list(self._changes.items())
        self._changes.clear()
        for start in range(0, len(pairs), PAIRS_PER_LINE):
            part = pairs[start : start + PAIRS_PER_LINE]
            self._send(b"M " + " ".join(f"{m}:{q}" for m, q in part).encode() + b"\n")
        if self._wake:
            self._wake = False
            self._send(b"Q\n")

    def ready(self) -> None:
        self._send(b"R\n")


async def _serve(
    index: int, settings: Settings, channel_fd: int, table: SharedTable, listeners: list[str]
) -> None:
    from correo.auth.service import Authenticator
    from correo.context import Context
    from correo.net.runner import Runner
    from correo.net.tls import TlsContexts
    from correo.queue.runner import EXTRAS_KEY
    from correo.server import SERVICES, _limiter, _service, drop_privileges
    from correo.store import open_store

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # certificates first: their keys are often readable by root alone
    tls = TlsContexts(settings.tls) if settings.tls.cert else None
    loop.add_signal_handler(signal.SIGHUP, _reload, tls)
    if os.geteuid() == 0 and settings.server.user:
        drop_privileges(settings.server.user)
    store = await open_store(settings, listen=False)  # it writes, it never watches
    ctx = Context(
        settings=settings,
        store=store,
        auth=Authenticator(settings, limiter=_limiter(store, settings)),
        tls=tls,
    )
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=channel_fd))
    channel = _Channel(writer)
    ctx.extras[EXTRAS_KEY] = channel
    hub = _hub(ctx)  # SQLite: on PostgreSQL the commit's NOTIFY reaches the main process
    if hub is not None:
        hub.tap(channel.changed)
    runner = Runner(settings, tls)
    limits = settings.limits
    runner.counts = ConnectionCounts(
        limits.max_connections, limits.max_connections_per_ip, table, row=index + 1
    )
    service = _service("smtp", SERVICES["smtp"])
    for item in listeners:
        fd, _, addr = item.partition("=")
        sock = socket.socket(fileno=int(fd))
        await runner.adopt(service, HostPort(*_split(addr)), sock)
    await runner.start_serving(ctx)
    channel.ready()
    log.info("smtp worker %d serving (pid %d)", index, os.getpid())
    parent = asyncio.create_task(reader.read())  # b"" once the main process is gone
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({parent, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if parent.done() and not stop.is_set():
        log.warning("smtp worker %d: main process gone, stopping", index)
    parent.cancel()
    stopping.cancel()
    await runner.stop(settings.server.shutdown_grace)
    await store.close()
    ctx.auth.close()
    channel.flush()  # the last commits' changes
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


def _reload(tls: TlsContexts | None) -> None:
    """SIGHUP: re-read the certificates; a failure keeps the old ones (as the main
    process does). Without TLS there is nothing to do, but the signal must not kill."""
    if tls is None:
        return
    try:
        tls.reload()
    except Exception as exc:
        log.error("tls reload failed, keeping the old certificates: %s", exc)


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str]) -> int:
    """``python -m correo.workers INDEX CHANNEL_FD TABLE_FD:ROWS FD=HOST:PORT ...``
    (from :class:`WorkerPool`)."""
    # Ctrl-C in a terminal reaches the whole process group: the main process decides.
    # SIGHUP (a reload) is handled once serving; until then it must not kill us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    index, channel_fd, listeners = int(argv[0]), int(argv[1]), argv[3:]
    table_fd, _, rows = argv[2].partition(":")
    table = SharedTable(int(table_fd), int(rows))
    table.close_fd()  # the mapping keeps what it needs
    os.set_inheritable(channel_fd, False)  # inherited for us, not for anything we start
    for item in listeners:
        os.set_inheritable(int(item.partition("=")[0]), False)
    # imported while still privileged (the interpreter may be unreadable afterwards)
    import correo.server
    import correo.smtp.session
    import correo.store  # noqa: F401

    data = sys.stdin.buffer.read()  # blocks until the main process has opened the store
    if not data:
        return 0  # the main process stopped before configuring us
    # From the main process over a private pipe: as trusted as our own command line.
    settings = pickle.loads(data)  # noqa: S301
    if not isinstance(settings, Settings):
        raise SystemExit("correo.workers: bad settings from the main process")
    _import_backend(settings)
    from correo.server import configure_logging, install_event_loop_policy

    configure_logging(settings.server.log_level)
    install_event_loop_policy()
    asyncio.run(_serve(index, settings, channel_fd, table, listeners))
    return 0


def _import_backend(settings: Settings) -> None:
    """Import the store backend before privileges are dropped (see ``correo.server``)."""
    import importlib

    from correo.server import _BACKEND_MODULES

    importlib.import_module(f"correo.store.{_BACKEND_MODULES[settings.storage.backend]}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
