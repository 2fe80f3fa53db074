"""Failed-login limits shared by every node, in PostgreSQL (``auth_failures`` table).

The same policy as :class:`correo.auth.limits.MemoryFailureLimiter` (read its module
docstring): once a client IP (IPv6 per /64) or an account has ``max_failures`` failures
within ``failure_window`` seconds, further attempts are refused for ``lockout`` seconds;
a success resets the account's count, not the IP's. Held in the database, a guesser
spreading attempts over several nodes behind a load balancer gets no more tries than
against one node (RFC 4954 §9, RFC 9051 §11.1 leave the policy to the server).

Each row keeps at most ``max_failures`` failure times (an array trimmed on every
insert) and the end of a lockout. Times come from the database's clock, one clock for
every node (``clock`` overrides it, for tests). Rows idle for longer than the window
and not locked are deleted now and then, so the table stays bounded by recent activity.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from correo.auth.limits import ip_key, user_key
from correo.config import AuthSettings, Settings

_NOW = "COALESCE($3::float8, extract(epoch FROM clock_timestamp()))"
CLEANUP_EVERY = 200
"""Failures recorded between two sweeps of idle rows (per node)."""


class PostgresFailureLimiter:
    """:class:`correo.auth.limits.FailureLimiter` over a PostgreSQL pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        max_failures: int = 5,
        failure_window: float = 600.0,
        lockout: float = 300.0,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._pool = pool
        self.max_failures = max_failures
        self.window = failure_window
        self.lockout = lockout
        self._clock = clock
        self._since_cleanup = 0

    @classmethod
    def from_settings(
        cls,
        pool: asyncpg.Pool,
        settings: Settings | AuthSettings,
        *,
        clock: Callable[[], float] | None = None,
    ) -> PostgresFailureLimiter:
        """``[auth] max_failures`` (0 disables), ``failure_window``, ``lockout``."""
        s = settings.auth if isinstance(settings, Settings) else settings
        return cls(pool, s.max_failures, s.failure_window, s.lockout, clock=clock)

    def _now(self) -> float | None:
        return self._clock() if self._clock is not None else None

    async def check(self, ip: str, username: str) -> float | None:
        """Seconds the client must wait before trying again, or None if allowed."""
        wait = await self._pool.fetchval(
            f"SELECT max(locked_until - {_NOW}) FROM auth_failures"
            f" WHERE ((kind = 'ip' AND key = $1) OR (kind = 'user' AND key = $2))"
            f" AND locked_until > {_NOW}",
            ip_key(ip),
            user_key(username),
            self._now(),
        )
        return None if wait is None else float(wait)

    async def record_failure(self, ip: str, username: str) -> None:
        """Count one failed attempt against the IP and the username."""
        if self.max_failures <= 0:
            return
        now = self._now()
        async with self._pool.acquire() as conn, conn.transaction():
            for kind, key in (("ip", ip_key(ip)), ("user", user_key(username))):
                await self._fail(conn, kind, key, now)
        self._since_cleanup += 1
        if self._since_cleanup >= CLEANUP_EVERY:
            self._since_cleanup = 0
            await self.cleanup()

    async def _fail(self, conn: asyncpg.Connection, kind: str, key: str, now: float | None) -> None:
        row = await conn.fetchrow(
            "INSERT INTO auth_failures AS f (kind, key, times, locked_until, touched)"
            f" VALUES ($1, $2, ARRAY[{_NOW}], 0, {_NOW})"
            " ON CONFLICT (kind, key) DO UPDATE SET"
            " times = (f.times || EXCLUDED.touched)"
            "[greatest(1, cardinality(f.times) + 2 - $4):],"
            " touched = EXCLUDED.touched"
            " RETURNING times, touched",
            kind,
            key,
            now,
            self.max_failures,
        )
        times: list[float] = list(row["times"])
        t = float(row["touched"])
        if len(times) >= self.max_failures and t - times[0] <= self.window:
            await conn.execute(
                "UPDATE auth_failures SET locked_until = $3, times = '{}'"
                " WHERE kind = $1 AND key = $2",
                kind,
                key,
                t + self.lockout,
            )

    async def record_success(self, ip: str, username: str) -> None:
        """Reset the username's failures (the IP's are kept)."""
        await self._pool.execute(
            "DELETE FROM auth_failures WHERE kind = 'user' AND key = $1", user_key(username)
        )

    async def cleanup(self) -> int:
        """Delete rows with no lockout running and no failure within the window."""
        status = await self._pool.execute(
            f"DELETE FROM auth_failures WHERE locked_until <= {_NOW.replace('$3', '$1')}"
            f" AND touched < {_NOW.replace('$3', '$1')} - $2",
            self._now(),
            self.window,
        )
        tail = str(status).rpartition(" ")[2]
        return int(tail) if tail.isdigit() else 0
