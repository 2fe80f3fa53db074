"""What a session sees of its client: :class:`Connection`, and the runner's exceptions.

A session is ``async def handle(conn: Connection, ctx: Context) -> None``; the protocol's
sans-I/O core turns the bytes from ``conn.read()`` into commands and replies into bytes
for ``conn.write()``. Reads and output drains are bounded by the session's inactivity
timeout (RFC 5321 §4.5.3.2, RFC 1939 §3, RFC 3501 §5.4); STARTTLS upgrades discard what
the client pipelined before the go-ahead (CVE-2011-0411, RFC 3207 §4.2, RFC 2595 §3.1).
The runner (``correo.net.runner``) accepts connections and builds these.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import itertools
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from correo.config import HostPort

if TYPE_CHECKING:
    from correo.context import Context
    from correo.net.runner import Runner


class ConnectionClosed(Exception):
    """The peer went away (EOF or reset) while the session wanted to write."""


class IdleTimeout(Exception):
    """No input for longer than the session's current inactivity timeout."""


class ServerShutdown(Exception):
    """The server is stopping; raised from ``read`` between commands."""


Handler = Callable[["Connection", "Context"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Service:
    """How a listener behaves: which session runs, how TLS starts, what to say when busy."""

    name: str
    """"smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps"."""
    protocol: str
    """"smtp", "pop3" or "imap"."""
    implicit_tls: bool
    handler: Handler
    busy: bytes
    """Sent when a connection limit refuses the client (then the socket closes)."""
    shutdown: bytes
    """Sent to an idle session when the server stops."""


_counter = itertools.count(1)
_prefix = base64.b32encode(os.urandom(3)).decode().lower().rstrip("=")[:4]


def new_session_id() -> str:
    return f"{_prefix}{next(_counter):06x}"


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every line with the session id: one line per event (STYLE.md)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra.get('sid', '-')}] {msg}", kwargs


