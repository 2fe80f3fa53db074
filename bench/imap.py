"""IMAP benchmarks (issue 6 §9): prints each figure with the conditions it was measured in.

Starts its own correo server (a ``correo serve`` subprocess) on loopback over a fresh
data directory in a temp dir, fills it through the store API, then measures with real
clients over real sockets:

* SELECT of a mailbox of ``--big`` messages (default 100,000);
* ``FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)`` over ``--ten`` (10,000);
* ``UID SEARCH TEXT "word"`` over the same 10,000;
* APPEND messages/s (one connection, LITERAL+ pipelined one at a time, i.e. each APPEND
  waits for its tagged OK: this is durability-bound, one commit per message);
* resident memory (VmRSS) of the server with ``--idle`` connections in IDLE, plaintext
  and over TLS.

``--peer HOST:PORT --peer-user U --peer-password P`` runs the same SELECT/FETCH/SEARCH/
APPEND figures against another server in the same run (Dovecot from
``../shared/peers/peers-setup.sh``: ``--peer 127.0.0.1:10143 --peer-user bench
--peer-password pass``); its mailboxes are filled over IMAP with pipelined LITERAL+
APPENDs of the same messages.

10,000 IDLE connections: ``.venv/bin/python bench/imap.py --idle 10000`` (the script
raises RLIMIT_NOFILE to the hard limit in both processes; with a hard limit below
~10,100 raise it first, e.g. ``ulimit -Hn 65536`` as root).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import os
import platform
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

USER, PASSWORD = "bench@example.test", "bench-password"
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()


def message(n: int) -> bytes:
    """A ~2 KB plain message; every 10th mentions "word" in its body."""
    body = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(300))
    if n % 10 == 0:
        body += " word"
    return (
        f"From: Sender {n} <sender{n}@example.net>\r\n"
        f"To: Bench <{USER}>\r\n"
        f"Subject: benchmark message {n}\r\n"
        f"Date: Mon, 2 Feb 2026 10:{n % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{n}.bench@example.net>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"{body}\r\n"
    ).encode()


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


FIRST: list[float] = []
"""Seconds of the warm-up call of the last :func:`timed` (the cold figure)."""


def timed(fn: Callable[[], object], runs: int = 3) -> float:
    """Median seconds of ``runs`` calls, after one warm-up call (both servers then
    answer from warm caches/indexes: Dovecot builds its index on first access, correo
    its compact SELECT view and its ENVELOPE cache); the warm-up's own time is kept in
    ``FIRST`` and printed as the first-call figure."""
    t0 = time.perf_counter()
    fn()
    FIRST[:] = [time.perf_counter() - t0]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def first_ms() -> str:
    return f"first call {FIRST[0] * 1000:.0f} ms"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}"


# ------------------------------------------------------------------ correo setup


def write_config(tmp: Path, imap_port: int, imaps_port: int) -> Path:
    from correo.net.tls import make_self_signed

    cert, key = tmp / "cert.pem", tmp / "key.pem"
    make_self_signed("localhost", cert, key)
    cfg = tmp / "correo.toml"
    cfg.write_text(
        f'hostname = "bench.example.test"\ndata_dir = "{tmp / "data"}"\n'
        f'[listen]\nimap = ["127.0.0.1:{imap_port}"]\nimaps = ["127.0.0.1:{imaps_port}"]\n'
        f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        "[limits]\nmax_connections = 30000\nmax_connections_per_ip = 30000\n"
        "[auth]\nargon2_time_cost = 1\nargon2_memory_cost = 8\nargon2_parallelism = 1\n"
        "max_failures = 1000000\n"
        '[server]\nlog_level = "WARNING"\n'
    )
    return cfg


async def fill_store(cfg: Path, big: int, ten: int) -> None:
    """Fill through the store API: BIG gets one shared body ``big`` times, TEN gets
    ``ten`` distinct messages; appends run concurrently so commits are grouped."""
    from correo import config
    from correo.auth.passwords import hash_password
    from correo.mail.message import prepare
    from correo.store import open_store

    settings = config.load(cfg)
    store = await open_store(settings)
    try:
        await store.add_domain("example.test")
        acct = await store.add_account(USER, hash_password(PASSWORD, settings.auth))
        big_box = await store.create_mailbox(acct.id, "Big")
        ten_box = await store.create_mailbox(acct.id, "Ten")
        shared = prepare(message(0))
        t0 = time.perf_counter()
        for start in range(0, big, 2000):
            await asyncio.gather(
                *(
                    store.append(big_box.id, shared, frozenset({"\\Seen"}))
                    for _ in range(min(2000, big - start))
                )
            )
        t1 = time.perf_counter()
        for start in range(0, ten, 2000):
            batch = [prepare(message(n)) for n in range(start, min(ten, start + 2000))]
            await asyncio.gather(*(store.append(ten_box.id, m) for m in batch))
        t2 = time.perf_counter()
        print(
            f"# filled Big with {big:,} messages in {t1 - t0:.1f}s and Ten with {ten:,} "
            f"distinct messages in {t2 - t1:.1f}s (store API, concurrent appends)"
        )
    finally:
        await store.close()


def start_server(cfg: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "correo", "-c", str(cfg), "serve"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return proc
        if proc.poll() is not None:
            raise SystemExit(
                "correo did not start: "
                + (proc.stderr.read() if proc.stderr else b"").decode()[-2000:]
            )
        time.sleep(0.1)
    raise SystemExit("correo did not start listening within 30s")


# ------------------------------------------------------------------ measurements


def peer_fill(host: str, port: int, user: str, password: str, big: int, ten: int) -> None:
    """Fill a peer's Big/Ten over IMAP (pipelined LITERAL+ APPENDs), if not already."""
    c = imaplib.IMAP4(host, port)
    c.login(user, password)
    for name, count, make in (("Big", big, lambda n: message(0)), ("Ten", ten, message)):
        c.create(name)
        typ, data = c.status(name, "(MESSAGES)")
        have = int(data[0].split(b"MESSAGES ")[1].split(b")")[0]) if typ == "OK" else 0
        if have >= count:
            continue
        sock = c.socket()
        for start in range(have, count, 500):
            n_batch = min(500, count - start)
            out = bytearray()
            for i in range(n_batch):
                m = make(start + i)
                out += b"F%d APPEND %s (\\Seen) {%d+}\r\n%s\r\n" % (i, name.encode(), len(m), m)
            sock.sendall(bytes(out))
            seen, buf = 0, b""
            while seen < n_batch:
                buf += sock.recv(65536)
                *lines, buf = buf.split(b"\r\n")
                seen += sum(1 for ln in lines if ln.startswith(b"F"))
    c.logout()


def measure(
    label: str, host: str, port: int, user: str, password: str, big: int, ten: int, appends: int
) -> None:
    c = imaplib.IMAP4(host, port)
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.login(user, password)
    t = timed(lambda: c.select("Big", readonly=True))
    print(
        f"{label}: SELECT of {big:,} messages: {t * 1000:.1f} ms "
        f"(median of 3 after a warm-up, EXAMINE; {first_ms()}; {load()})"
    )
    c.select("Ten", readonly=True)
    n = 0

    def fetch() -> None:
        nonlocal n
        typ, data = c.fetch("1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
        assert typ == "OK"
        n = len(data)

    t = timed(fetch)
    print(
        f"{label}: FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE) over {ten:,}: "
        f"{t * 1000:.0f} ms, {n / t:,.0f} msgs/s (median of 3 after a warm-up, {n:,} responses;"
        f" {first_ms()}; {load()})"
    )
    hits = 0

    def search() -> None:
        nonlocal hits
        typ, data = c.uid("SEARCH", "TEXT", '"word"')
        assert typ == "OK"
        hits = len(data[0].split())

    t = timed(search)
    print(
        f'{label}: UID SEARCH TEXT "word" over {ten:,}: {t * 1000:.0f} ms '
        f"({hits:,} matches, median of 3 after a warm-up; {first_ms()}; {load()})"
    )
    c.create("Appends")
    msgs = [message(n) for n in range(appends)]
    sock = c.socket()
    t0 = time.perf_counter()
    buf = b""
    for i, m in enumerate(msgs):
        # one write per APPEND (LITERAL+): imaplib's two small writes would measure
        # Nagle and delayed ACKs (40 ms a message), not the server.
        sock.sendall(b"P%d APPEND Appends {%d+}\r\n%s\r\n" % (i, len(m), m))
        tag = b"P%d " % i
        while True:
            *lines, buf = (buf + sock.recv(65536)).split(b"\r\n")
            done = [ln for ln in lines if ln.startswith(tag)]
            if done:
                assert done[0].startswith(tag + b"OK"), done[0]
                break
    t = time.perf_counter() - t0
    print(
        f"{label}: APPEND: {appends / t:,.0f} msgs/s ({appends:,} messages of ~2 KB, "
        f"one connection, each waits for its tagged OK: one durable commit each)"
    )
    c.delete("Appends")
    c.logout()


async def idle_clients(
    n: int, port: int, tls: ssl.SSLContext | None, stop: asyncio.Event, ready: asyncio.Event
) -> int:
    sem = asyncio.Semaphore(100)
    writers: list[asyncio.StreamWriter] = []
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
            )
            writers.append(writer)
            await reader.readline()
            writer.write(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
            while not (await reader.readline()).startswith(b"+"):
                pass
            ok += 1

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"# {len(errors)} IDLE connection(s) failed, first: {errors[0]!r}")
    ready.set()
    await stop.wait()
    for w in writers:
        w.close()
    return ok


