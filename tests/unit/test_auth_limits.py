"""Failed-login limits per IP and account, and hourly counters (correo.auth.limits)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from correo.auth.limits import FailureLimiter, HourlyCounter, MemoryFailureLimiter, ip_key
from correo.config import AuthSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: FakeClock, **kw: object) -> MemoryFailureLimiter:
    args: dict[str, object] = {"max_failures": 3, "failure_window": 60.0, "lockout": 300.0}
    args.update(kw)
    return MemoryFailureLimiter(clock=clock, **args)  # type: ignore[arg-type]


def test_is_a_failure_limiter() -> None:
    lim: FailureLimiter = MemoryFailureLimiter()
    assert lim is not None


async def test_locks_account_after_max_failures_in_window() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    for _ in range(2):
        await lim.record_failure("192.0.2.1", "a@example.test")
        assert await lim.check("192.0.2.1", "a@example.test") is None
    await lim.record_failure("192.0.2.1", "a@example.test")
    assert await lim.check("192.0.2.1", "a@example.test") == pytest.approx(300.0)
    # the account is locked from another IP too...
    assert await lim.check("198.51.100.7", "a@example.test") == pytest.approx(300.0)
    # ...and the IP for another account
    assert await lim.check("192.0.2.1", "b@example.test") == pytest.approx(300.0)
    clock.now += 100
    assert await lim.check("192.0.2.1", "a@example.test") == pytest.approx(200.0)
    clock.now += 200
    assert await lim.check("192.0.2.1", "a@example.test") is None


async def test_failures_outside_window_do_not_count() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    for _ in range(10):
        await lim.record_failure("192.0.2.1", "a@example.test")
        await lim.record_failure("192.0.2.1", "a@example.test")
        clock.now += 61  # two failures per window of 60 s: never three within it
        assert await lim.check("192.0.2.1", "a@example.test") is None


async def test_sliding_not_fixed_window() -> None:
    # 3 failures at t=0, 50 and 100: the last three span 100 s > 60 s, no lock;
    # one more at 105 makes 50..105 = 55 s: locked.
    clock = FakeClock()
    lim = limiter(clock)
    for dt in (0, 50, 50):
        clock.now += dt
        await lim.record_failure("192.0.2.1", "a@example.test")
    assert await lim.check("192.0.2.1", "a@example.test") is None
    clock.now += 5
    await lim.record_failure("192.0.2.1", "a@example.test")
    assert await lim.check("192.0.2.1", "a@example.test") is not None


async def test_success_resets_account_but_not_ip() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    await lim.record_failure("192.0.2.1", "a@example.test")
    await lim.record_failure("192.0.2.1", "a@example.test")
    await lim.record_success("192.0.2.1", "a@example.test")
    await lim.record_failure("198.51.100.1", "a@example.test")
    await lim.record_failure("198.51.100.1", "a@example.test")
    assert await lim.check("198.51.100.2", "a@example.test") is None  # account: 2 since reset
    # the IP kept its two failures: one more (any account) locks it
    await lim.record_failure("192.0.2.1", "c@example.test")
    assert await lim.check("192.0.2.1", "d@example.test") is not None


async def test_ip_spraying_many_accounts_is_locked() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    for i in range(3):
        await lim.record_failure("192.0.2.9", f"user{i}@example.test")
    assert await lim.check("192.0.2.9", "other@example.test") is not None
    assert await lim.check("192.0.2.10", "user0@example.test") is None


async def test_after_lockout_a_fresh_allowance() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    for _ in range(3):
        await lim.record_failure("192.0.2.1", "a@example.test")
    clock.now += 301
    assert await lim.check("192.0.2.1", "a@example.test") is None
    await lim.record_failure("192.0.2.1", "a@example.test")
    assert await lim.check("192.0.2.1", "a@example.test") is None


async def test_zero_max_failures_disables() -> None:
    clock = FakeClock()
    lim = limiter(clock, max_failures=0)
    for _ in range(100):
        await lim.record_failure("192.0.2.1", "a@example.test")
    assert await lim.check("192.0.2.1", "a@example.test") is None
    assert lim.entries == 0


async def test_memory_is_bounded() -> None:
    clock = FakeClock()
    lim = limiter(clock, max_entries=50)
    for i in range(10_000):
        await lim.record_failure(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"u{i}@x.test")
    assert lim.entries <= 4 * 50


async def test_ipv6_counted_per_64() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    for i in range(3):
        await lim.record_failure(f"2001:db8:1:2::{i + 1}", f"u{i}@example.test")
    assert await lim.check("2001:db8:1:2:ffff::1", "z@example.test") is not None
    assert await lim.check("2001:db8:1:3::1", "z@example.test") is None


def test_ip_key() -> None:
    assert ip_key("192.0.2.1") == "192.0.2.1"
    assert ip_key("2001:db8::1") == "2001:db8::/64"
    assert ip_key("2001:DB8:0:0:1::1") == "2001:db8::/64"
    assert ip_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert ip_key("fe80::1%eth0") == "fe80::/64"
    assert ip_key("") == ""
    assert ip_key("/run/correo.sock") == "/run/correo.sock"


def test_from_settings() -> None:
    clock = FakeClock()
    s = AuthSettings(max_failures=2, failure_window=10, lockout=20)
    lim = MemoryFailureLimiter.from_settings(s, clock=clock)
    assert lim.check_now("192.0.2.1", "a@example.test") is None
    for _ in range(2):
        lim._users.fail("a@example.test", clock.now)
    assert lim.check_now("192.0.2.1", "a@example.test") == pytest.approx(20.0)


# ------------------------------------------------------------------ hourly counter


def test_hourly_counter_limits_and_slides() -> None:
    clock = FakeClock()
    c = HourlyCounter(clock=clock)
    assert c.try_consume("a", 3, 5)
    assert c.try_consume("a", 2, 5)
    assert not c.try_consume("a", 1, 5)
    assert c.try_consume("b", 5, 5)  # keys are independent
    clock.now += 3600 * 1.5  # half of the previous hour still weighs: 5 * 0.5 = 2.5
    assert c.count("a") == pytest.approx(2.5)
    assert c.try_consume("a", 2, 5)
    assert not c.try_consume("a", 1, 5)
    clock.now += 3600 * 2
    assert c.count("a") == 0
    assert c.try_consume("a", 5, 5)


def test_hourly_counter_refusal_consumes_nothing() -> None:
    clock = FakeClock()
    c = HourlyCounter(clock=clock)
    assert c.try_consume("a", 4, 5)
    assert not c.try_consume("a", 2, 5)
    assert c.try_consume("a", 1, 5)


def test_hourly_counter_n_over_limit_and_unlimited() -> None:
    c = HourlyCounter(clock=FakeClock())
    assert not c.try_consume("a", 6, 5)
    assert len(c) == 0
    assert c.try_consume("a", 10**9, 0)  # 0 = unlimited
    assert len(c) == 0


def test_hourly_counter_bounded() -> None:
    c = HourlyCounter(clock=FakeClock(), max_entries=10)
    for i in range(1000):
        c.try_consume(f"k{i}", 1, 5)
    assert len(c) == 10


@given(st.lists(st.tuples(st.floats(0, 7200), st.integers(1, 10)), max_size=50))
def test_hourly_counter_never_exceeds_limit_within_fixed_window(
    events: list[tuple[float, int]],
) -> None:
    clock = FakeClock()
    c = HourlyCounter(window=3600, clock=clock)
    accepted: list[tuple[float, int]] = []
    for dt, n in events:
        clock.now += dt
        if c.try_consume("k", n, 20):
            accepted.append((clock.now, n))
    # Within any window-length span that starts at an accepted event, the sliding
    # estimate never lets more than 2x the limit through (the estimate's worst case).
    for t0, _ in accepted:
        assert sum(n for t, n in accepted if t0 <= t < t0 + 3600) <= 40


async def test_long_usernames_are_counted_by_digest() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    huge = "x" * 65536
    for i in range(3):
        await lim.record_failure(f"192.0.2.{i}", huge)
    assert await lim.check("198.51.100.1", huge) is not None
    assert all(len(k) <= 320 for k in lim._users._failures)
    assert all(len(k) <= 320 for k in lim._users._locked)
    assert await lim.check("198.51.100.1", huge + "y") is None