class Connection:
    """One client connection as a session sees it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        service: Service,
        listener: HostPort,
        runner: Runner,
        peer: tuple[str, int],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._runner = runner
        self.service = service
        self.listener = listener
        self.session_id = new_session_id()
        self.peer_ip, self.peer_port = peer
        sockname = writer.get_extra_info("sockname") or ("", 0)
        self.local_ip, self.local_port = sockname[0], sockname[1]
        self.timeout: float = runner.settings.limits.login_timeout
        self.tls = writer.get_extra_info("ssl_object") is not None
        self.log = SessionLog(
            logging.getLogger(f"correo.{service.protocol}"), {"sid": self.session_id}
        )
        self._eof = False
        self.waiting = False
        """True while the session waits for input (between commands)."""
        self.shutdown_requested = False
        # The inactivity watchdog (see _arm): one timer per connection, not one per read.
        self._loop = asyncio.get_running_loop()
        self._waits: dict[asyncio.Task[Any] | None, float] = {}
        """Tasks blocked in read or drain, and when their inactivity period ends."""
        self._expired: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.TimerHandle | None = None

    # ---- what sessions use
    @property
    def listener_is_loopback(self) -> bool:
        """True when both the listener and the (real, after PROXY) client are on
        loopback: a balancer on this host forwarding Internet clients to a loopback
        listener must not earn them the plaintext-password exemption."""
        if not self.listener.is_loopback:
            return False
        try:
            return ipaddress.ip_address(self.peer_ip).is_loopback
        except ValueError:
            return False

    @property
    def tls_info(self) -> str:
        """E.g. ``TLSv1.3 TLS_AES_256_GCM_SHA384`` for Received: lines (RFC 8314 §7)."""
        obj = self._writer.get_extra_info("ssl_object")
        if obj is None:
            return ""
        cipher = obj.cipher()
        return f"{obj.version()} {cipher[0] if cipher else ''}".strip()

    @property
    def tls_available(self) -> bool:
        return self._runner.tls is not None and self._runner.tls.available

    @property
    def stopping(self) -> bool:
        return self._runner.stopping

    def set_timeout(self, seconds: float) -> None:
        """Inactivity timeout for the next reads (RFC 5321 §4.5.3.2, RFC 1939 §3, ...)."""
        self.timeout = seconds

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Some bytes from the client, b"" at EOF. Raises IdleTimeout, ServerShutdown.

        Hot path: no timer per read (see :meth:`_arm`), no extra futures. At shutdown the
        runner cancels the task of every session waiting here and the cancellation is
        turned into ServerShutdown (commands already running are not interrupted)."""
        if self._eof:
            return b""
        if self._runner.stopping:
            raise ServerShutdown
        self.waiting = True
        task = self._arm()
        try:
            data = await self._reader.read(max_bytes)
        except (ConnectionError, OSError, ssl.SSLError):
            data = b""
        except asyncio.CancelledError:
            self._interrupted()
            raise
        finally:
            self.waiting = False
            self._waits.pop(task, None)
        if not data:
            self._eof = True
        return data

    # ---- the inactivity watchdog
    def _arm(self) -> asyncio.Task[Any] | None:
        """Start an inactivity period of ``self.timeout`` seconds for the calling task
        (returned: the caller removes it from ``_waits`` when its wait ends).

        Asyncio's per-await ``timeout()`` costs a timer, a context manager and a heap
        entry per read; a session reads a dozen times per message. Instead one timer
        per connection chases the nearest deadline of the tasks blocked on it (usually
        one; during IMAP IDLE a reading task and the session's own, draining): when it
        fires, tasks whose deadline passed are cancelled, which :meth:`_interrupted`
        turns into IdleTimeout, and it re-schedules itself for the rest."""
        task = asyncio.current_task()
        deadline = self._loop.time() + self.timeout
        self._waits[task] = deadline
        dog = self._watchdog
        if dog is None or dog.when() > deadline:  # none yet, or the timeout was shortened
            if dog is not None:
                dog.cancel()
            self._watchdog = self._loop.call_at(deadline, self._bark)
        return task

    def _bark(self) -> None:
        self._watchdog = None
        now = self._loop.time() + 0.001  # the loop may run a timer a hair early
        nearest: float | None = None
        for task, deadline in list(self._waits.items()):
            if deadline <= now:
                del self._waits[task]
                if task is not None:
                    self._expired.add(task)
                    task.cancel()
            elif nearest is None or deadline < nearest:
                nearest = deadline
        if nearest is not None:
            self._watchdog = self._loop.call_at(nearest, self._bark)

    def _interrupted(self) -> None:
        """Turn the watchdog's or the shutdown's cancellation of the current task into
        our exceptions; any other cancellation propagates (the caller re-raises)."""
        task = asyncio.current_task()
        if task is None:
            return
        if task in self._expired:
            self._expired.discard(task)
            if task.uncancel() == 0:
                raise IdleTimeout from None
            return  # cancelled by someone else as well: that wins
        if self.shutdown_requested and task.uncancel() == 0:
            raise ServerShutdown from None

    def disarm(self) -> None:
        """Drop the watchdog (the runner calls this when the session ends)."""
        self._waits.clear()
        self._expired.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionClosed
        self._writer.write(data)

    @property
    def buffered(self) -> int:
        """Bytes written but not yet sent to the peer."""
        transport = self._writer.transport
        return transport.get_write_buffer_size() if transport else 0

    async def drain(self) -> None:
        """Wait until the output buffer is below the limit (slow readers stall here).

        A client that stops reading gets no more time than one that stops writing: past
        the current inactivity timeout the session ends (IdleTimeout), so unread output
        cannot hold a connection slot forever."""
        transport = self._writer.transport
        if not transport.get_write_buffer_size() and not transport.is_closing():
            return  # all sent already (the common case): nothing to wait for
        task = self._arm()
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed from exc
        except asyncio.CancelledError:
            self._interrupted()
            raise
        finally:
            self._waits.pop(task, None)

    async def start_tls(self) -> None:
        """Upgrade to TLS. Anything the client sent after the STARTTLS command and before
        the handshake is discarded here, never executed under TLS (CVE-2011-0411)."""
        ctx = self._runner.tls
        if ctx is None or not ctx.available:
            raise RuntimeError("STARTTLS without a certificate")
        # What the reader holds now was sent before our "go ahead": discard it. From here
        # to the handshake nothing may yield to the loop, or the client's ClientHello
        # (sent once it reads our reply) could be read as plaintext and lost;
        # StreamWriter.start_tls pauses reading before its first real await.
        buffered = getattr(self._reader, "_buffer", None)
        if buffered:
            self.log.info("discarding %d byte(s) pipelined before TLS", len(buffered))
            buffered.clear()
        try:
            async with asyncio.timeout(self._runner.settings.limits.login_timeout):
                await self._writer.start_tls(ctx.server_context)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            self._eof = True
            raise ConnectionClosed(f"TLS handshake failed: {exc}") from exc
        self.tls = True
        self.log.info("tls: %s", self.tls_info)

    async def close(self) -> None:
        writer = self._writer
        if not self.tls and not writer.transport.get_write_buffer_size():
            writer.close()  # nothing left to send: the socket closes on the next loop turn
            return
        if not self._writer.is_closing():
            try:
                await asyncio.wait_for(self._writer.drain(), 5)
            except (ConnectionError, OSError, TimeoutError):
                pass
            self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 5)
        except (ConnectionError, OSError, TimeoutError, ssl.SSLError):
            pass