def measure_idle(pid: int, n: int, port: int, tls: ssl.SSLContext | None) -> None:
    async def run() -> None:
        before = rss_kib(pid)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(idle_clients(n, port, tls, stop, ready))
        t0 = time.perf_counter()
        await ready.wait()
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(2)
        after = rss_kib(pid)
        stop.set()
        ok = await task
        kind = "TLS (implicit, imaps)" if tls else "plaintext"
        print(
            f"correo: {ok:,} connections in IDLE, {kind}: server RSS {after / 1024:.0f} MiB "
            f"(was {before / 1024:.0f} MiB before; {(after - before) / max(ok, 1):.1f} KiB "
            f"per connection; set up in {elapsed:.1f}s)"
        )

    asyncio.run(run())
    time.sleep(2)  # let the server reap the closed sessions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--ten", type=int, default=10_000)
    ap.add_argument("--appends", type=int, default=1000)
    ap.add_argument("--idle", type=int, default=2000, help="IDLE connections (10000 for §9)")
    ap.add_argument("--peer", help="HOST:PORT of another IMAP server to measure too")
    ap.add_argument("--peer-user", default="bench")
    ap.add_argument("--peer-password", default="pass")
    args = ap.parse_args()

    nofile = raise_nofile()
    print(
        f"# {platform.node()}: {os.cpu_count()} CPU(s), Python {platform.python_version()}, "
        f"RLIMIT_NOFILE {nofile}; client and server on loopback"
    )
    if args.idle + 100 > nofile:
        print(f"# warning: RLIMIT_NOFILE {nofile} is too low for {args.idle} connections")
    with tempfile.TemporaryDirectory(prefix="correo-bench-") as d:
        tmp = Path(d)
        imap_port, imaps_port = free_port(), free_port()
        cfg = write_config(tmp, imap_port, imaps_port)
        asyncio.run(fill_store(cfg, args.big, args.ten))
        proc = start_server(cfg, imap_port)
        try:
            measure(
                "correo", "127.0.0.1", imap_port, USER, PASSWORD, args.big, args.ten, args.appends
            )
            if args.peer:
                host, _, port = args.peer.rpartition(":")
                peer_fill(host, int(port), args.peer_user, args.peer_password, args.big, args.ten)
                measure(
                    f"peer {args.peer}",
                    host,
                    int(port),
                    args.peer_user,
                    args.peer_password,
                    args.big,
                    args.ten,
                    args.appends,
                )
            if args.idle:
                measure_idle(proc.pid, args.idle, imap_port, None)
                ctx = ssl.create_default_context(cafile=str(tmp / "cert.pem"))
                ctx.check_hostname = False
                measure_idle(proc.pid, args.idle, imaps_port, ctx)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
