"""The connection runner shared by every protocol.

It owns what is the same for SMTP, POP3 and IMAP: accepting, connection limits (global
and per client IP), session ids, timeouts, writes with a bounded output buffer, STARTTLS
upgrades (discarding whatever the client pipelined before the upgrade: the
STARTTLS-injection class, CVE-2011-0411, RFC 3207 §4.2, RFC 2595 §3.1), implicit TLS
(RFC 8314) and graceful shutdown. Sessions see only :class:`Connection`.

A session is ``async def handle(conn: Connection, ctx: Context) -> None``; the protocol's
sans-I/O core turns the bytes from ``conn.read()`` into commands and replies into bytes
for ``conn.write()``.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import base64
import ipaddress
import itertools
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from correo.config import HostPort, Settings
from correo.net.proxy import MAX_V2_LENGTH, ProxyHeaderError
from correo.net.proxy import parse as parse_proxy

if TYPE_CHECKING:
    from correo.context import Context
    from correo.net.tls import TlsContexts

log = logging.getLogger(__name__)

# CPython's asyncio TLS transport allocates a read buffer of ``max_size`` (256 KiB) per
# connection; 10,000 idle IMAP connections would pin 2.5 GiB. A TLS record is at most
# 16 KiB of plaintext, so 32 KiB costs little throughput and an eighth of the memory.
asyncio.sslproto.SSLProtocol.max_size = 32 * 1024


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
        self._task: asyncio.Task[Any] | None = None
        self._deadline = 0.0
        self._blocked = False
        self._expired = False
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
        self._arm()
        try:
            data = await self._reader.read(max_bytes)
        except (ConnectionError, OSError, ssl.SSLError):
            data = b""
        except asyncio.CancelledError:
            self._interrupted()
            raise
        finally:
            self.waiting = False
            self._blocked = False
        if not data:
            self._eof = True
        return data

    # ---- the inactivity watchdog
    def _arm(self) -> None:
        """Start an inactivity period of ``self.timeout`` seconds.

        Asyncio's per-await ``timeout()`` costs a timer, a context manager and a heap
        entry per read; a session reads a dozen times per message. Instead one timer
        per connection chases the deadline: when it fires early (the session read since)
        it re-schedules itself at the current deadline; when the deadline has passed
        while the session is still blocked, it cancels the session's task, which
        :meth:`_interrupted` turns into IdleTimeout."""
        deadline = self._loop.time() + self.timeout
        self._deadline = deadline
        self._blocked = True
        if self._task is None:
            self._task = asyncio.current_task()
        dog = self._watchdog
        if dog is None or dog.when() > deadline:  # none yet, or the timeout was shortened
            if dog is not None:
                dog.cancel()
            self._watchdog = self._loop.call_at(deadline, self._bark, deadline)

    def _bark(self, scheduled: float) -> None:
        self._watchdog = None
        if not self._blocked:
            return  # the next read or drain arms it again
        if self._deadline > scheduled:
            self._watchdog = self._loop.call_at(self._deadline, self._bark, self._deadline)
        elif self._task is not None:
            self._expired = True
            self._task.cancel()

    def _interrupted(self) -> None:
        """Turn the watchdog's or the shutdown's cancellation into our exceptions; any
        other cancellation propagates (the caller re-raises)."""
        task = self._task
        if self._expired and task is not None and task.uncancel() == 0:
            self._expired = False
            raise IdleTimeout from None
        if self.shutdown_requested and task is not None and task.uncancel() == 0:
            raise ServerShutdown from None

    def disarm(self) -> None:
        """Drop the watchdog (the runner calls this when the session ends)."""
        self._blocked = False
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
        self._arm()
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed from exc
        except asyncio.CancelledError:
            self._interrupted()
            raise
        finally:
            self._blocked = False

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


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def read_proxy_header(
    loop: asyncio.AbstractEventLoop, sock: socket.socket
) -> tuple[str, int] | None:
    """Consume exactly the PROXY header from ``sock`` (peeking first, so nothing after it
    is taken from the kernel buffer) and return the real client, or None (LOCAL)."""
    while True:
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _wake, readable)
        try:
            await readable
        finally:
            loop.remove_reader(sock.fileno())
        data = sock.recv(16 + MAX_V2_LENGTH, socket.MSG_PEEK)
        if not data:
            raise ProxyHeaderError("connection closed before the PROXY header")
        header = parse_proxy(data)
        if header is not None:
            sock.recv(header.length)  # consume exactly the header
            return header.source
        await asyncio.sleep(0.01)  # a partial header: wait for the rest


class Runner:
    """Accepts connections for every service and runs their sessions."""

    def __init__(self, settings: Settings, tls: TlsContexts | None) -> None:
        self.settings = settings
        self.tls = tls
        self.ctx: Context | None = None
        """Set by :meth:`start_serving` once the store is open."""
        self.stopping = False
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: dict[asyncio.Task[None], Connection] = {}
        self._per_ip: dict[str, int] = {}
        self._proxy_networks = [
            ipaddress.ip_network(n) for n in settings.listen.proxy_protocol_from
        ]
        self._accept_sockets: list[
            tuple[socket.socket, Service, HostPort, ssl.SSLContext | None]
        ] = []
        self._accept_tasks: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self.bound: dict[str, list[HostPort]] = {}
        """Actually bound addresses per service (ports resolved when 0 was asked)."""

    async def listen(self, service: Service, addresses: tuple[HostPort, ...]) -> None:
        ssl_ctx = self.tls.server_context if service.implicit_tls and self.tls else None
        if service.implicit_tls and ssl_ctx is None:
            raise RuntimeError(f"{service.name}: implicit TLS needs [tls] cert and key")
        for addr in addresses:
            if self._proxy_networks:
                self._listen_proxied(service, addr, ssl_ctx)
                continue

            async def on_connect(
                reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter,
                _addr: HostPort = addr,
            ) -> None:
                await self._serve(reader, writer, service, _addr)

            server = await asyncio.start_server(
                on_connect,
                host=addr.host,
                port=addr.port,
                ssl=ssl_ctx,
                reuse_address=True,
                backlog=1024,
                ssl_handshake_timeout=self.settings.limits.login_timeout if ssl_ctx else None,
                start_serving=False,
            )
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                bound = HostPort(host, port)
                self.bound.setdefault(service.name, []).append(bound)
                log.info(
                    "listening: %s on %s%s",
                    service.name,
                    bound,
                    " (implicit TLS)" if ssl_ctx else "",
                )
            self._servers.append(server)

    async def adopt(self, service: Service, addr: HostPort, sock: socket.socket) -> None:
        """Serve a listening socket bound elsewhere: an SMTP worker's share of port 25
        (see :func:`bind_shared` and ``correo.workers``)."""
        ssl_ctx = self.tls.server_context if service.implicit_tls and self.tls else None
        if service.implicit_tls and ssl_ctx is None:
            raise RuntimeError(f"{service.name}: implicit TLS needs [tls] cert and key")
        sock.setblocking(False)
        host, port = sock.getsockname()[:2]
        self.bound.setdefault(service.name, []).append(HostPort(host, port))
        if self._proxy_networks:
            self._accept_sockets.append((sock, service, addr, ssl_ctx))
            return

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(reader, writer, service, addr)

        server = await asyncio.start_server(
            on_connect,
            sock=sock,
            ssl=ssl_ctx,
            ssl_handshake_timeout=self.settings.limits.login_timeout if ssl_ctx else None,
            start_serving=False,
        )
        self._servers.append(server)

    # ---- PROXY protocol: own accept loop, so the header is consumed before any TLS
    # handshake (a ClientHello may follow the header in the same segment).

    def _listen_proxied(
        self, service: Service, addr: HostPort, ssl_ctx: ssl.SSLContext | None
    ) -> None:
        info = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(1024)
        sock.setblocking(False)
        host, port = sock.getsockname()[:2]
        self.bound.setdefault(service.name, []).append(HostPort(host, port))
        log.info(
            "listening: %s on %s (PROXY protocol from %s)",
            service.name,
            HostPort(host, port),
            ", ".join(map(str, self._proxy_networks)),
        )
        self._accept_sockets.append((sock, service, addr, ssl_ctx))

    async def _accept_loop(
        self,
        sock: socket.socket,
        service: Service,
        addr: HostPort,
        ssl_ctx: ssl.SSLContext | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            try:
                client, peer = await loop.sock_accept(sock)
            except OSError as exc:
                log.warning("%s: accept failed: %s", service.name, exc)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._accept_one(client, peer, service, addr, ssl_ctx))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _is_balancer(self, ip: str) -> bool:
        try:
            a = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(a in net for net in self._proxy_networks)

    async def _accept_one(
        self,
        client: socket.socket,
        peer: tuple[Any, ...],
        service: Service,
        addr: HostPort,
        ssl_ctx: ssl.SSLContext | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        real: tuple[str, int] | None = None
        client.setblocking(False)
        if self._is_balancer(str(peer[0])):
            try:
                real = await asyncio.wait_for(
                    read_proxy_header(loop, client), self.settings.limits.login_timeout
                )
            except (ProxyHeaderError, OSError, TimeoutError) as exc:
                log.info(
                    "refused %s:%s on %s: PROXY header: %s", peer[0], peer[1], service.name, exc
                )
                client.close()
                return

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(reader, writer, service, addr, real)

        reader = asyncio.StreamReader(limit=2**16)
        protocol = asyncio.StreamReaderProtocol(reader, on_connect)
        try:
            await loop.connect_accepted_socket(
                lambda: protocol,
                client,
                ssl=ssl_ctx,
                ssl_handshake_timeout=self.settings.limits.login_timeout if ssl_ctx else None,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log.info("connection from %s failed before the session: %s", peer[0], exc)
            client.close()

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        service: Service,
        listener: HostPort,
        real_peer: tuple[str, int] | None = None,
    ) -> None:
        peer = real_peer or writer.get_extra_info("peername") or ("?", 0)
        ip = str(peer[0])
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        limits = self.settings.limits
        assert self.ctx is not None
        if (
            self.stopping
            or len(self._tasks) >= limits.max_connections
            or self._per_ip.get(ip, 0) >= limits.max_connections_per_ip
        ):
            log.info("refused %s:%s on %s: connection limit", ip, peer[1], service.name)
            try:
                writer.write(service.busy)
                await asyncio.wait_for(writer.drain(), 2)
            except (ConnectionError, OSError, TimeoutError):
                pass
            writer.close()
            return
        conn = Connection(reader, writer, service, listener, self, (ip, int(peer[1])))
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = conn
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        conn.log.info(
            "connect from %s:%s to %s%s", ip, peer[1], service.name, " tls" if conn.tls else ""
        )
        try:
            await service.handler(conn, self.ctx)
        except ServerShutdown:
            try:
                conn.write(service.shutdown)
            except ConnectionClosed:
                pass
        except (ConnectionClosed, ConnectionError):
            conn.log.info("connection lost")
        except IdleTimeout:
            conn.log.info("idle timeout")
        except asyncio.CancelledError:
            conn.log.info("cancelled at shutdown")
            raise
        except Exception:
            conn.log.exception("session crashed")
        finally:
            self._tasks.pop(task, None)
            n = self._per_ip.get(ip, 1) - 1
            if n:
                self._per_ip[ip] = n
            else:
                self._per_ip.pop(ip, None)
            conn.disarm()
            await conn.close()
            conn.log.info("disconnect")

    async def start_serving(self, ctx: Context) -> None:
        """Accept connections on every bound listener (after the store is open)."""
        self.ctx = ctx
        for server in self._servers:
            await server.start_serving()
        for sock, service, addr, ssl_ctx in self._accept_sockets:
            self._accept_tasks.append(
                asyncio.create_task(self._accept_loop(sock, service, addr, ssl_ctx))
            )

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight commands finish within ``grace``, then cancel."""
        self.stopping = True
        for server in self._servers:
            server.close()
        for task in self._accept_tasks:
            task.cancel()
        for sock, *_ in self._accept_sockets:
            sock.close()
        for task in list(self._handshakes):
            task.cancel()
        for task, conn in list(self._tasks.items()):
            if conn.waiting:  # idle between commands: say goodbye now
                conn.shutdown_requested = True
                task.cancel()
        tasks = set(self._tasks)
        if tasks:
            log.info("waiting up to %.0fs for %d session(s)", grace, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for server in self._servers:
            await server.wait_closed()


def bind_shared(addr: HostPort, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one address with SO_REUSEPORT: the kernel spreads
    incoming connections over them, one socket per worker process. Bound before
    privileges are dropped (port 25); when port 0 is asked, all share the port the first
    one got."""
    info = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)[0]
    family, sockaddr = info[0], info[4]
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(1024)
            sockaddr = sock.getsockname()  # later ones take the port the first one got
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks
