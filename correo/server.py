"""Builds the store, the listeners and the background tasks; runs them; stops cleanly.

Start-up order matters when started as root: listeners are bound first (ports below
1024), privileges are dropped to ``[server] user``, and only then is the store opened,
so every file correo creates belongs to the unprivileged user. Connections are accepted
only once the store is open.

With ``[smtp] workers`` the MX listener is bound here too but served by worker processes
(``correo.workers``), spawned before the privilege drop and configured once the store is
open; the connection limits then count across all processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from correo.auth.limits import FailureLimiter
from correo.config import HostPort, Settings
from correo.context import Context
from correo.net.connection import Service
from correo.net.limits import ConnectionCounts
from correo.net.runner import Runner
from correo.net.tls import TlsContexts
from correo.store.base import Store
from correo.workers import WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    protocol: str
    implicit_tls: bool
    standard_port: int


SERVICES: dict[str, ServiceSpec] = {
    "smtp": ServiceSpec("smtp", False, 25),
    "submission": ServiceSpec("smtp", False, 587),
    "submissions": ServiceSpec("smtp", True, 465),
    "pop3": ServiceSpec("pop3", False, 110),
    "pop3s": ServiceSpec("pop3", True, 995),
    "imap": ServiceSpec("imap", False, 143),
    "imaps": ServiceSpec("imap", True, 993),
}


def _service(name: str, spec: ServiceSpec) -> Service:
    module = importlib.import_module(f"correo.{spec.protocol}.session")
    return Service(
        name=name,
        protocol=spec.protocol,
        implicit_tls=spec.implicit_tls,
        handler=module.handle,
        busy=module.BUSY,
        shutdown=module.SHUTDOWN,
    )


_BACKEND_MODULES = {"sqlite": "sqlite", "postgresql": "postgres"}


def drop_privileges(user: str) -> None:
    """Switch to ``user`` (and its primary group) after binding privileged ports."""
    import grp
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise SystemExit(f"[server] user: no such user {user!r}") from None
    os.setgroups([g.gr_gid for g in grp.getgrall() if user in g.gr_mem] + [pw.pw_gid])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    log.info("dropped privileges to %s (uid %d)", user, pw.pw_uid)


BackgroundTask = Callable[[Context], Coroutine[Any, Any, None]]


class Server:
    """One correo process: every configured listener plus background tasks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx: Context | None = None
        self.runner: Runner | None = None
        self.workers: WorkerPool | None = None
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        from correo.auth.service import Authenticator
        from correo.store import open_store

        s = self.settings
        tls = TlsContexts(s.tls) if s.tls.cert else None
        runner = Runner(s, tls)
        self.runner = runner
        for name, spec in SERVICES.items():
            addresses: tuple[HostPort, ...] = getattr(s.listen, name)
            if not addresses:
                continue
            if not spec.implicit_tls and tls is None:
                log.warning("%s: no [tls] certificate, STARTTLS will not be offered", name)
            if name == "smtp" and s.smtp.workers:
                self.workers = WorkerPool(s)
                runner.bound["smtp"] = self.workers.bind()
                continue
            await runner.listen(_service(name, spec), addresses)
        if self.workers is not None:
            # the limits hold for the main process and the workers together
            lim = s.limits
            runner.counts = ConnectionCounts(
                lim.max_connections, lim.max_connections_per_ip, self.workers.table, row=0
            )
            await self.workers.spawn_all()  # they wait for the store (WorkerPool.start)
        if os.geteuid() == 0 and s.server.user:
            # Import the store backend while still privileged: after the switch the
            # interpreter's own files may be out of reach (a Python under /root).
            importlib.import_module(f"correo.store.{_BACKEND_MODULES[s.storage.backend]}")
            drop_privileges(s.server.user)
        store = await open_store(s)
        ctx = Context(
            settings=s, store=store, auth=Authenticator(s, limiter=_limiter(store, s)), tls=tls
        )
        self.ctx = ctx
        from correo.smtp.delivery import warn_if_unsigned

        if s.listen.smtp or s.listen.submission or s.listen.submissions:
            warn_if_unsigned(ctx)
        for task in self._background_tasks():
            self._background.append(asyncio.create_task(task(ctx)))
        await runner.start_serving(ctx)
        if self.workers is not None:
            await self.workers.start(ctx)

    def _background_tasks(self) -> list[BackgroundTask]:
        from correo.queue import runner as queue_runner

        return [queue_runner.run]

    async def stop(self) -> None:
        grace = self.settings.server.shutdown_grace
        stopping = [self.runner.stop(grace)] if self.runner is not None else []
        if self.workers is not None:
            stopping.append(self.workers.stop(grace))
        await asyncio.gather(*stopping)
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.ctx is not None:
            await self.ctx.store.close()
            self.ctx.auth.close()
        log.info("stopped")

    async def serve_forever(self, ready: Callable[[Server], None] | None = None) -> None:
        """Run until SIGTERM/SIGINT; SIGHUP reloads TLS certificates."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_tls)
        try:
            await self.start()
            if ready is not None:
                ready(self)
            await stop.wait()
            log.info("stopping")
        finally:
            await self.stop()

    def reload_tls(self) -> None:
        if self.workers is not None:
            self.workers.signal_all(signal.SIGHUP)
        if self.ctx is None or self.ctx.tls is None:
            return
        try:
            self.ctx.tls.reload()
        except Exception as exc:  # keep serving with the old certificates
            log.error("tls reload failed, keeping the old certificates: %s", exc)


def _limiter(store: Store, settings: Settings) -> FailureLimiter | None:
    """Failed-login limits shared by every node on PostgreSQL; in memory on SQLite."""
    if settings.storage.backend != "postgresql":
        return None
    from correo.auth.limits_pg import PostgresFailureLimiter
    from correo.store.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    return PostgresFailureLimiter.from_settings(store.pool, settings)


def configure_logging(level: str) -> None:
    """One line per event on stderr, for ``correo serve`` and its SMTP workers.

    The format uses no caller, thread or process fields, so logging is told not to look
    them up (the Logging HOWTO's "Optimization" section): a few microseconds per line,
    and a busy MX logs three lines per message."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def install_event_loop_policy() -> str:
    """Use uvloop when installed (DESIGN.md); returns the loop's name for the logs."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
