"""Rate limits: failed logins per client IP and per account, and hourly counters.

Failed logins (``[auth] max_failures``, ``failure_window``, ``lockout``): once a client IP
or an account has ``max_failures`` failures within ``failure_window`` seconds, further
attempts for it are refused for ``lockout`` seconds without checking the password. This
caps online guessing (RFC 4954 §9 and RFC 9051 §11.1 leave the policy to the server). A
success resets the account's counter but not the IP's: otherwise an attacker holding one
valid account could log in between guesses at others and never be slowed.

IPv6 clients are counted per /64, since one host commonly controls a whole /64; IPv4-mapped
addresses count as their IPv4 address.

The limiter sits behind :class:`FailureLimiter` so that a PostgreSQL-backed one shared by
several nodes can replace :class:`MemoryFailureLimiter`; its methods are ``async`` for that
reason, although the in-memory one never waits. Memory is bounded: each table keeps at most
``max_entries`` keys (least recently touched evicted first, which are the expired ones in
practice) and each key at most ``max_failures`` timestamps. Every call is O(1).

:class:`HourlyCounter` counts anything per key per sliding hour (SMTP submission:
messages and recipients per account, ``[smtp] hourly_messages`` / ``hourly_recipients``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from correo.config import AuthSettings, Settings

_V = TypeVar("_V")

DEFAULT_MAX_ENTRIES = 100_000
"""Keys kept per table (IPs, accounts, counters): a few MB at most."""


class FailureLimiter(Protocol):
    """Decides whether a login attempt may proceed; told how attempts ended."""

    async def check(self, ip: str, username: str) -> float | None:
        """Seconds the client must wait before trying again, or None if allowed."""

    async def record_failure(self, ip: str, username: str) -> None:
        """Count one failed attempt against the IP and the (normalized) username."""

    async def record_success(self, ip: str, username: str) -> None:
        """Reset the username's failures (the IP's are kept)."""


def ip_key(ip: str) -> str:
    """The unit an IP is counted in: IPv4 as is, IPv6 per /64, IPv4-mapped as IPv4.
    Anything unparsable (a UNIX socket path, "") is counted as given."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


MAX_KEY = 320
"""Longer usernames (never valid: RFC 5321 §4.5.3.1) are counted by digest, so a client
sending 64 KB names cannot make each table entry 64 KB."""


def user_key(username: str) -> str:
    """The key a username is counted under (itself, or a digest when over-long)."""
    if len(username) <= MAX_KEY:
        return username
    raw = username.encode("utf-8", "surrogatepass")
    return "#" + hashlib.blake2b(raw, digest_size=16).hexdigest()


class _SlidingFailures:
    """Per key: the times of the last ``max_failures`` failures and a lockout end.

    The window is exact (no bucket approximation): the key is locked when the oldest of
    the last ``max_failures`` failures is at most ``window`` seconds old.
    """

    def __init__(self, max_failures: int, window: float, lockout: float, max_entries: int) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_entries = max(1, max_entries)
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked: OrderedDict[str, float] = OrderedDict()

    def wait(self, key: str, now: float) -> float | None:
        until = self._locked.get(key)
        if until is None:
            return None
        if until <= now:
            del self._locked[key]
            return None
        return until - now

    def fail(self, key: str, now: float) -> None:
        if self.max_failures <= 0:  # 0 disables the limit
            return
        times = self._failures.get(key)
        if times is None:
            times = deque(maxlen=self.max_failures)
            self._failures[key] = times
            _bound(self._failures, self.max_entries)
        else:
            self._failures.move_to_end(key)
        times.append(now)
        if len(times) == self.max_failures and now - times[0] <= self.window:
            self._locked[key] = now + self.lockout
            self._locked.move_to_end(key)
            _bound(self._locked, self.max_entries)
            times.clear()  # after the lockout, a fresh allowance

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)
        self._locked.pop(key, None)

    def __len__(self) -> int:
        return len(self._failures) + len(self._locked)


def _bound(table: OrderedDict[str, _V], limit: int) -> None:
    """Evict the least recently touched keys beyond ``limit``."""
    while len(table) > limit:
        table.popitem(last=False)


class MemoryFailureLimiter:
    """:class:`FailureLimiter` for one node, in memory. ``clock`` is injectable for tests
    (defaults to :func:`time.monotonic`)."""

    def __init__(
        self,
        max_failures: int = 5,
        failure_window: float = 600.0,
        lockout: float = 300.0,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ips = _SlidingFailures(max_failures, failure_window, lockout, max_entries)
        self._users = _SlidingFailures(max_failures, failure_window, lockout, max_entries)
        self._clock = clock

    @classmethod
    def from_settings(
        cls,
        settings: Settings | AuthSettings,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> MemoryFailureLimiter:
        """``[auth] max_failures`` (0 disables), ``failure_window``, ``lockout``."""
        s = settings.auth if isinstance(settings, Settings) else settings
        return cls(
            s.max_failures, s.failure_window, s.lockout, max_entries=max_entries, clock=clock
        )

    def check_now(self, ip: str, username: str) -> float | None:
        """Synchronous :meth:`check` (the in-memory limiter never waits)."""
        now = self._clock()
        waits = [
            w
            for w in (self._ips.wait(ip_key(ip), now), self._users.wait(user_key(username), now))
            if w is not None
        ]
        return max(waits) if waits else None

    async def check(self, ip: str, username: str) -> float | None:
        return self.check_now(ip, username)

    async def record_failure(self, ip: str, username: str) -> None:
        now = self._clock()
        self._ips.fail(ip_key(ip), now)
        self._users.fail(user_key(username), now)

    async def record_success(self, ip: str, username: str) -> None:
        self._users.reset(user_key(username))

    @property
    def entries(self) -> int:
        """Keys held across tables (for tests and metrics)."""
        return len(self._ips) + len(self._users)


# --------------------------------------------------------------------------- hourly


@dataclass(slots=True)
class _Buckets:
    start: float
    """Start of the current window."""
    current: int
    previous: int


class HourlyCounter:
    """Counts per key over a sliding window (one hour unless told otherwise).

    Sliding-window counter: the current and the previous fixed window are kept, and the
    previous one is weighted by how much of it still overlaps the sliding window. O(1)
    time and two integers per key; the estimate assumes the previous window's events
    were spread evenly, which errs by at most that window's count on bursts at its end.

    In memory, per node: several nodes each allow ``limit`` (documented limitation until
    a shared implementation exists).
    """

    def __init__(
        self,
        window: float = 3600.0,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_entries = max(1, max_entries)
        self._clock = clock
        self._table: OrderedDict[str, _Buckets] = OrderedDict()

    def count(self, key: str) -> float:
        """Estimated events for ``key`` in the last window."""
        b = self._table.get(key)
        if b is None:
            return 0.0
        now = self._clock()
        return self._estimate(self._roll(b, now), now)

    def try_consume(self, key: str, n: int, limit: int) -> bool:
        """Add ``n`` events for ``key`` if that keeps the window's count within
        ``limit``, and say whether it did. ``limit`` 0 (or less) means unlimited, as
        quotas do; ``n`` larger than a positive ``limit`` is always refused."""
        if limit <= 0:
            return True
        now = self._clock()
        b = self._table.get(key)
        if b is None:
            if n > limit:
                return False
            self._table[key] = _Buckets(now, n, 0)
            _bound(self._table, self.max_entries)
            return True
        self._table.move_to_end(key)
        b = self._roll(b, now)
        if self._estimate(b, now) + n > limit:
            return False
        b.current += n
        return True

    def _roll(self, b: _Buckets, now: float) -> _Buckets:
        elapsed = now - b.start
        if elapsed >= 2 * self.window:
            b.start, b.previous, b.current = now, 0, 0
        elif elapsed >= self.window:
            b.start, b.previous, b.current = b.start + self.window, b.current, 0
        return b

    def _estimate(self, b: _Buckets, now: float) -> float:
        overlap = max(0.0, 1.0 - (now - b.start) / self.window)
        return b.previous * overlap + b.current

    def __len__(self) -> int:
        return len(self._table)
