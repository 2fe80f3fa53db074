"""Durable deliveries per second through the SQLite store (group commit).

Usage: ``.venv/bin/python bench/store_deliver.py [--seconds 3] [--dir /path]``

For each combination of body size (4 KB, 100 KB), local recipients (1, 50) and
concurrent writers (1, 32), N asyncio tasks each deliver distinct messages in a loop for
a fixed time; every delivery has returned only once committed with
``synchronous=FULL`` (and its blob file fsynced, for bodies over the inline threshold).
Prints deliveries/s (messages, not recipients), the CPU time the store's writer thread
spent per delivery (``time.thread_time`` read on that thread before and after: steadier
than throughput on a shared machine), and the machine conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from correo.store.base import IncomingMessage, LocalDelivery
from correo.store.sqlite import SqliteStore


def conditions(path: Path) -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = "unknown"
    try:
        out = subprocess.run(
            ["df", "-T", str(path)], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        if len(out) > 1:
            parts = out[1].split()
            fs = f"{parts[1]} on {parts[0]}"
    except OSError:
        pass
    import sqlite3

    return (
        f"cpu: {cpu}; cores: {os.cpu_count()}; python {platform.python_version()};"
        f" sqlite {sqlite3.sqlite_version}; filesystem: {fs} ({path});"
        f" {platform.system()} {platform.release()}"
    )


def make(size: int, n: int, tag: str) -> IncomingMessage:
    head = f"Subject: bench {tag} {n}\r\nMessage-ID: <{tag}.{n}@bench>\r\n\r\n".encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
    data = head + (line * (size // len(line) + 1))[: max(size - len(head), 0)]
    return IncomingMessage(data, json.dumps({"n": n}).encode())


async def writer_cpu(store: SqliteStore) -> float:
    """CPU seconds the writer thread has used so far (read on that thread)."""
    assert store._writer is not None
    return await store._writer.run_exclusive(lambda _tx: time.thread_time())


async def run_case(
    root: Path, size: int, recipients: int, writers: int, seconds: float
) -> tuple[float, float]:
    case = root / f"s{size}-r{recipients}-w{writers}"
    store = SqliteStore(case / "correo.db", case / "blobs")
    await store.open()
    try:
        await store.add_domain("bench.example")
        accounts = [
            (await store.add_account(f"u{i}@bench.example", "x")).id for i in range(recipients)
        ]
        targets = [LocalDelivery(a, prefix=b"Delivered-To: u@bench.example\r\n") for a in accounts]
        done = 0
        latencies: list[float] = []
        stop = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal done
            n = 0
            while time.perf_counter() < stop:
                msg = make(size, n, f"{w}")
                t0 = time.perf_counter()
                await store.deliver(msg, targets)
                latencies.append(time.perf_counter() - t0)
                n += 1
                done += 1

        cpu0 = await writer_cpu(store)
        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(writers)))
        elapsed = time.perf_counter() - start
        cpu = (await writer_cpu(store) - cpu0) / max(done, 1)
        latencies.sort()
        p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0.0
        assert store._writer is not None
        batch = store._writer.jobs / max(store._writer.batches, 1)
        print(
            f"  {size // 1024:>4} KB  rcpt {recipients:>2}  writers {writers:>2}:"
            f"  {done / elapsed:8.0f} deliveries/s  ({done * recipients / elapsed:8.0f}"
            f" mailbox rows/s, p50 {p50:6.2f} ms, {batch:5.1f} jobs/commit,"
            f" writer CPU {cpu * 1e6:6.1f} us/delivery)",
            flush=True,
        )
        return done / elapsed, p50
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the data")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="correo-bench-") as tmp:
        root = Path(tmp)
        print("store_deliver: durable deliveries/s (synchronous=FULL, WAL, group commit)")
        print(conditions(root))
        for size in (4 * 1024, 100 * 1024):
            for recipients in (1, 50):
                for writers in (1, 32):
                    await run_case(root, size, recipients, writers, args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
