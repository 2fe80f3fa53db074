"""POP3 benchmark: RETR throughput (MB/s) without and with TLS, and logins/s.

Usage::

    .venv/bin/python bench/pop3.py [--messages 1000] [--size 65536] [--rounds 3]
        [--login-secs 5] [--concurrency 10] [--no-auth-cache] [--retr plain,stls,pop3s]
        [--dovecot 127.0.0.1:10110 [--dovecot-imap 127.0.0.1:10143]
         [--dovecot-user testuser2] [--dovecot-password pass]]

correo runs in a child process (so the Python client does not share its GIL) from a temp
dir, on ephemeral loopback ports, with a self-signed certificate and the default argon2id
parameters. ``--messages`` deterministic messages of exactly ``--size`` octets are
delivered to one account; the same bytes are APPENDed over IMAP to the Dovecot account
(whose INBOX is emptied first) when ``--dovecot`` is given (``../shared/peers``; this
script never installs or starts Dovecot).

The loop is the same for both servers: one connection, USER/PASS, ``RETR 1`` .. ``RETR
n`` one at a time (each reply read to its terminator before the next command), QUIT
without DELE; one warm-up round, then the median of ``--rounds``. With ``--dovecot``
the plain RETR rounds of the two servers alternate (correo, Dovecot, correo, ...), so a
load that drifts over seconds weighs on both alike, and the median of the per-round
ratios is printed as well. For correo the server's CPU time and page faults per RETR are
printed too (Linux ``/proc``). Logins: ``--concurrency`` threads each repeat connect,
greeting, USER/PASS, STAT, QUIT on their own account (``user1`` .. ``userN``, password
``pass``, as in the peers' setup) for ``--login-secs``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import imaplib
import multiprocessing as mp
import os
import platform
import random
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection as Pipe
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# --------------------------------------------------------------------------- messages


def make_message(i: int, size: int) -> bytes:
    """Message ``i`` of exactly ``size`` octets: headers, then 76-column ASCII lines
    (every 40th starting with "." so byte-stuffing is exercised)."""
    rng = random.Random(i)
    head = (
        f"From: sender{i % 50}@example.net\r\nTo: bench@bench.test\r\n"
        f"Subject: benchmark message {i}\r\nMessage-ID: <bench.{i}@example.net>\r\n"
        "Date: Fri, 27 Nov 2026 08:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
    table = bytes(alphabet[b % 64] for b in range(256))
    parts = [head]
    left = size - len(head)
    n = 0
    while left > 2:
        width = min(76, left - 2)
        line = rng.randbytes(width).translate(table)
        if n % 40 == 0 and line:
            line = b"." + line[1:]
        parts.append(line + b"\r\n")
        left -= width + 2
        n += 1
    parts.append(b"\r\n"[:left] if left > 0 else b"")
    data = b"".join(parts)
    assert len(data) == size or size < len(head), (len(data), size)
    return data


# --------------------------------------------------------------------------- server


CONFIG = """
hostname = "localhost"
data_dir = "{root}/data"
[server]
log_level = "WARNING"
[listen]
pop3 = ["127.0.0.1:0"]
pop3s = ["127.0.0.1:0"]
[tls]
cert = "{root}/cert.pem"
key = "{root}/key.pem"
[limits]
max_connections_per_ip = 1000
[auth]
cache_ttl = {cache_ttl}
max_failures = 1000000
"""


def serve(
    root: str, messages: int, size: int, users: int, cache_ttl: float, pipe: Pipe, profile: str
) -> None:
    """The child process: start correo, load the messages, report ports, wait for stop."""
    import logging

    from correo.server import install_event_loop_policy

    logging.basicConfig(level=logging.WARNING)
    loop_name = install_event_loop_policy()
    main = _serve(Path(root), messages, size, users, cache_ttl, loop_name, pipe)
    if not profile:
        asyncio.run(main)
        return
    import cProfile

    with cProfile.Profile() as prof:
        asyncio.run(main)
    prof.dump_stats(profile)


async def _serve(
    root: Path, messages: int, size: int, users: int, cache_ttl: float, loop_name: str, pipe: Pipe
) -> None:
    from correo import config
    from correo.auth.passwords import hash_password
    from correo.mail.message import prepare
    from correo.net.tls import make_self_signed
    from correo.server import Server
    from correo.store.base import LocalDelivery

    make_self_signed("localhost", root / "cert.pem", root / "key.pem")
    path = root / "correo.toml"
    path.write_text(CONFIG.format(root=root, cache_ttl=cache_ttl))
    settings = config.load(path)
    server = Server(settings)
    await server.start()
    assert server.ctx is not None and server.runner is not None
    store = server.ctx.store
    await store.add_domain("bench.test")
    pw = hash_password("pass", settings.auth)
    bench = await store.add_account("bench@bench.test", pw)
    for u in range(1, users + 1):
        await store.add_account(f"user{u}@bench.test", pw)
    t0 = time.monotonic()
    for start in range(0, messages, 50):  # concurrent deliveries share commits
        batch = [prepare(make_message(i, size)) for i in range(start, min(start + 50, messages))]
        await asyncio.gather(*(store.deliver(m, [LocalDelivery(bench.id)]) for m in batch))
    load_secs = time.monotonic() - t0
    ports = {name: addrs[0].port for name, addrs in server.runner.bound.items()}
    a = settings.auth
    pipe.send(
        {
            "ports": ports,
            "load_secs": load_secs,
            "loop": loop_name,
            "argon2": f"argon2id t={a.argon2_time_cost} m={a.argon2_memory_cost}KiB "
            f"p={a.argon2_parallelism}",
        }
    )
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    await server.stop()


# --------------------------------------------------------------------------- client


class Pop3Error(Exception):
    pass


class Client:
    """A minimal, fast POP3 client: reads multi-line replies in bulk, not line by line."""

    def __init__(
        self, host: str, port: int, *, implicit: ssl.SSLContext | None = None,
        stls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        sock: socket.socket = socket.create_connection((host, port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if implicit is not None:
            sock = implicit.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.buf = bytearray()
        self.line()
        if stls is not None:
            self.cmd(b"STLS")
            self.sock = stls.wrap_socket(self.sock, server_hostname="localhost")

    def tls_info(self) -> str:
        if isinstance(self.sock, ssl.SSLSocket):
            cipher = self.sock.cipher()
            return f"{self.sock.version()} {cipher[0] if cipher else ''}"
        return "none"

    def _fill(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise Pop3Error("connection closed")
        self.buf += data

    def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def cmd(self, command: bytes) -> bytes:
        self.sock.sendall(command + b"\r\n")
        reply = self.line()
        if not reply.startswith(b"+OK"):
            raise Pop3Error(reply.decode(errors="replace"))
        return reply

    def multiline(self, command: bytes) -> bytes:
        """The body of a multi-line reply, still byte-stuffed, without the terminator."""
        self.cmd(command)
        if self.buf.startswith(b".\r\n"):
            del self.buf[:3]
            return b""
        searched = 0
        while (end := self.buf.find(b"\r\n.\r\n", searched)) < 0:
            searched = max(0, len(self.buf) - 4)
            self._fill()
        body = bytes(self.buf[: end + 2])
        del self.buf[: end + 5]
        return body

    def login(self, user: str, password: str) -> None:
        self.cmd(b"USER " + user.encode())
        self.cmd(b"PASS " + password.encode())

    def close(self) -> None:
        try:
            self.cmd(b"QUIT")
        finally:
            self.sock.close()


def unstuff(body: bytes) -> bytes:
    return b"".join(
        (ln[1:] if ln.startswith(b".") else ln) + b"\r\n" for ln in body.split(b"\r\n")[:-1]
    )


def server_cpu(pid: int | None) -> float | None:
    """CPU seconds used so far by the live threads of process ``pid`` (Linux
    ``/proc/<pid>/task/*/schedstat``, nanoseconds; ``/proc/<pid>/stat`` counts in 10 ms
    ticks, too coarse for one round)."""
    if pid is None:
        return None
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return total / 1e9


@dataclasses.dataclass
class Round:
    secs: float
    octets: int
    tls: str
    client_cpu: float
    """Fraction of one core used by this client process."""
    server_us: float | None
    """Server CPU microseconds per RETR (None when not measurable)."""
    server_faults: float | None
    """Server minor page faults per RETR (allocator churn shows here)."""


def server_faults(pid: int | None) -> int | None:
    """Minor page faults of process ``pid`` so far (``/proc/<pid>/stat`` minflt)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[7])
    except (OSError, ValueError, IndexError):
        return None


def retr_round(
    make: Callable[[], Client],
    user: str,
    password: str,
    expect: set[bytes],
    server_pid: int | None = None,
) -> Round:
    """One session retrieving every message."""
    c = make()
    c.login(user, password)
    count = int(c.cmd(b"STAT").split()[1])
    octets = 0
    cpu0 = time.process_time()
    scpu0 = server_cpu(server_pid)
    faults0 = server_faults(server_pid)
    t0 = time.perf_counter()
    for n in range(1, count + 1):
        body = c.multiline(b"RETR %d" % n)
        octets += len(body)
        if n == 1 and hashlib.sha256(unstuff(body)).digest() not in expect:
            print("  warning: RETR 1 is none of the messages loaded", file=sys.stderr)
    secs = time.perf_counter() - t0
    client_cpu = (time.process_time() - cpu0) / secs
    scpu1 = server_cpu(server_pid)
    faults1 = server_faults(server_pid)
    server_us = faults = None
    if scpu0 is not None and scpu1 is not None:
        server_us = (scpu1 - scpu0) / max(count, 1) * 1e6
    if faults0 is not None and faults1 is not None:
        faults = (faults1 - faults0) / max(count, 1)
    tls = c.tls_info()
    c.close()
    return Round(secs, octets, tls, client_cpu, server_us, faults)


@dataclasses.dataclass
class Series:
    """The RETR rounds of one server and mode (round 0 warms up: page cache, caches)."""

    make: Callable[[], Client]
    user: str
    password: str
    expect: set[bytes]
    server_pid: int | None = None
    results: list[Round] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    def round(self, warm_up: bool = False) -> None:
        try:
            result = retr_round(self.make, self.user, self.password, self.expect, self.server_pid)
        except (OSError, Pop3Error) as exc:  # reported, never hidden
            self.errors.append(f"{type(exc).__name__}: {exc}"[:80])
            return
        if not warm_up:
            self.results.append(result)

    def rates(self) -> list[float]:
        return [r.octets / r.secs / 1e6 for r in self.results]

    def summary(self) -> str:
        results = self.results
        if not results:
            return f"failed: {self.errors}"
        rates = sorted(self.rates())
        med = statistics.median(rates)
        cpu = f"client CPU {statistics.median(r.client_cpu for r in results) * 100:.0f}%"
        server = [r.server_us for r in results if r.server_us is not None]
        if server:
            cpu += f", server CPU {statistics.median(server):.0f} µs/RETR"
        faults = [r.server_faults for r in results if r.server_faults is not None]
        if faults:
            cpu += f" and {statistics.median(faults):.1f} page faults/RETR"
        failed = f"; FAILED rounds: {self.errors}" if self.errors else ""
        return (
            f"{med:8.1f} MB/s (median of {len(rates)}: {', '.join(f'{r:.1f}' for r in rates)};"
            f" {results[0].octets / 1e6:.1f} MB stuffed per round; tls: {results[0].tls}; {cpu})"
            f"{failed}"
        )


def retr_throughput(series: Series, rounds: int) -> str:
    for k in range(rounds + 1):
        series.round(warm_up=k == 0)
    return series.summary()


def retr_interleaved(a: Series, b: Series, rounds: int) -> str:
    """Rounds of ``a`` and ``b`` in turn (a, b, a, b, ...), so that the load of the
    machine, which drifts over seconds, weighs on both alike; returns the per-round
    ratios a/b."""
    for k in range(rounds + 1):
        a.round(warm_up=k == 0)
        b.round(warm_up=k == 0)
    if len(a.results) != len(b.results) or not a.results:
        return "no paired rounds"
    ratios = sorted(x / y for x, y in zip(a.rates(), b.rates(), strict=True))
    return (
        f"{statistics.median(ratios):.2f}x (median of the per-round ratios:"
        f" {', '.join(f'{r:.2f}' for r in ratios)})"
    )


def logins(make: Callable[[], Client], users: list[str], password: str, secs: float) -> str:
    for user in users:  # untimed warm-up: one login each (fills a credential cache)
        try:
            c = make()
            c.login(user, password)
            c.close()
        except (OSError, Pop3Error):
            pass  # counted below, when it happens again
    done = [0] * len(users)
    errors: dict[str, int] = {}
    stop = time.monotonic() + secs
    lock = threading.Lock()

    def worker(k: int) -> None:
        while time.monotonic() < stop:
            try:
                c = make()
                c.login(users[k], password)
                c.cmd(b"STAT")
                c.close()
                done[k] += 1
            except (OSError, Pop3Error) as exc:
                with lock:
                    key = str(exc)[:60]
                    errors[key] = errors.get(key, 0) + 1

    cpu0 = time.process_time()
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    errs = f"; errors: {errors}" if errors else ""
    return (
        f"{sum(done) / elapsed:8.1f} logins/s ({sum(done)} sessions in {elapsed:.1f}s,"
        f" {len(users)} clients; client CPU {cpu / elapsed * 100:.0f}% of one core){errs}"
    )


def load_dovecot(imap_addr: tuple[str, int], user: str, password: str, msgs: list[bytes]) -> None:
    """Empty the Dovecot account's INBOX and APPEND the same messages (skipped if present)."""
    imap = imaplib.IMAP4(*imap_addr)
    imap.login(user, password)
    _, data = imap.select("INBOX")
    count = int(data[0] or 0)
    if count == len(msgs):
        _, sizes = imap.fetch(f"1,{count}", "(RFC822.SIZE)")
        if all(f"RFC822.SIZE {len(msgs[0])}".encode() in s for s in sizes if isinstance(s, bytes)):
            imap.logout()
            return
    if count:
        imap.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
        imap.expunge()
    for m in msgs:
        imap.append("INBOX", None, None, m)
    imap.logout()


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--size", type=int, default=65536)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--login-secs", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument(
        "--no-auth-cache",
        action="store_true",
        help="correo: verify argon2 on every login ([auth] cache_ttl = 0)",
    )
    ap.add_argument(
        "--retr",
        type=lambda text: {m.strip().lower() for m in text.split(",")},
        default=None,
        help="correo RETR modes to measure, e.g. plain,stls (default: plain,stls,pop3s)",
    )
    ap.add_argument("--profile", metavar="FILE", help="cProfile the correo process into FILE")
    ap.add_argument("--dovecot", metavar="HOST:PORT", help="also measure this Dovecot pop3")
    ap.add_argument(
        "--dovecot-imap",
        metavar="HOST:PORT",
        default="127.0.0.1:10143",
        help="Dovecot IMAP, to load the messages (default %(default)s)",
    )
    ap.add_argument(
        "--dovecot-user",
        default="testuser2",
        help="Dovecot account whose INBOX is REPLACED by the messages",
    )
    ap.add_argument("--dovecot-password", default="pass")
    ap.add_argument(
        "--dovecot-login-fmt",
        default="user{}",
        help="Dovecot accounts for the login loop (default %(default)s: user1..)",
    )
    a = ap.parse_args()  # fmt: skip

    msgs = [make_message(i, a.size) for i in range(a.messages)]
    digests = {hashlib.sha256(m).digest() for m in msgs}
    cache_ttl = 0 if a.no_auth_cache else 60
    print(
        f"pop3 bench: {a.messages} messages of {a.size} octets ({a.messages * a.size / 1e6:.1f}"
        f" MB); one connection RETR 1..n in turn, median of {a.rounds} after a warm-up;"
        f" python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.system()}"
        f" {platform.release()}; clients and server on the same machine over loopback;"
        f" load average {os.getloadavg()[0]:.1f} at start"
    )
    dovecot: Series | None = None
    paired = ""
    dhost, dport = hostport(a.dovecot or "127.0.0.1:0")
    if a.dovecot:  # loaded first: its plain RETR rounds alternate with correo's
        load_dovecot(hostport(a.dovecot_imap), a.dovecot_user, a.dovecot_password, msgs)

        def dmake() -> Client:
            return Client(dhost, dport)

        dovecot = Series(dmake, a.dovecot_user, a.dovecot_password, digests)
    with tempfile.TemporaryDirectory(prefix="correo-bench-pop3-") as root:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        users = max(a.concurrency, 1)
        proc = ctx.Process(
            target=serve, args=(root, a.messages, a.size, users, cache_ttl, child, a.profile or "")
        )
        proc.start()
        info = parent.recv()
        ports = info["ports"]
        tls = ssl.create_default_context(cafile=f"{root}/cert.pem")
        host = "127.0.0.1"
        try:
            print(
                f"correo ({info['loop']} loop, SQLite + blob files in a temp dir, one process;"
                f" {a.messages} messages delivered in {info['load_secs']:.1f}s)"
            )
            runs = [
                ("plain", lambda: Client(host, ports["pop3"])),
                ("STLS", lambda: Client(host, ports["pop3"], stls=tls)),
                ("POP3S", lambda: Client(host, ports["pop3s"], implicit=tls)),
            ]
            for name, make in runs:
                if a.retr and name.lower() not in a.retr:
                    continue
                series = Series(make, "bench@bench.test", "pass", digests, proc.pid)
                if name == "plain" and dovecot is not None:
                    paired = retr_interleaved(series, dovecot, a.rounds)
                    print(f"  RETR {name:6}: {series.summary()}")
                    continue
                print(f"  RETR {name:6}: {retr_throughput(series, a.rounds)}")
            scheme = f"{info['argon2']}, " + (
                "no credential cache" if a.no_auth_cache else "credential cache 60s"
            )
            names = [f"user{k}@bench.test" for k in range(1, users + 1)]
            for name, make in runs[:1] + runs[2:]:
                r = logins(make, names, "pass", a.login_secs)
                print(f"  logins {name:6}: {r} [{scheme}; USER/PASS, STAT, QUIT]")
        finally:
            parent.send("stop")
            proc.join(60)

    if a.dovecot and dovecot is not None:
        print(f"dovecot pop3 at {dhost}:{dport} (as configured by ../shared/peers: no TLS)")
        if not dovecot.results and not dovecot.errors:  # correo's plain RETR was skipped
            retr_throughput(dovecot, a.rounds)
            paired = ""
        print(f"  RETR plain : {dovecot.summary()}")
        if paired:
            print(f"  correo/dovecot RETR plain, rounds interleaved: {paired}")
        names = [a.dovecot_login_fmt.format(k) for k in range(1, users + 1)]
        r = logins(dovecot.make, names, a.dovecot_password, a.login_secs)
        print(
            f"  logins plain: {r} [passwd-file {{PLAIN}} scheme: no hashing; USER/PASS, STAT, QUIT]"
        )


if __name__ == "__main__":
    main()
