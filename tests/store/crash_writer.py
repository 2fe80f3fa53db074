"""Helper for test_crash.py: deliver forever, printing each delivery once it returned.

Usage: ``python crash_writer.py DATA_DIR``. Prints ``READY <inbox_id>`` then one line
``<mailbox_id> <uid> <sha256> <prefix_len>`` per completed delivery, from 8 concurrent
tasks, with bodies on both sides of the inline threshold. The test SIGKILLs it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from correo.store.base import IncomingMessage, LocalDelivery
from correo.store.sqlite import SqliteStore


def message(task: int, n: int) -> IncomingMessage:
    size = 500 if n % 3 else 20_000  # every third body goes to a blob file
    head = f"Subject: crash {task}.{n}\r\n\r\n".encode()
    data = head + bytes((task * 7 + n + i) % 251 for i in range(size))
    return IncomingMessage(data, b'{"crash": true}')


async def main(root: Path) -> None:
    store = SqliteStore(root / "correo.db", root / "blobs", inline_threshold=8192)
    await store.open()
    await store.add_domain("crash.example")
    account = await store.add_account("c@crash.example", "x")
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    print(f"READY {inbox.id}", flush=True)

    async def task(t: int) -> None:
        n = 0
        while True:
            msg = message(t, n)
            prefix = f"X-Task: {t}\r\n".encode()
            res = await store.deliver(msg, [LocalDelivery(account.id, prefix=prefix)])
            _acct, mailbox_id, uid = res.delivered[0]
            sys.stdout.write(f"{mailbox_id} {uid} {msg.sha256} {len(prefix)}\n")
            sys.stdout.flush()
            n += 1

    await asyncio.gather(*(task(t) for t in range(8)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
