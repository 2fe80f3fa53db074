"""The connection runner with a tiny line-echo service, over real sockets and real TLS.

The echo service is test scaffolding for what every protocol shares: connection limits,
STARTTLS input discarding (CVE-2011-0411), idle timeouts, shutdown goodbyes and the
PROXY protocol.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from correo import config
from correo.context import Context
from correo.net.connection import Connection, IdleTimeout, Service
from correo.net.proxy import build_v1, build_v2
from correo.net.runner import Runner, bind_listener
from correo.net.tls import TlsContexts


async def echo(conn: Connection, ctx: Context) -> None:
    """Greets with the peer address; echoes lines; STARTTLS upgrades; SLEEP sets timeout."""
    conn.write(f"HELLO {conn.peer_ip}\r\n".encode())
    buf = b""
    while True:
        data = await conn.read()
        if not data:
            return
        buf += data
        while b"\r\n" in buf:
            line, _, buf = buf.partition(b"\r\n")
            if line == b"STARTTLS":
                conn.write(b"GO\r\n")
                buf = b""  # the session's own discard; the runner drops its buffer
                await conn.start_tls()
            elif line == b"SHORT":
                conn.set_timeout(0.3)
                conn.write(b"OK\r\n")
            elif line == b"BIGIDLE":  # IDLE's reader task + a slow drain in the session
                conn.set_timeout(1.0)
                reading = asyncio.ensure_future(conn.read())
                conn.write(b"B" * (8 << 20) + b"\r\n")
                await conn.drain()
                await asyncio.wait({reading})
                try:
                    reading.result()
                except IdleTimeout:
                    conn.write(b"TIMED OUT IN TASK\r\n")
                    return
            elif line == b"TASKREAD":  # read from another task, as IMAP IDLE does
                reading = asyncio.ensure_future(conn.read())
                await asyncio.wait({reading})  # unlike await, wait() does not pass a
                try:  # cancellation of this task on to the reading one
                    reading.result()
                except IdleTimeout:
                    conn.write(b"TIMED OUT IN TASK\r\n")
                    return
            else:
                conn.write(b"ECHO " + line + b"\r\n")


def service(name: str = "echo", implicit: bool = False) -> Service:
    return Service(name, "echo", implicit, echo, b"BUSY\r\n", b"BYE\r\n")


async def start(
    tmp: Path, cert: tuple[Path, Path], extra: str = "", implicit: bool = False
) -> tuple[Runner, int]:
    s = config.loads(
        f'[tls]\ncert = "{cert[0]}"\nkey = "{cert[1]}"\n'
        "[limits]\nmax_connections_per_ip = 2\n" + extra,
        tmp / "correo.toml",
    )
    tls = TlsContexts(s.tls)
    runner = Runner(s, tls)
    await runner.listen(service(implicit=implicit), (config.HostPort("127.0.0.1", 0),))
    ctx = Context(settings=s, store=None, auth=None, tls=tls)  # type: ignore[arg-type]
    await runner.start_serving(ctx)
    return runner, runner.bound["echo"][0].port


@pytest.fixture
async def echo_server(
    tmp_path: Path, test_cert: tuple[Path, Path]
) -> AsyncIterator[tuple[Runner, int]]:
    runner, port = await start(tmp_path, test_cert)
    yield runner, port
    await runner.stop(1)


async def line(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), 5)


async def test_per_ip_limit_gets_busy_reply(echo_server: tuple[Runner, int]) -> None:
    _, port = echo_server
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    for r, _w in held:
        assert (await line(r)).startswith(b"HELLO 127.0.0.1")
    r3, _w3 = await asyncio.open_connection("127.0.0.1", port)
    assert await line(r3) == b"BUSY\r\n"
    assert await r3.read() == b""
    for _r, w in held:
        w.close()


async def test_starttls_discards_pipelined_input(
    echo_server: tuple[Runner, int], test_cert: tuple[Path, Path]
) -> None:
    _, port = echo_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await line(reader)
    writer.write(b"STARTTLS\r\nINJECTED\r\n")
    assert await line(reader) == b"GO\r\n"
    ctx = ssl.create_default_context(cafile=str(test_cert[0]))
    ctx.check_hostname = False
    await writer.start_tls(ctx)
    writer.write(b"AFTER\r\n")
    assert await line(reader) == b"ECHO AFTER\r\n"
    writer.close()


async def test_idle_timeout_closes(echo_server: tuple[Runner, int]) -> None:
    _, port = echo_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await line(reader)
    writer.write(b"SHORT\r\n")
    assert await line(reader) == b"OK\r\n"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_activity_postpones_the_idle_timeout(echo_server: tuple[Runner, int]) -> None:
    """One watchdog timer per connection chases the deadline: a client active every
    0.1 s outlives several 0.3 s timeouts; after it falls silent the session ends no
    sooner than the timeout and well before the default one."""
    loop = asyncio.get_running_loop()
    _, port = echo_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await line(reader)
    writer.write(b"SHORT\r\n")
    assert await line(reader) == b"OK\r\n"
    for i in range(12):  # 1.2 s of activity, four timeout periods
        await asyncio.sleep(0.1)
        writer.write(b"PING %d\r\n" % i)
        assert await line(reader) == b"ECHO PING %d\r\n" % i
    quiet = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 0.25 <= loop.time() - quiet < 2
    writer.close()


async def test_idle_timeout_reaches_a_read_in_another_task(
    echo_server: tuple[Runner, int],
) -> None:
    """IMAP IDLE waits for input in a task of its own: the timeout is raised there (and
    the session answers), not by cancelling the session's main task."""
    _, port = echo_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await line(reader)
    writer.write(b"SHORT\r\nTASKREAD\r\n")
    assert await line(reader) == b"OK\r\n"
    assert await line(reader) == b"TIMED OUT IN TASK\r\n"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_drain_in_the_session_does_not_cancel_the_readers_timeout(
    echo_server: tuple[Runner, int],
) -> None:
    """The watchdog keeps a deadline per waiting task: the session's drain (a big reply
    the client reads at once) ends, the reader task's inactivity period still runs."""
    _, port = echo_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    await line(reader)
    started = asyncio.get_running_loop().time()
    writer.write(b"BIGIDLE\r\n")
    big = await asyncio.wait_for(reader.readline(), 5)
    assert len(big) == (8 << 20) + 2
    assert await asyncio.wait_for(reader.readline(), 5) == b"TIMED OUT IN TASK\r\n"
    assert asyncio.get_running_loop().time() - started >= 0.9
    writer.close()


