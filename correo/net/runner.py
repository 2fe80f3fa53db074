"""The connection runner shared by every protocol.

It owns what is the same for SMTP, POP3 and IMAP: accepting, connection limits (global
and per client IP), session ids, timeouts, writes with a bounded output buffer, STARTTLS
upgrades (discarding whatever the client pipelined before the upgrade: the
STARTTLS-injection class, CVE-2011-0411, RFC 3207 §4.2, RFC 2595 §3.1), implicit TLS
(RFC 8314), the PROXY protocol, SMTP worker sockets (:func:`bind_shared`) and graceful
shutdown. Sessions see only :class:`~correo.net.connection.Connection`.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ipaddress
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

from correo.config import HostPort, Settings
from correo.net.connection import (
    Connection,
    ConnectionClosed,
    IdleTimeout,
    ServerShutdown,
    Service,
)
from correo.net.limits import ConnectionCounts
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
        self.counts = ConnectionCounts(
            settings.limits.max_connections, settings.limits.max_connections_per_ip
        )
        """The connection limits; shared with the SMTP workers when there are some."""
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
        assert self.ctx is not None
        if self.stopping or not self.counts.admit(ip):
            log.info("refused %s:%s on %s: connection limit", ip, peer[1], service.name)
            try:
                writer.write(service.busy)
                await asyncio.wait_for(writer.drain(), 2)
            except (ConnectionError, OSError, TimeoutError):
                pass
            writer.close()
            return
        try:
            conn = Connection(reader, writer, service, listener, self, (ip, int(peer[1])))
        except BaseException:
            self.counts.release(ip)
            writer.close()
            raise
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = conn
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
            self.counts.release(ip)
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


def bind_listener(addr: HostPort) -> list[socket.socket]:
    """Listening sockets for ``addr``, one per address its name resolves to (IPv6 ones
    IPv6-only), bound as asyncio's servers bind: for the SMTP worker processes, which all
    accept on the same sockets. Bound before privileges are dropped (port 25). A port in
    use is an error, as for any listener; when port 0 is asked, all take the port the
    first one got."""
    infos = socket.getaddrinfo(
        addr.host or None, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    socks: list[socket.socket] = []
    port = addr.port
    try:
        for family, kind, proto, _name, sockaddr in dict.fromkeys(
            (i[0], i[1], i[2], i[3], i[4]) for i in infos
        ):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
            sock.listen(1024)
            port = sock.getsockname()[1]
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks
