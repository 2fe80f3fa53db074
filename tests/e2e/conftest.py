"""A real correo server for end-to-end tests.

The server runs in a background thread with its own event loop, on ephemeral loopback
ports, over a real SQLite store in the test's temp dir, with a real self-signed
certificate; tests drive it with blocking real clients (smtplib, poplib, imaplib,
imapclient, curl). ``run(coro)`` executes a coroutine on the server's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from correo import config
from correo.net.tls import make_self_signed
from correo.server import Server
from correo.store.base import Account, DeliveryResult, LocalDelivery

T = TypeVar("T")

CHEAP_ARGON2 = """
[auth]
argon2_time_cost = 1
argon2_memory_cost = 8
argon2_parallelism = 1
"""

SERVICES = ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")


def merge_toml(base: str, extra: str) -> str:
    """Append ``extra``; keys of a section that ``extra`` repeats are folded in place."""
    import tomllib

    data = tomllib.loads(base)
    for section, values in tomllib.loads(extra).items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section].update(values)
        else:
            data[section] = values
    return dump_toml(data)


def dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + " }"
        raise TypeError(v)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{prefix}{k}"
            lines.append(f"\n[{name}]")
            lines.extend(
                f'"{kk}" = {value(vv)}' if "." in kk or "*" in kk else f"{kk} = {value(vv)}"
                for kk, vv in v.items()
            )
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def test_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    make_self_signed("localhost", cert, key)
    return cert, key


class MailServer:
    host = "127.0.0.1"

    def __init__(self, root: Path, cert: tuple[Path, Path], extra_toml: str = "") -> None:
        self.root = root
        self.cafile = cert[0]
        base = (
            'hostname = "mx.example.test"\n'
            f'data_dir = "{root / "data"}"\n'
            "[listen]\n"
            + "".join(f'{s} = ["127.0.0.1:0"]\n' for s in SERVICES)
            + f'[tls]\ncert = "{cert[0]}"\nkey = "{cert[1]}"\n'
            # MX in this process (test_smtp_workers covers "auto" worker processes)
            + "[smtp]\nworkers = 0\n"
            + CHEAP_ARGON2
        )
        text = merge_toml(base, extra_toml) if extra_toml else base
        self.config_path = root / "correo.toml"
        self.config_path.write_text(text)
        self.settings = config.load(self.config_path)
        self.server = Server(self.settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="correo-test", daemon=True)
        self._thread.start()
        self.run(self.server.start())
        assert self.server.runner is not None and self.server.ctx is not None
        self.ctx = self.server.ctx
        self.store = self.ctx.store
        self.ports: dict[str, int] = {
            name: addrs[0].port for name, addrs in self.server.runner.bound.items()
        }
        self.run(self.store.add_domain("example.test"))
        self.alice = self.add_user("alice@example.test", "secret")
        self.bob = self.add_user("bob@example.test", "secret")

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def add_user(self, address: str, password: str = "secret", quota: int = 0) -> Account:
        from correo.auth.passwords import hash_password

        return self.run(
            self.store.add_account(address, hash_password(password, self.settings.auth), quota)
        )

    def deliver(self, rcpts: str | Sequence[str], data: bytes) -> DeliveryResult:
        """Store ``data`` straight into the INBOX of each local recipient."""
        from correo.mail.message import prepare

        names = [rcpts] if isinstance(rcpts, str) else list(rcpts)

        async def go() -> DeliveryResult:
            local = []
            for name in names:
                acct = await self.store.get_account(name)
                assert acct is not None, name
                local.append(LocalDelivery(acct.id))
            return await self.store.deliver(prepare(data), local)

        return self.run(go())

    def client_tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cafile))
        ctx.check_hostname = False
        return ctx

    def stop(self) -> None:
        try:
            self.run(self.server.stop(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


@pytest.fixture
def make_mailserver(
    tmp_path: Path, test_cert: tuple[Path, Path]
) -> Iterator[Callable[[str], MailServer]]:
    servers: list[MailServer] = []

    def make(extra_toml: str = "") -> MailServer:
        root = tmp_path / f"server{len(servers)}"
        root.mkdir()
        ms = MailServer(root, test_cert, extra_toml)
        servers.append(ms)
        return ms

    yield make
    for ms in servers:
        ms.stop()


@pytest.fixture
def mailserver(make_mailserver: Callable[[str], MailServer]) -> MailServer:
    return make_mailserver("")
