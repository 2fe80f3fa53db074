"""Durable deliveries per second: PostgreSQL with one and two nodes, beside SQLite.

Usage: ``.venv/bin/python bench/store_deliver_pg.py [--seconds 3] [--url postgresql://...]``

Without ``--url`` a throwaway PostgreSQL cluster is started (``tests/pgcluster.py``:
initdb/pg_ctl, fsync on, ``synchronous_commit = on``) and stopped afterwards. For each
case (body size, local recipients, concurrent writers per node), writers deliver
distinct messages in a loop for a fixed time through ``Store.deliver``; a delivery counts
once its call returned, i.e. once committed. Rows:

* ``sqlite``: the SQLite store (group commit, ``synchronous=FULL``) in a temp dir;
* ``pg 1 node``: one ``PostgresStore`` (one process, its pool);
* ``pg 2 nodes``: two processes, each its own ``PostgresStore`` with the same number of
  writers, on the same database; deliveries/s summed.

"same mailbox" cases send every delivery of every writer and node to the same
recipients, so they queue on one mailbox row (the lock that keeps UIDs in commit order
is held to COMMIT, so one mailbox takes roughly one delivery per commit round trip);
"spread" cases give each writer recipients of its own.

Prints deliveries/s (messages, not recipients), p50 latency and the machine conditions.
(``bench/store_deliver.py`` is the SQLite-only benchmark; this one runs all three side by
side from the same run so the figures are comparable.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

import asyncpg  # noqa: E402

from correo.store.base import IncomingMessage, LocalDelivery, Store  # noqa: E402
from correo.store.postgres import PostgresStore  # noqa: E402
from correo.store.sqlite import SqliteStore  # noqa: E402

CASES = (
    (4 * 1024, 1, 1, False),
    (4 * 1024, 1, 32, False),
    (4 * 1024, 1, 32, True),
    (4 * 1024, 50, 32, True),
    (100 * 1024, 1, 32, True),
)
"""(body bytes, local recipients, writers per node, spread): with ``spread`` each writer
delivers to recipients of its own (an ISP's load: many mailboxes); without, every writer
of every node delivers to the same mailbox (the worst case: one row lock for all)."""


def make(size: int, n: int, tag: str) -> IncomingMessage:
    head = f"Subject: bench {tag} {n}\r\nMessage-ID: <{tag}.{n}@bench>\r\n\r\n".encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
    data = head + (line * (size // len(line) + 1))[: max(size - len(head), 0)]
    return IncomingMessage(data, json.dumps({"n": n}).encode())


async def setup_accounts(store: Store, recipients: int) -> list[int]:
    await store.add_domain("bench.example")
    return [(await store.add_account(f"u{i}@bench.example", "x")).id for i in range(recipients)]


def slices(accounts: list[int], rcpt: int, writers: int, node: int) -> list[list[int]]:
    """Each writer's recipients: its own slice when there are enough accounts."""
    if len(accounts) == rcpt:
        return [accounts] * writers
    base = node * writers
    return [accounts[(base + w) * rcpt : (base + w + 1) * rcpt] for w in range(writers)]


async def drive(
    store: Store, per_writer: list[list[int]], size: int, seconds: float, tag: str
) -> tuple[int, list[float]]:
    prefix = b"Delivered-To: u@bench.example\r\n"
    done = 0
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        n = 0
        targets = [LocalDelivery(a, prefix=prefix) for a in per_writer[w]]
        while time.perf_counter() < stop:
            msg = make(size, n, f"{tag}-{w}")
            t0 = time.perf_counter()
            await store.deliver(msg, targets)
            latencies.append(time.perf_counter() - t0)
            n += 1
            done += 1

    await asyncio.gather(*(worker(w) for w in range(len(per_writer))))
    return done, latencies


def report(label: str, case: tuple[int, int, int, bool], done: int, lat: list[float],
           elapsed: float) -> None:  # fmt: skip
    size, rcpt, writers, spread = case
    lat.sort()
    p50 = lat[len(lat) // 2] * 1000 if lat else 0.0
    where = "spread" if spread else "same mailbox"
    print(
        f"  {label:<11} {size // 1024:>4} KB  rcpt {rcpt:>2}  writers {writers:>2}/node"
        f"  {where:<12}:"
        f"  {done / elapsed:8.0f} deliveries/s  (p50 {p50:7.2f} ms)",
        flush=True,
    )


def needed(case: tuple[int, int, int, bool], nodes: int) -> int:
    _size, rcpt, writers, spread = case
    return rcpt * writers * nodes if spread else rcpt


async def sqlite_case(root: Path, case: tuple[int, int, int, bool], seconds: float) -> None:
    size, rcpt, writers, _spread = case
    where = root / f"sqlite-{len(list(root.iterdir()))}"
    store = SqliteStore(where / "correo.db", where / "blobs")
    await store.open()
    try:
        accounts = await setup_accounts(store, needed(case, 1))
        t0 = time.perf_counter()
        per_writer = slices(accounts, rcpt, writers, 0)
        done, lat = await drive(store, per_writer, size, seconds, "s")
        report("sqlite", case, done, lat, time.perf_counter() - t0)
    finally:
        await store.close()


async def fresh_database(admin_dsn: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    name = "bench_" + secrets.token_hex(4)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(admin_dsn)._replace(path="/" + name))


def _node(url: str, per_writer: list[list[int]], size: int, seconds: float, tag: str,
          start: Any, out: Any) -> None:  # fmt: skip
    async def go() -> tuple[int, list[float]]:
        store = PostgresStore(url, pool_size=max(4, min(len(per_writer), 20)))
        await store.open()
        try:
            start.wait()
            return await drive(store, per_writer, size, seconds, tag)
        finally:
            await store.close()

    out.put(asyncio.run(go()))


async def pg_case(admin_dsn: str, nodes: int, case: tuple[int, int, int, bool],
                  seconds: float) -> None:  # fmt: skip
    size, rcpt, writers, _spread = case
    url = await fresh_database(admin_dsn)
    store = PostgresStore(url)
    await store.open()
    try:
        accounts = await setup_accounts(store, needed(case, nodes))
    finally:
        await store.close()
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_node,
            args=(url, slices(accounts, rcpt, writers, i), size, seconds, f"n{i}", start, out),
        )
        for i in range(nodes)
    ]
    for p in procs:
        p.start()
    await asyncio.sleep(2.0)  # let every node open its pool
    t0 = time.perf_counter()
    start.set()
    results = [await asyncio.to_thread(out.get) for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    done = sum(r[0] for r in results)
    lat = [x for r in results for x in r[1]]
    report(f"pg {nodes} node{'s' if nodes > 1 else ''}", case, done, lat, elapsed)


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from pgcluster import postgres_cluster

    with postgres_cluster() as dsn:
        yield dsn


async def server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def conditions(root: Path) -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import sqlite3

    return (
        f"cpu: {cpu}; cores: {os.cpu_count()}; python {platform.python_version()};"
        f" sqlite {sqlite3.sqlite_version}; data in {root}; {platform.system()}"
        f" {platform.release()}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--url", default=None, help="PostgreSQL admin DSN (default: throwaway)")
    parser.add_argument("--dir", type=Path, default=None, help="where SQLite data goes")
    args = parser.parse_args()
    with (
        postgres(args.url) as dsn,
        tempfile.TemporaryDirectory(dir=args.dir, prefix="correo-bench-") as tmp,
    ):
        root = Path(tmp)
        print("store_deliver_pg: durable deliveries/s, SQLite vs PostgreSQL 1 and 2 nodes")
        print(conditions(root) + f"; postgresql {await server_version(dsn)} (loopback TCP)")
        for case in CASES:
            await sqlite_case(root, case, args.seconds)
            for nodes in (1, 2):
                await pg_case(dsn, nodes, case, args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
