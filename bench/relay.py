"""Relay throughput: messages/s from the durable queue to an SMTP sink on loopback.

    .venv/bin/python bench/relay.py [--messages 5000] [--size 4096] [--connections 1 20]

Fills a fresh SQLite queue (not timed), then starts the real queue runner
(``correo.queue.runner.QueueRunner``: claim with leases, our SMTP client with
PIPELINING, one result transaction per message, group commit) and times until every
recipient is recorded delivered and the queue is empty.

The sink is Postfix's ``smtp-sink`` when installed (bounded with ``-M`` like
``/work/shared/peers/smtp-bench.sh sink``), else a small asyncio sink in a separate
process (it advertises PIPELINING and 8BITMIME and answers 250 to everything). The
output says which one ran.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from correo import config
from correo.mail.message import prepare
from correo.queue.relay import Relay
from correo.queue.resolver import DnsResolverSource, MxResolver
from correo.queue.runner import QueueRunner, timeouts_for
from correo.store.base import QueueRecipient, QueueRequest
from correo.store.queue import queue_store_for
from correo.store.sqlite import SqliteStore

# --------------------------------------------------------------------------- sinks


class _SinkProtocol(asyncio.Protocol):
    def __init__(self, counter: list[int]) -> None:
        self.counter = counter
        self.buf = b""
        self.data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.t = transport
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, chunk: bytes) -> None:
        self.buf += chunk
        out = []
        while True:
            if self.data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    if self.buf.startswith(b".\r\n"):
                        end = -2
                    else:
                        break
                self.buf = self.buf[end + 5 :]
                self.data = False
                self.counter[0] += 1
                out.append(b"250 2.0.0 ok\r\n")
                continue
            i = self.buf.find(b"\r\n")
            if i < 0:
                break
            line, self.buf = self.buf[:i], self.buf[i + 2 :]
            verb = line[:4].upper()
            if verb == b"EHLO":
                out.append(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n")
            elif verb == b"DATA":
                out.append(b"354 go\r\n")
                self.data = True
                self.buf = b"\r\n" + self.buf  # so a message "\r\n.\r\n" finds its end
            elif verb == b"QUIT":
                out.append(b"221 bye\r\n")
                self.t.write(b"".join(out))
                self.t.close()
                return
            else:
                out.append(b"250 ok\r\n")
        if out:
            self.t.write(b"".join(out))


def _asyncio_sink(port: int, ready: Any) -> None:
    async def main() -> None:
        counter = [0]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _SinkProtocol(counter), "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int, bound: int, kind: str) -> tuple[str, object]:
    exe = shutil.which("smtp-sink") or shutil.which("/usr/sbin/smtp-sink")
    if exe and kind != "asyncio":
        proc = subprocess.Popen(
            [exe, "-u", "nobody", "-m", "512", "-M", str(bound), f"127.0.0.1:{port}", "1024"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        return "postfix smtp-sink", proc
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(target=_asyncio_sink, args=(port, ready), daemon=True)
    proc.start()
    ready.wait(10)
    why = "asked for" if exe else "smtp-sink not installed"
    return f"asyncio sink (bench/relay.py, separate process; {why})", proc


def stop_sink(proc: object) -> None:
    if isinstance(proc, subprocess.Popen):
        proc.terminate()
        proc.wait(5)
    elif isinstance(proc, multiprocessing.Process):
        proc.terminate()
        proc.join(5)


# --------------------------------------------------------------------------- run


def message(i: int, size: int) -> bytes:
    head = (
        f"From: bench@example.test\r\nTo: sink@bench.test\r\nSubject: bench {i}\r\n"
        f"Message-ID: <{i}.bench@example.test>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max((size - len(head)) // len(line), 0)
    return head + body


async def run_once(n: int, size: int, connections: int, port: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = config.loads(
            'hostname = "bench.example.test"\n'
            f"[relay]\nmax_connections_per_domain = {connections}\n"
            f'[relay.routes]\n"bench.test" = "127.0.0.1:{port}"\n',
            root / "correo.toml",
        )
        store = SqliteStore(root / "correo.db", root / "blobs")
        await store.open()
        try:
            req = QueueRequest(
                sender="bench@example.test", recipients=(QueueRecipient("sink@bench.test"),)
            )
            batch = 200
            for start in range(0, n, batch):
                await asyncio.gather(
                    *(
                        store.deliver(prepare(message(i, size)), [], req)
                        for i in range(start, min(start + batch, n))
                    )
                )
            qs = queue_store_for(store)
            relay = Relay(settings, MxResolver(DnsResolverSource()), timeouts_for(settings))
            runner = QueueRunner(settings, store, qs, relay)
            t0 = time.perf_counter()
            task = asyncio.create_task(runner.run())
            while (runner.delivered < n or runner.in_flight) and not task.done():
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
            left = len(await qs.list_entries())
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if runner.delivered != n or runner.failed or runner.deferred:
                print(
                    f"  warning: delivered {runner.delivered}, failed {runner.failed},"
                    f" deferred {runner.deferred}",
                    file=sys.stderr,
                )
            return elapsed, left
        finally:
            await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 20])
    ap.add_argument(
        "--sink",
        choices=["auto", "asyncio"],
        default="auto",
        help="auto: Postfix smtp-sink when installed, else the asyncio sink",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    port = free_port()
    kind, proc = start_sink(port, args.messages * len(args.connections) + 100, args.sink)
    try:
        print(f"# bench/relay.py: {args.messages} messages of {args.size} B, queue → {kind}")
        print(
            f"# {platform.python_implementation()} {platform.python_version()},"
            f" {os.cpu_count()} CPUs, SQLite store in a temp dir (synchronous=FULL)"
        )
        for conns in args.connections:
            elapsed, left = asyncio.run(run_once(args.messages, args.size, conns, port))
            print(
                f"connections={conns:<3} {args.messages / elapsed:8.0f} msgs/s"
                f"  ({elapsed:.2f} s; {left} left in queue)"
            )
    finally:
        stop_sink(proc)


if __name__ == "__main__":
    main()