async def test_shutdown_says_goodbye_to_idle_sessions(
    tmp_path: Path, test_cert: tuple[Path, Path]
) -> None:
    runner, port = await start(tmp_path, test_cert)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await line(reader)
    await runner.stop(2)
    assert await line(reader) == b"BYE\r\n"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    writer.close()


async def test_proxy_v1_from_balancer_gives_real_address(
    tmp_path: Path, test_cert: tuple[Path, Path]
) -> None:
    runner, port = await start(
        tmp_path, test_cert, '[listen]\nproxy_protocol_from = ["127.0.0.0/8"]\n'
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(build_v1(("192.0.2.7", 5555), ("127.0.0.1", port)) + b"X\r\n")
        assert await line(reader) == b"HELLO 192.0.2.7\r\n"
        assert await line(reader) == b"ECHO X\r\n"
        writer.close()
        # A garbage header from a balancer address closes the connection.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"EHLO not-a-proxy-header\r\n")
        try:  # closed without a reply (a reset when our bytes were still unread)
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass
        writer.close()
    finally:
        await runner.stop(1)


async def test_proxy_v2_then_implicit_tls_in_one_segment(
    tmp_path: Path, test_cert: tuple[Path, Path]
) -> None:
    runner, port = await start(
        tmp_path, test_cert, '[listen]\nproxy_protocol_from = ["127.0.0.1/32"]\n', implicit=True
    )
    try:
        ctx = ssl.create_default_context(cafile=str(test_cert[0]))
        ctx.check_hostname = False

        def client() -> bytes:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            # Header and ClientHello leave together: the runner must not eat the hello.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            raw.sendall(build_v2(("2001:db8::5", 7), ("::1", port)))
            with ctx.wrap_socket(raw) as tls:
                return tls.recv(100)

        assert await asyncio.to_thread(client) == b"HELLO 2001:db8::5\r\n"
    finally:
        await runner.stop(1)


async def test_proxy_header_ignored_from_other_networks(
    tmp_path: Path, test_cert: tuple[Path, Path]
) -> None:
    runner, port = await start(
        tmp_path, test_cert, '[listen]\nproxy_protocol_from = ["10.0.0.0/8"]\n'
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await line(reader) == b"HELLO 127.0.0.1\r\n"
        writer.write(build_v1(("192.0.2.7", 5555), ("127.0.0.1", port)))
        assert (await line(reader)).startswith(b"ECHO PROXY TCP4 192.0.2.7")
        writer.close()
    finally:
        await runner.stop(1)


async def test_starttls_never_loses_the_client_hello(
    echo_server: tuple[Runner, int], test_cert: tuple[Path, Path]
) -> None:
    """The client starts its handshake as soon as it reads the go-ahead; the runner must
    discard only what came before it, every time (a rare lost ClientHello was seen)."""
    _, port = echo_server
    ctx = ssl.create_default_context(cafile=str(test_cert[0]))
    ctx.check_hostname = False
    for i in range(60):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await line(reader)
        writer.write(b"STARTTLS\r\n")
        assert await line(reader) == b"GO\r\n"
        await asyncio.wait_for(writer.start_tls(ctx), 5)
        writer.write(b"N%d\r\n" % i)
        assert await line(reader) == b"ECHO N%d\r\n" % i
        writer.close()


def test_bind_listener_binds_every_address_of_a_name_on_one_port() -> None:
    """The SMTP workers' sockets: one per address "localhost" resolves to (as asyncio's
    servers bind), all on the port the first got; a port in use is an error."""
    wanted = {
        (info[0], info[4][0])
        for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)
    }
    socks = bind_listener(config.HostPort("localhost", 0))
    try:
        assert {(s.family, s.getsockname()[0]) for s in socks} == wanted
        assert len({s.getsockname()[1] for s in socks}) == 1
        with pytest.raises(OSError):
            bind_listener(config.HostPort("127.0.0.1", socks[0].getsockname()[1]))
    finally:
        for s in socks:
            s.close()
