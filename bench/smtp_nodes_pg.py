"""SMTP deliveries per second through real ``correo serve`` processes: one SQLite node,
one PostgreSQL node, two PostgreSQL nodes sharing one database.

Usage: ``.venv/bin/python bench/smtp_nodes_pg.py [--seconds 5] [--clients 16]``

A throwaway PostgreSQL cluster is started (``tests/pgcluster.py``). Each run starts the
node(s) (``correo serve`` processes), creates 200 local
accounts, then ``--clients`` client threads each keep one SMTP connection (port 25
role, no AUTH) and send 4 KB messages, each to one local recipient chosen round-robin,
for ``--seconds``; with two nodes, clients alternate between them as a TCP load balancer
would. A message counts when its 250 after DATA arrived, i.e. once committed. Prints
messages/s and the p50 time from MAIL FROM to the 250, plus the machine conditions.
The clients run in this process (threads), on the same machine as the nodes and the
database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import asyncpg  # noqa: E402

USERS = 200
BODY = (
    b"From: bench@remote.test\r\nSubject: bench\r\n\r\n"
    + b"The quick brown fox jumps over the lazy dog, again and again.\r\n" * 64
)


def config(root: Path, storage: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "correo.toml"
    path.write_text(
        'hostname = "mx.bench.test"\n'
        f'data_dir = "{root / "data"}"\n'
        '[listen]\nsmtp = ["127.0.0.1:0"]\n'
        f"[storage]\n{storage}\n"
        '[server]\nlog_level = "WARNING"\n'
        "[limits]\nmax_connections_per_ip = 1000\n"
    )
    return path


def serve(cfg: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "correo", "-c", str(cfg), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.stdout is not None
    port = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "smtp":
            port = int(parts[1].rsplit(":", 1)[1])
        if "Ctrl-C stops." in line and port:
            return proc, port
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("correo serve did not start")


def add_users(cfg: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", _ADD_USERS, str(cfg)],
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


_ADD_USERS = f"""
import asyncio, sys
sys.argv[0] = "add_users"
from correo.config import load
from correo.store import open_store
from correo.store.postgres import open_postgres_store

async def main():
    settings = load(sys.argv[1])
    opener = open_postgres_store if settings.storage.backend == "postgresql" else open_store
    store = await opener(settings)
    try:
        await store.add_domain("bench.test")
        for i in range({USERS}):
            await store.add_account(f"u{{i}}@bench.test", "x")
    finally:
        await store.close()

asyncio.run(main())
"""


def blast(ports: list[int], clients: int, seconds: float) -> tuple[int, list[float]]:
    done = 0
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(c: int) -> None:
        nonlocal done
        with smtplib.SMTP("127.0.0.1", ports[c % len(ports)], timeout=60) as smtp:
            smtp.ehlo("bench.remote.test")
            n = c
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                smtp.sendmail("bench@remote.test", [f"u{n % USERS}@bench.test"], BODY)
                elapsed = time.perf_counter() - t0
                with lock:
                    done += 1
                    latencies.append(elapsed)
                n += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done, latencies


def run(label: str, cfgs: list[Path], clients: int, seconds: float) -> None:
    add_users(cfgs[0])
    procs = []
    try:
        ports = []
        for cfg in cfgs:
            proc, port = serve(cfg)
            procs.append(proc)
            ports.append(port)
        t0 = time.perf_counter()
        done, lat = blast(ports, clients, seconds)
        elapsed = time.perf_counter() - t0
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(20)
    lat.sort()
    p50 = lat[len(lat) // 2] * 1000 if lat else 0.0
    print(
        f"  {label:<18} clients {clients:>3}: {done / elapsed:7.0f} messages/s"
        f"  (p50 {p50:6.1f} ms, {done} messages)",
        flush=True,
    )


async def fresh_database(admin: str) -> str:
    name = "smtpbench_" + secrets.token_hex(4)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(admin)._replace(path="/" + name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    from pgcluster import postgres_cluster

    with postgres_cluster() as dsn, tempfile.TemporaryDirectory(prefix="correo-smtp-") as tmp:
        root = Path(tmp)
        print("smtp_nodes_pg: SMTP messages/s (250 after DATA = committed), 4 KB, 1 rcpt")
        print(
            f"cores: {os.cpu_count()}; python {platform.python_version()};"
            f" {platform.system()} {platform.release()}; nodes, database and clients on"
            " one machine"
        )
        run("sqlite 1 node", [config(root / "s", 'backend = "sqlite"')], args.clients,
            args.seconds)  # fmt: skip
        url = asyncio.run(fresh_database(dsn))
        pg = f'backend = "postgresql"\nurl = "{url}"'
        run("postgresql 1 node", [config(root / "p1", pg)], args.clients, args.seconds)
        url = asyncio.run(fresh_database(dsn))
        pg = f'backend = "postgresql"\nurl = "{url}"'
        run(
            "postgresql 2 nodes",
            [config(root / "p2a", pg), config(root / "p2b", pg)],
            args.clients,
            args.seconds,
        )


if __name__ == "__main__":
    main()
