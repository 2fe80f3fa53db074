"""Authentication for every protocol: SMTP AUTH (RFC 4954), POP3 USER/PASS and AUTH
(RFC 1939 §7, RFC 5034), IMAP LOGIN and AUTHENTICATE (RFC 9051 §6.2.2-§6.2.3).

The protocols decode what the client sent (``correo.auth.sasl`` or their own LOGIN/PASS
parsing) and call :meth:`Authenticator.authenticate`; it applies the rate limits, looks the
account up and verifies the password with the same work whether the account exists or not.

What the client is told must not depend on *why* a login failed, except for rate limiting
(which says nothing about the account): ``BAD_CREDENTIALS`` and ``DISABLED`` get the same
reply (SMTP 535 5.7.8, IMAP ``NO [AUTHENTICATIONFAILED]``, POP3 ``-ERR [AUTH]``); the
reason is for the log. ``RATE_LIMITED`` may be answered as a temporary failure
(SMTP 454 4.7.0, IMAP ``NO [UNAVAILABLE]``, POP3 ``-ERR [IN-USE]``/``[SYS/TEMP]``).

Logging: one INFO line per attempt with the session id, the client IP and the username
(``%r``, so control characters cannot forge log lines); the password never.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from correo.auth.limits import FailureLimiter, MemoryFailureLimiter
from correo.auth.passwords import PasswordVerifier, auth_settings
from correo.config import AuthSettings, Settings

if TYPE_CHECKING:
    from correo.store.base import Account

log = logging.getLogger(__name__)

MAX_USERNAME = 320
"""Octets: a 64-octet local part, ``@`` and a 255-octet domain (RFC 5321 §4.5.3.1)."""


class AccountLookup(Protocol):
    """The part of ``correo.store.base.Store`` authentication reads."""

    async def get_account(self, address: str) -> Account | None: ...


@runtime_checkable
class _PasswordWriter(Protocol):
    async def set_password(self, address: str, password_hash: str) -> None: ...


class AuthReason(enum.Enum):
    OK = "ok"
    BAD_CREDENTIALS = "bad-credentials"
    """Unknown user or wrong password: deliberately the same reason."""
    DISABLED = "disabled"
    """Right password, account disabled. Answer the client as for BAD_CREDENTIALS."""
    RATE_LIMITED = "rate-limited"
    """Too many failures from this IP or for this account; see ``retry_after``."""


@dataclass(frozen=True, slots=True)
class AuthResult:
    ok: bool
    account: Account | None
    """The account when ``ok``; None otherwise (even when it exists)."""
    reason: AuthReason
    retry_after: float | None = None
    """Seconds, for RATE_LIMITED only."""


def _shown(name: str) -> str:
    """The username as logged: at most ``MAX_USERNAME`` characters (``%r`` escapes the rest)."""
    return name if len(name) <= MAX_USERNAME else name[:MAX_USERNAME] + "..."


def normalize_username(username: str) -> str:
    """Login names are full addresses compared case-insensitively, as the store keeps
    them: surrounding space and a final dot of the domain are dropped (``" Alice@Example.
    test. "`` is ``alice@example.test``). ``user+tag@domain`` is not special: it is simply
    not an account."""
    local, at, domain = username.strip().lower().rpartition("@")
    return f"{local}@{domain.rstrip('.')}" if at else domain


def plaintext_allowed(
    tls_active: bool, listener_is_loopback: bool, settings: Settings | AuthSettings
) -> bool:
    """May a password be sent in the clear on this connection?

    Only under TLS (RFC 8314 §3, RFC 9051 §11.1 LOGINDISABLED, RFC 2595 §2.1, RFC 4954
    §4 "requires an encryption layer"), except on loopback listeners when
    ``[auth] plaintext_on_loopback`` is true (local webmail, tests). When it is False
    the protocols advertise LOGINDISABLED (IMAP), no AUTH / 538 5.7.11 (SMTP), and refuse
    USER/PASS/AUTH (POP3).
    """
    if tls_active:
        return True
    return listener_is_loopback and auth_settings(settings).plaintext_on_loopback


class Authenticator:
    """Rate limits + account lookup + password verification (one per server).

    ``limiter`` and ``verifier`` default to the in-memory limiter and a verifier with
    ``[auth]``'s parameters; pass others to share them or to test.
    """

    def __init__(
        self,
        settings: Settings | AuthSettings,
        *,
        limiter: FailureLimiter | None = None,
        verifier: PasswordVerifier | None = None,
        rehash: bool = True,
    ) -> None:
        self.settings = auth_settings(settings)
        self.limiter: FailureLimiter = limiter or MemoryFailureLimiter.from_settings(self.settings)
        self.verifier = verifier or PasswordVerifier(self.settings)
        self.rehash = rehash
        """Replace a hash made with other argon2 parameters after a successful login."""

    async def authenticate(
        self,
        store: AccountLookup,
        username: str,
        password: str,
        ip: str,
        *,
        session: str = "-",
    ) -> AuthResult:
        """Check ``username``/``password`` from client ``ip``.

        Store errors (``TemporaryStoreError``) propagate: the protocol answers them as
        a temporary failure, and they count as no attempt. The account is looked up
        before the rate-limit check (one indexed read), so that the per-account counter
        is keyed by its canonical address.
        """
        name = normalize_username(username)
        account = await self._lookup(store, name)
        # Count failures under the account's own spelling of its address, so variants the
        # store also resolves (" Alice@Example.test.") share one counter.
        key = account.address.lower() if account is not None else name
        wait = await self.limiter.check(ip, key)
        if wait is not None:
            return self._limited(ip, key, session, wait)

        if account is None:
            await self.verifier.verify_dummy(password)
            return await self._failed(ip, key, session, AuthReason.BAD_CREDENTIALS)
        ok = await self.verifier.verify(account.password_hash, password, address=key)
        if not ok:
            return await self._failed(ip, key, session, AuthReason.BAD_CREDENTIALS)
        if account.disabled:
            return await self._failed(ip, key, session, AuthReason.DISABLED)

        # Attempts made in parallel all pass the first check; those that finish after the
        # failures of the others locked the IP or account must not reveal a right guess.
        wait = await self.limiter.check(ip, key)
        if wait is not None:
            return self._limited(ip, key, session, wait)
        await self.limiter.record_success(ip, key)
        log.info("auth ok: session=%s ip=%s user=%r", session, ip, key)
        if self.rehash and self.verifier.needs_rehash(account.password_hash):
            await self._rehash(store, account, password, session)
        return AuthResult(True, account, AuthReason.OK)

    def close(self) -> None:
        """Stop the verifier's threads and drop cached credentials (server shutdown)."""
        self.verifier.close()

    # ------------------------------------------------------------------ helpers

    async def _lookup(self, store: AccountLookup, name: str) -> Account | None:
        if not name or len(name.encode("utf-8", "surrogatepass")) > MAX_USERNAME:
            return None
        if any(c in name for c in "\0\r\n"):
            return None
        try:
            return await store.get_account(name)
        except ValueError:  # not an address at all (the SQLite store says so this way)
            return None

    def _limited(self, ip: str, name: str, session: str, wait: float) -> AuthResult:
        log.info(
            "auth refused: session=%s ip=%s user=%r reason=rate-limited retry_after=%.0fs",
            session, ip, _shown(name), wait,
        )  # fmt: skip
        return AuthResult(False, None, AuthReason.RATE_LIMITED, retry_after=wait)

    async def _failed(self, ip: str, name: str, session: str, reason: AuthReason) -> AuthResult:
        await self.limiter.record_failure(ip, name)
        log.info(
            "auth failed: session=%s ip=%s user=%r reason=%s",
            session, ip, _shown(name), reason.value,
        )  # fmt: skip
        return AuthResult(False, None, reason)

    async def _rehash(
        self, store: AccountLookup, account: Account, password: str, session: str
    ) -> None:
        if not isinstance(store, _PasswordWriter):
            return
        try:
            new_hash = await self.verifier.hash(password)
            await store.set_password(account.address, new_hash)
        except Exception:  # best effort: the login itself succeeded
            log.warning(
                "password rehash failed: session=%s user=%r", session, account.address,
                exc_info=True,
            )  # fmt: skip
        else:
            log.info("password rehashed: session=%s user=%r", session, account.address)
