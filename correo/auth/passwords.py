"""Password hashes: argon2id (RFC 9106) and a verifier that keeps the event loop free.

Hashes are PHC strings (``$argon2id$v=19$m=65536,t=3,p=4$salt$hash``) made by
``argon2-cffi``; the parameters come from ``[auth]`` (defaults: RFC 9106 §4, second
recommended option: 64 MiB, t=3, p=4). A hash carries its own parameters, so raising them
later only makes :func:`needs_rehash` true for older hashes; they still verify.

:class:`PasswordVerifier` is what the protocols use (through
``correo.auth.service.Authenticator``):

* argon2 is deliberately slow (tens of milliseconds, 64 MiB), so verification runs in a
  bounded :class:`~concurrent.futures.ThreadPoolExecutor` (``auth.workers`` threads). The
  bound is also the memory bound: at most ``workers * memory_cost`` KiB in use at once.
* Verified credentials are cached for ``auth.cache_ttl`` seconds (like Dovecot's
  ``auth_cache``) so a client that reconnects every minute does not pay argon2 each time.
  The key is HMAC-SHA256 under a per-process random key of ``address NUL password NUL
  hash``: the plaintext password is never kept, and a changed hash misses the cache. Only
  successes are cached, so the cache cannot tell an unknown user from a wrong password.
* :meth:`PasswordVerifier.verify_dummy` verifies a fixed hash made at start with the same
  parameters, so an unknown user costs the same work as a wrong password.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from correo.config import AuthSettings, Settings

DEFAULT_CACHE_SIZE = 10_000
"""Verified credentials kept at most (LRU beyond that); ~100 bytes each."""


def auth_settings(settings: Settings | AuthSettings) -> AuthSettings:
    """Accept either the whole :class:`Settings` or its ``[auth]`` section."""
    return settings.auth if isinstance(settings, Settings) else settings


def make_hasher(settings: Settings | AuthSettings) -> PasswordHasher:
    """An argon2id hasher with the configured cost (RFC 9106 §3.1 parameters)."""
    s = auth_settings(settings)
    return PasswordHasher(
        time_cost=s.argon2_time_cost,
        memory_cost=s.argon2_memory_cost,
        parallelism=s.argon2_parallelism,
        type=Type.ID,
    )


def hash_password(password: str, settings: Settings | AuthSettings) -> str:
    """A new argon2id PHC string for ``password`` (random 16-byte salt). Slow: call it
    from the CLI or through :meth:`PasswordVerifier.hash` in the server."""
    return make_hasher(settings).hash(_octets(password))


def verify(password_hash: str, password: str) -> bool:
    """True if ``password`` matches ``password_hash``. Never raises: a malformed or
    non-argon2 hash (for example a ``!`` written to lock an account) is simply False."""
    try:
        return _VERIFIER.verify(password_hash, _octets(password))
    except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
        return False


def _octets(password: str) -> bytes:
    """The password's octets: UTF-8, and bytes a protocol layer could not decode (kept as
    ``surrogateescape`` code points) go back to what the client sent."""
    return password.encode("utf-8", "surrogateescape")


def needs_rehash(password_hash: str, settings: Settings | AuthSettings) -> bool:
    """True if the hash was made with other parameters than the configured ones (or is
    not an argon2id hash at all): rehash it after the next successful login."""
    try:
        return make_hasher(settings).check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True


def is_valid_hash(password_hash: str) -> bool:
    """Whether ``password_hash`` looks like an argon2 PHC string we can verify."""
    return password_hash.startswith(("$argon2id$", "$argon2i$", "$argon2d$"))


_VERIFIER = PasswordHasher()
"""Verification reads the parameters from the hash itself; this instance's own are unused."""


class PasswordVerifier:
    """Asynchronous, cached, constant-work password verification (see module docstring).

    ``executor`` may be shared with other CPU work; when not given, one with
    ``auth.workers`` threads is created and shut down by :meth:`close`.
    """

    def __init__(
        self,
        settings: Settings | AuthSettings,
        *,
        executor: ThreadPoolExecutor | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = auth_settings(settings)
        self._hasher = make_hasher(self.settings)
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=max(1, self.settings.workers), thread_name_prefix="correo-argon2"
        )
        self._cache_key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._cache_size = max(0, cache_size)
        self._clock = clock
        # Same parameters as real hashes, so verifying it costs the same (RFC 9106 §4).
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(24))

    # ------------------------------------------------------------------ verification

    async def verify(self, password_hash: str, password: str, *, address: str = "") -> bool:
        """Check ``password`` against ``password_hash`` off the event loop.

        ``address`` (the normalized login name) is part of the cache key so that two
        accounts sharing a hash and a password do not share an entry. A hash that is not
        argon2 costs a dummy verification, then fails, so it cannot be told apart by time.
        """
        key = self._key(address, password, password_hash)
        if self._cache_hit(key):
            return True
        if not is_valid_hash(password_hash):
            await self.verify_dummy(password)
            return False
        ok = await self._check(password_hash, password)
        if ok:
            self._remember(key)
        return ok

    async def verify_dummy(self, password: str) -> None:
        """Spend the work of one verification (an unknown user): always fails."""
        await self._check(self._dummy_hash, password)

    async def hash(self, password: str) -> str:
        """:func:`hash_password` with the configured parameters, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._hasher.hash, _octets(password))

    def needs_rehash(self, password_hash: str) -> bool:
        """:func:`needs_rehash` against this verifier's parameters."""
        return needs_rehash(password_hash, self.settings)

    def close(self) -> None:
        """Drop cached credentials; shut the executor down if we created it."""
        self._cache.clear()
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _check(self, password_hash: str, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, verify, password_hash, password)

    # ------------------------------------------------------------------ the cache

    def _key(self, address: str, password: str, password_hash: str) -> bytes:
        msg = "\0".join((address, password, password_hash)).encode("utf-8", "surrogatepass")
        return hmac.new(self._cache_key, msg, hashlib.sha256).digest()

    def _cache_hit(self, key: bytes) -> bool:
        expires = self._cache.get(key)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._cache[key]
            return False
        self._cache.move_to_end(key)
        return True

    def _remember(self, key: bytes) -> None:
        ttl = self.settings.cache_ttl
        if ttl <= 0 or self._cache_size == 0:
            return
        self._cache[key] = self._clock() + ttl
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def forget(self) -> None:
        """Empty the credential cache (after an administrator changes passwords in bulk;
        a single changed hash already misses on its own)."""
        self._cache.clear()

    @property
    def cached(self) -> int:
        """Entries in the credential cache (for tests and metrics)."""
        return len(self._cache)
