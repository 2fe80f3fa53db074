"""Failed-login limits shared by nodes through PostgreSQL (``correo.auth.limits_pg``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pg_backend import make_pg_store

from correo.auth.limits import FailureLimiter
from correo.auth.limits_pg import PostgresFailureLimiter
from correo.auth.service import Authenticator
from correo.config import AuthSettings
from correo.store.postgres import PostgresStore

pytestmark = pytest.mark.postgres


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def two_nodes(
    postgres_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    a = await make_pg_store(postgres_dsn, tmp_path)
    b = await make_pg_store(postgres_dsn, tmp_path, url=a.url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def limiters(
    nodes: tuple[PostgresStore, PostgresStore], clock: FakeClock | None
) -> tuple[PostgresFailureLimiter, PostgresFailureLimiter]:
    a, b = nodes
    kw = {"max_failures": 3, "failure_window": 60.0, "lockout": 300.0, "clock": clock}
    return PostgresFailureLimiter(a.pool, **kw), PostgresFailureLimiter(b.pool, **kw)  # type: ignore[arg-type]


async def test_failures_on_two_nodes_add_up(
    two_nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    clock = FakeClock()
    la, lb = limiters(two_nodes, clock)
    as_protocol: FailureLimiter = la
    await as_protocol.record_failure("192.0.2.1", "a@example.test")
    await lb.record_failure("192.0.2.2", "a@example.test")
    assert await la.check("192.0.2.9", "a@example.test") is None
    await la.record_failure("192.0.2.3", "a@example.test")
    # the account is locked on both nodes, from any IP
    assert await lb.check("198.51.100.1", "a@example.test") == pytest.approx(300.0)
    assert await la.check("198.51.100.1", "a@example.test") == pytest.approx(300.0)
    assert await la.check("198.51.100.1", "b@example.test") is None
    clock.now += 301
    assert await lb.check("198.51.100.1", "a@example.test") is None


async def test_ip_per_64_and_window_and_success(
    two_nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    clock = FakeClock()
    la, lb = limiters(two_nodes, clock)
    await la.record_failure("2001:db8::1", "u1@example.test")
    clock.now += 70  # outside the window: the first failure no longer counts
    await lb.record_failure("2001:db8::2", "u2@example.test")
    await la.record_failure("2001:db8::3", "u3@example.test")
    assert await la.check("2001:db8::ffff", "x@example.test") is None
    await lb.record_failure("2001:db8::4", "u4@example.test")  # same /64: 3 in 60 s
    assert await la.check("2001:db8::ffff", "x@example.test") == pytest.approx(300.0)
    assert await la.check("2001:db8:1::1", "x@example.test") is None
    # a success resets the account's count but not the IP's
    await la.record_failure("192.0.2.7", "c@example.test")
    await la.record_failure("192.0.2.8", "c@example.test")
    await lb.record_success("192.0.2.8", "c@example.test")
    await la.record_failure("192.0.2.9", "c@example.test")
    assert await la.check("203.0.113.1", "c@example.test") is None
    clock.now += 10_000
    assert await la.cleanup() >= 1
    assert await la.check("2001:db8::ffff", "x@example.test") is None


async def test_database_clock_and_authenticator(
    two_nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two_nodes
    settings = AuthSettings(
        max_failures=2,
        failure_window=60.0,
        lockout=30.0,
        argon2_time_cost=1,
        argon2_memory_cost=1024,
        argon2_parallelism=1,
    )
    await a.add_domain("example.test")
    await a.add_account("alice@example.test", "$argon2id$not-a-real-hash")
    auth_a = Authenticator(settings, limiter=PostgresFailureLimiter.from_settings(a.pool, settings))
    auth_b = Authenticator(settings, limiter=PostgresFailureLimiter.from_settings(b.pool, settings))
    try:
        r1 = await auth_a.authenticate(a, "alice@example.test", "guess1", "192.0.2.1")
        r2 = await auth_b.authenticate(b, "alice@example.test", "guess2", "192.0.2.2")
        r3 = await auth_a.authenticate(a, "alice@example.test", "guess3", "192.0.2.3")
    finally:
        auth_a.close()
        auth_b.close()
    assert [r.reason.value for r in (r1, r2, r3)] == [
        "bad-credentials",
        "bad-credentials",
        "rate-limited",
    ]
    assert r3.retry_after is not None and 0 < r3.retry_after <= 30
