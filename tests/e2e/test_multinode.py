"""Two real ``correo serve`` processes sharing one PostgreSQL database (issue 7).

Driven as a user would: mail submitted over SMTP to node A is read over IMAP from node
B; an IMAP IDLE on B sees A's delivery within a second, and flag changes and expunges
made through A; POP3's maildrop lock holds across nodes; and when node A is killed with
SIGKILL in the middle of relaying a message, node B relays it once A's lease runs out
(while A lives and renews its lease, B leaves the entry alone).
"""

from __future__ import annotations

import asyncio
import os
import poplib
import secrets
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from imapclient import IMAPClient
from pgcluster import require_postgres
from test_queue_relay import MESSAGE, Script, Sink, wait_for

try:
    import asyncpg
except ImportError:  # the optional "postgresql" extra is not installed
    if require_postgres():
        raise
    pytest.skip("asyncpg not installed (pip install 'correo[postgresql]')", allow_module_level=True)

from correo.auth.passwords import hash_password
from correo.config import AuthSettings
from correo.mail.message import prepare
from correo.store.base import QueueRecipient, QueueRequest
from correo.store.postgres import PostgresStore

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HOST = "127.0.0.1"
CHEAP = AuthSettings(argon2_time_cost=1, argon2_memory_cost=8, argon2_parallelism=1)


@dataclass
class Node:
    proc: subprocess.Popen[str]
    ports: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def write_config(root: Path, url: str, relay_port: int | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = (
        'hostname = "mx.example.test"\n'
        f'data_dir = "{root / "data"}"\n'
        "[listen]\n"
        'smtp = ["127.0.0.1:0"]\n'
        'imap = ["127.0.0.1:0"]\n'
        'pop3 = ["127.0.0.1:0"]\n'
        "[storage]\n"
        'backend = "postgresql"\n'
        f'url = "{url}"\n'
        "pool_size = 4\n"
        "[queue]\n"
        'lease = "2s"\n'
        "[smtp]\n"
        "workers = 2\n"  # the MX port of each node served by two worker processes
        "[auth]\n"
        "argon2_time_cost = 1\n"
        "argon2_memory_cost = 8\n"
        "argon2_parallelism = 1\n"
    )
    if relay_port is not None:
        text += f'[relay.routes]\n"remote.test" = "127.0.0.1:{relay_port}"\n'
    cfg = root / "correo.toml"
    cfg.write_text(text)
    return cfg


def serve(cfg: Path) -> Node:
    """Start ``correo serve`` and read the ports it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "correo", "-c", str(cfg), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)},
    )
    node = Node(proc)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("smtp", "imap", "pop3") and ":" in parts[1]:
            node.ports[parts[0]] = int(parts[1].rsplit(":", 1)[1])
        if "Ctrl-C stops." in line:
            return node
        if not line and proc.poll() is not None:
            break
    node.stop()
    raise AssertionError("correo serve did not start:\n" + "".join(seen))


async def fresh_database(postgres_dsn: str) -> str:
    """An empty database of its own for the test (as ``tests/store/pg_backend.py``)."""
    name = "mn_" + secrets.token_hex(6)
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return urlunsplit(urlsplit(postgres_dsn)._replace(path="/" + name))


@pytest.fixture
def database(postgres_dsn: str) -> str:
    url = asyncio.run(fresh_database(postgres_dsn))

    async def setup() -> None:
        store = PostgresStore(url)
        await store.open()
        try:
            await store.add_domain("example.test")
            for user in ("alice", "bob"):
                await store.add_account(f"{user}@example.test", hash_password("secret", CHEAP))
        finally:
            await store.close()

    asyncio.run(setup())
    return url


@pytest.fixture
def two_nodes(database: str, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    a = serve(write_config(tmp_path / "a", database))
    try:
        b = serve(write_config(tmp_path / "b", database))
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def idle_until(client: IMAPClient, want: bytes, timeout: float) -> list[object]:
    """IDLE responses until one contains ``want`` (e.g. b"EXISTS")."""
    deadline = time.monotonic() + timeout
    got: list[object] = []
    while time.monotonic() < deadline:
        responses = client.idle_check(timeout=max(0.05, deadline - time.monotonic()))
        got.extend(responses)
        if any(want in repr(r).encode() for r in responses):
            return got
    raise AssertionError(f"no {want!r} within {timeout}s: {got}")


def test_mail_through_a_is_read_and_idled_on_b(two_nodes: tuple[Node, Node]) -> None:
    a, b = two_nodes
    body = b"From: x@remote.test\r\nTo: alice@example.test\r\nSubject: across\r\n\r\nhi B\r\n"
    with (
        IMAPClient(HOST, port=b.ports["imap"], ssl=False) as imap_b,
        IMAPClient(HOST, port=a.ports["imap"], ssl=False) as imap_a,
    ):
        imap_b.login("alice@example.test", "secret")
        imap_b.select_folder("INBOX")
        imap_b.idle()
        with smtplib.SMTP(HOST, a.ports["smtp"]) as smtp:
            smtp.sendmail("x@remote.test", ["alice@example.test"], body)
            accepted = time.monotonic()
        idle_until(imap_b, b"EXISTS", timeout=1.0)  # within one second of the 250
        assert time.monotonic() - accepted < 1.0
        imap_b.idle_done()
        uids = imap_b.search("ALL")  # imapclient speaks UIDs
        assert len(uids) == 1
        uid = uids[0]
        fetched = imap_b.fetch([uid], ["RFC822"])
        assert fetched[uid][b"RFC822"].endswith(b"Subject: across\r\n\r\nhi B\r\n")

        imap_b.idle()
        imap_a.login("alice@example.test", "secret")
        imap_a.select_folder("INBOX")
        imap_a.add_flags([uid], [b"\\Flagged"], silent=True)  # FETCH on B
        flagged = idle_until(imap_b, b"Flagged", timeout=1.0)
        assert flagged
        imap_a.add_flags([uid], [b"\\Deleted"], silent=True)
        imap_a.expunge()  # EXPUNGE on B
        idle_until(imap_b, b"EXPUNGE", timeout=1.0)
        imap_b.idle_done()


def test_idle_on_a_sees_a_delivery_by_a_worker_of_a(
    two_nodes: tuple[Node, Node], database: str
) -> None:
    """On PostgreSQL a worker's commit reaches its own main process by NOTIFY, like any
    other node's; workers open no LISTEN connection of their own."""
    a, _b = two_nodes
    body = b"From: x@remote.test\r\nTo: bob@example.test\r\nSubject: same\r\n\r\nhi A\r\n"
    with IMAPClient(HOST, port=a.ports["imap"], ssl=False) as imap_a:
        imap_a.login("bob@example.test", "secret")
        imap_a.select_folder("INBOX")
        imap_a.idle()
        with smtplib.SMTP(HOST, a.ports["smtp"]) as smtp:
            smtp.sendmail("x@remote.test", ["bob@example.test"], body)
        idle_until(imap_a, b"EXISTS", timeout=2.0)
        imap_a.idle_done()

    async def listeners() -> int:
        conn = await asyncpg.connect(database)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                    " AND datname = current_database()",
                    "correo-listen",
                )
            )
        finally:
            await conn.close()

    assert asyncio.run(listeners()) == 2  # one per node, none per worker


def test_pop3_maildrop_lock_across_nodes(two_nodes: tuple[Node, Node]) -> None:
    a, b = two_nodes
    pop_a = poplib.POP3(HOST, a.ports["pop3"])
    pop_a.user("bob@example.test")
    pop_a.pass_("secret")
    pop_b = poplib.POP3(HOST, b.ports["pop3"])
    pop_b.user("bob@example.test")
    with pytest.raises(poplib.error_proto, match="IN-USE"):
        pop_b.pass_("secret")
    pop_a.quit()  # releases the lock
    pop_b = poplib.POP3(HOST, b.ports["pop3"])
    pop_b.user("bob@example.test")
    pop_b.pass_("secret")
    pop_b.quit()


def test_killed_node_queue_entry_is_delivered_by_the_other(database: str, tmp_path: Path) -> None:
    holding = Sink(script=Script(data=["hold"]))  # takes DATA, never answers
    good = Sink()
    nodes: list[Node] = []
    try:

        async def enqueue() -> None:
            store = PostgresStore(database)
            await store.open()
            try:
                req = QueueRequest(
                    sender="alice@example.test", recipients=(QueueRecipient("bob@remote.test"),)
                )
                await store.deliver(prepare(MESSAGE), [], req)
            finally:
                await store.close()

        asyncio.run(enqueue())
        a = serve(write_config(tmp_path / "a", database, holding.port))
        nodes.append(a)
        wait_for(lambda: holding.handler.attempts == 1, timeout=20)  # A is mid-delivery
        b = serve(write_config(tmp_path / "b", database, good.port))
        nodes.append(b)
        time.sleep(4)  # two lease periods: A renews, so B must keep its hands off
        assert good.received == []
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        killed = time.monotonic()
        received = wait_for(lambda: good.received, timeout=30)
        assert received[0].rcpts == ["bob@remote.test"]
        assert b"Hello Bob." in received[0].data
        assert time.monotonic() - killed < 60  # "within a minute by default"

        async def queue_left() -> int:
            store = PostgresStore(database)
            await store.open()
            try:
                async with store.pool.acquire() as conn:
                    return int(await conn.fetchval("SELECT count(*) FROM queue_messages"))
            finally:
                await store.close()

        wait_for(lambda: asyncio.run(queue_left()) == 0, timeout=10)
        assert len(good.received) == 1
    finally:
        for node in nodes:
            node.stop()
        holding.close()
        good.close()
