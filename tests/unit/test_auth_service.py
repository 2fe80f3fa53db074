"""Authenticator: limits + lookup + verification, and plaintext policy (correo.auth.service)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import correo.auth.passwords as passwords_mod
from correo.auth.limits import MemoryFailureLimiter
from correo.auth.passwords import PasswordVerifier, hash_password
from correo.auth.service import (
    Authenticator,
    AuthReason,
    normalize_username,
    plaintext_allowed,
)
from correo.config import AuthSettings, Settings
from correo.store.base import Account, TemporaryStoreError

CHEAP = AuthSettings(argon2_time_cost=1, argon2_memory_cost=8, argon2_parallelism=1, max_failures=3)
PASSWORD = "correct horse battery staple"


class OneMethodStore:
    """Test double for the one ``Store`` method authentication reads (``get_account``);
    everything else about storage is irrelevant here. The real SQLite store is exercised
    in ``test_real_store`` below when it exists."""

    def __init__(self, *accounts: Account) -> None:
        self.accounts = {a.address: a for a in accounts}
        self.lookups: list[str] = []

    async def get_account(self, address: str) -> Account | None:
        self.lookups.append(address)
        return self.accounts.get(address)


class WritableStore(OneMethodStore):
    """Adds ``set_password`` for the rehash-on-login test."""

    async def set_password(self, address: str, password_hash: str) -> None:
        self.accounts[address] = dataclasses.replace(
            self.accounts[address], password_hash=password_hash
        )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def account(address: str, password: str = PASSWORD, *, disabled: bool = False) -> Account:
    return Account(
        id=1,
        address=address,
        password_hash=hash_password(password, CHEAP),
        quota=0,
        used=0,
        disabled=disabled,
        created=0.0,
    )


@pytest.fixture
def argon2_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every argon2 verification, by the hash it checked."""
    calls: list[str] = []
    real = passwords_mod.verify

    def recording(h: str, pw: str) -> bool:
        calls.append(h)
        return real(h, pw)

    monkeypatch.setattr(passwords_mod, "verify", recording)
    return calls


@pytest.fixture
async def auth() -> AsyncIterator[Authenticator]:
    a = Authenticator(dataclasses.replace(CHEAP, cache_ttl=0))
    yield a
    a.close()


async def test_success(auth: Authenticator) -> None:
    acct = account("alice@example.test")
    res = await auth.authenticate(OneMethodStore(acct), "alice@example.test", PASSWORD, "192.0.2.1")
    assert res.ok and res.account == acct and res.reason is AuthReason.OK
    assert res.retry_after is None


async def test_username_case_insensitive(auth: Authenticator) -> None:
    store = OneMethodStore(account("alice@example.test"))
    res = await auth.authenticate(store, "Alice@EXAMPLE.test", PASSWORD, "192.0.2.1")
    assert res.ok
    assert store.lookups == ["alice@example.test"]


async def test_plus_tag_is_not_special(auth: Authenticator) -> None:
    store = OneMethodStore(account("alice@example.test"))
    res = await auth.authenticate(store, "alice+news@example.test", PASSWORD, "192.0.2.1")
    assert not res.ok and res.reason is AuthReason.BAD_CREDENTIALS
    assert store.lookups == ["alice+news@example.test"]


async def test_wrong_password(auth: Authenticator) -> None:
    store = OneMethodStore(account("alice@example.test"))
    res = await auth.authenticate(store, "alice@example.test", "wrong", "192.0.2.1")
    assert not res.ok and res.account is None and res.reason is AuthReason.BAD_CREDENTIALS


async def test_unknown_user_costs_the_same_work(
    auth: Authenticator, argon2_calls: list[str]
) -> None:
    store = OneMethodStore(account("alice@example.test"))
    unknown = await auth.authenticate(store, "nobody@example.test", PASSWORD, "192.0.2.1")
    assert len(argon2_calls) == 1
    wrong = await auth.authenticate(store, "alice@example.test", "wrong", "192.0.2.2")
    assert len(argon2_calls) == 2
    assert unknown == wrong  # same result object, nothing to tell them apart
    # the dummy hash has the same cost parameters as the real one
    dummy, real = argon2_calls
    assert dummy.split("$")[3] == real.split("$")[3] == "m=8,t=1,p=1"


@pytest.mark.parametrize("name", ["", "a\0b@example.test", "a\r\nb@example.test", "x" * 400])
async def test_invalid_usernames_fail_with_the_same_work(
    auth: Authenticator, argon2_calls: list[str], name: str
) -> None:
    store = OneMethodStore()
    res = await auth.authenticate(store, name, PASSWORD, "192.0.2.1")
    assert res.reason is AuthReason.BAD_CREDENTIALS
    assert len(argon2_calls) == 1
    assert store.lookups == []


async def test_disabled_account_cannot_log_in(auth: Authenticator) -> None:
    store = OneMethodStore(account("bob@example.test", disabled=True))
    res = await auth.authenticate(store, "bob@example.test", PASSWORD, "192.0.2.1")
    assert not res.ok and res.account is None and res.reason is AuthReason.DISABLED
    wrong = await auth.authenticate(store, "bob@example.test", "nope", "192.0.2.1")
    assert wrong.reason is AuthReason.BAD_CREDENTIALS


async def test_unusable_hash_fails(auth: Authenticator, argon2_calls: list[str]) -> None:
    locked = dataclasses.replace(account("carol@example.test"), password_hash="!")
    res = await auth.authenticate(OneMethodStore(locked), "carol@example.test", "!", "192.0.2.1")
    assert res.reason is AuthReason.BAD_CREDENTIALS
    assert len(argon2_calls) == 1  # the dummy


async def test_rate_limited_after_failures(auth: Authenticator, argon2_calls: list[str]) -> None:
    store = OneMethodStore(account("alice@example.test"))
    for _ in range(3):
        res = await auth.authenticate(store, "alice@example.test", "guess", "192.0.2.1")
        assert res.reason is AuthReason.BAD_CREDENTIALS
    res = await auth.authenticate(store, "alice@example.test", PASSWORD, "192.0.2.1")
    assert not res.ok and res.reason is AuthReason.RATE_LIMITED
    assert res.retry_after is not None and 0 < res.retry_after <= CHEAP.lockout
    assert len(argon2_calls) == 3  # no verification while locked


async def test_unknown_users_are_limited_too() -> None:
    clock = FakeClock()
    limiter = MemoryFailureLimiter.from_settings(CHEAP, clock=clock)
    auth = Authenticator(CHEAP, limiter=limiter)
    store = OneMethodStore()
    for _ in range(3):
        await auth.authenticate(store, "ghost@example.test", "x", "192.0.2.1")
    res = await auth.authenticate(store, "ghost@example.test", "x", "198.51.100.1")
    assert res.reason is AuthReason.RATE_LIMITED
    clock.now += CHEAP.lockout + 1
    res = await auth.authenticate(store, "ghost@example.test", "x", "198.51.100.1")
    assert res.reason is AuthReason.BAD_CREDENTIALS
    auth.close()


async def test_success_resets_account_failures(auth: Authenticator) -> None:
    store = OneMethodStore(account("alice@example.test"))
    for ip in ("192.0.2.1", "192.0.2.2"):
        await auth.authenticate(store, "alice@example.test", "guess", ip)
    assert (await auth.authenticate(store, "alice@example.test", PASSWORD, "192.0.2.3")).ok
    for ip in ("192.0.2.4", "192.0.2.5"):
        await auth.authenticate(store, "alice@example.test", "guess", ip)
    assert (await auth.authenticate(store, "alice@example.test", PASSWORD, "192.0.2.6")).ok


async def test_parallel_guesses_cannot_reveal_a_right_one_after_lock() -> None:
    auth = Authenticator(dataclasses.replace(CHEAP, workers=1, cache_ttl=0))
    store = OneMethodStore(account("alice@example.test"))
    guesses = ["g1", "g2", "g3", "g4", "g5", PASSWORD]
    results = await asyncio.gather(
        *(auth.authenticate(store, "alice@example.test", g, "192.0.2.1") for g in guesses)
    )
    assert not results[-1].ok
    assert results[-1].reason is AuthReason.RATE_LIMITED
    auth.close()


async def test_store_errors_propagate(auth: Authenticator) -> None:
    class Broken:
        async def get_account(self, address: str) -> Account | None:
            raise TemporaryStoreError("database is locked")

    with pytest.raises(TemporaryStoreError):
        await auth.authenticate(Broken(), "alice@example.test", PASSWORD, "192.0.2.1")


async def test_rehash_on_login_with_old_parameters() -> None:
    old = AuthSettings(argon2_time_cost=2, argon2_memory_cost=8, argon2_parallelism=1)
    acct = dataclasses.replace(
        account("alice@example.test"), password_hash=hash_password(PASSWORD, old)
    )
    store = WritableStore(acct)
    auth = Authenticator(CHEAP)
    assert (await auth.authenticate(store, "alice@example.test", PASSWORD, "192.0.2.1")).ok
    new_hash = store.accounts["alice@example.test"].password_hash
    assert new_hash.split("$")[3] == "m=8,t=1,p=1"
    assert passwords_mod.verify(new_hash, PASSWORD)
    auth.close()


async def test_rehash_skipped_without_set_password() -> None:
    old = AuthSettings(argon2_time_cost=2, argon2_memory_cost=8, argon2_parallelism=1)
    acct = dataclasses.replace(
        account("alice@example.test"), password_hash=hash_password(PASSWORD, old)
    )
    auth = Authenticator(CHEAP)
    res = await auth.authenticate(OneMethodStore(acct), "alice@example.test", PASSWORD, "::1")
    assert res.ok
    auth.close()


async def test_cached_credentials_skip_argon2(argon2_calls: list[str]) -> None:
    auth = Authenticator(CHEAP)
    store = OneMethodStore(account("alice@example.test"))
    for _ in range(3):
        assert (await auth.authenticate(store, "alice@example.test", PASSWORD, "192.0.2.1")).ok
    assert len(argon2_calls) == 1
    auth.close()


async def test_accepts_whole_settings() -> None:
    auth = Authenticator(Settings(path=Path("correo.toml"), auth=CHEAP))
    res = await auth.authenticate(
        OneMethodStore(account("alice@example.test")), "alice@example.test", PASSWORD, "::1"
    )
    assert res.ok
    auth.close()


async def test_custom_verifier_and_limiter_are_used() -> None:
    verifier = PasswordVerifier(CHEAP)
    auth = Authenticator(CHEAP, verifier=verifier)
    assert auth.verifier is verifier
    auth.close()


# ------------------------------------------------------------------ logging


async def test_password_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    secret = "Pa55-never-in-logs-Zx81"
    auth = Authenticator(dataclasses.replace(CHEAP, max_failures=2))
    old = AuthSettings(argon2_time_cost=2, argon2_memory_cost=8, argon2_parallelism=1)
    ok_acct = account("alice@example.test", secret)
    old_acct = dataclasses.replace(
        account("dave@example.test"), password_hash=hash_password(secret, old)
    )
    store = WritableStore(ok_acct, old_acct, account("bob@example.test", secret, disabled=True))
    caplog.set_level(logging.DEBUG)
    attempts = [
        ("alice@example.test", secret),  # ok
        ("alice@example.test", secret),  # ok, cached
        ("dave@example.test", secret),  # ok + rehash
        ("bob@example.test", secret),  # disabled
        ("nobody@example.test", secret),  # unknown
        ("alice@example.test", secret + "x"),  # wrong
        ("carol@example.test", secret),
        ("carol@example.test", secret),
        ("carol@example.test", secret),  # rate limited
    ]
    for user, pw in attempts:
        await auth.authenticate(store, user, pw, "192.0.2.1", session="s1")
    auth.close()
    messages = [r for r in caplog.records if r.name.startswith("correo")]
    assert len(messages) >= len(attempts)
    for record in messages:
        assert record.levelno <= logging.INFO or "rehash" in record.getMessage()
        text = record.getMessage()
        assert secret not in text
        assert secret.lower() not in text
    failures = [r for r in messages if "auth failed" in r.getMessage()]
    assert failures and all(r.levelno == logging.INFO for r in failures)
    assert all("ip=192.0.2.1" in r.getMessage() for r in failures)
    assert any("user='bob@example.test' reason=disabled" in r.getMessage() for r in failures)
    assert any("reason=rate-limited" in r.getMessage() for r in messages)


async def test_password_absent_from_whole_log_text(caplog: pytest.LogCaptureFixture) -> None:
    secret = "Qw-another-secret-93"
    auth = Authenticator(CHEAP)
    store = OneMethodStore(account("alice@example.test", secret))
    caplog.set_level(logging.DEBUG)
    for user, pw in [
        ("alice@example.test", secret),
        ("alice@example.test", secret[:-1]),
        ("x@example.test", secret),
    ]:
        await auth.authenticate(store, user, pw, "203.0.113.5")
    auth.close()
    assert "alice@example.test" in caplog.text
    assert secret not in caplog.text
    assert secret[:-1] not in caplog.text


async def test_username_logged_safely(caplog: pytest.LogCaptureFixture) -> None:
    auth = Authenticator(CHEAP)
    caplog.set_level(logging.INFO)
    await auth.authenticate(OneMethodStore(), "evil\r\nFAKE LOG LINE", "pw", "192.0.2.1")
    auth.close()
    assert all("\n" not in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ misc


def test_normalize_username() -> None:
    assert normalize_username("Alice@Example.TEST") == "alice@example.test"
    assert normalize_username("alice+tag@example.test") == "alice+tag@example.test"
    assert normalize_username(" Alice@Example.test. ") == "alice@example.test"
    assert normalize_username("no-at-sign") == "no-at-sign"


async def test_spelling_variants_share_the_account_counter() -> None:
    class LooseStore(OneMethodStore):
        """Resolves addresses the way the SQLite store does (strip, lower, final dot)."""

        async def get_account(self, address: str) -> Account | None:
            return self.accounts.get(address.strip().lower().rstrip("."))

    auth = Authenticator(dataclasses.replace(CHEAP, cache_ttl=0))
    store = LooseStore(account("alice@example.test"))
    for i, variant in enumerate(
        ["alice@example.test", "ALICE@example.test.", " alice@EXAMPLE.test"]
    ):
        res = await auth.authenticate(store, variant, "guess", f"192.0.2.{i}")
        assert res.reason is AuthReason.BAD_CREDENTIALS
    res = await auth.authenticate(store, "alice@example.test", PASSWORD, "198.51.100.1")
    assert res.reason is AuthReason.RATE_LIMITED
    auth.close()


async def test_store_refusing_a_non_address_is_a_failure(auth: Authenticator) -> None:
    class Strict:
        async def get_account(self, address: str) -> Account | None:
            raise ValueError(f"not an address: {address!r}")

    res = await auth.authenticate(Strict(), "nobody", PASSWORD, "192.0.2.1")
    assert res.reason is AuthReason.BAD_CREDENTIALS


@pytest.mark.parametrize(
    ("tls", "loopback", "on_loopback", "allowed"),
    [
        (True, False, False, True),
        (True, True, False, True),
        (False, False, True, False),
        (False, False, False, False),
        (False, True, True, True),
        (False, True, False, False),
    ],
)
def test_plaintext_allowed(tls: bool, loopback: bool, on_loopback: bool, allowed: bool) -> None:
    s = AuthSettings(plaintext_on_loopback=on_loopback)
    assert plaintext_allowed(tls, loopback, s) is allowed
    assert plaintext_allowed(tls, loopback, Settings(path=Path("c.toml"), auth=s)) is allowed


async def test_real_store(tmp_path: Path) -> None:
    """The same flow against the real SQLite store, when it exists."""
    store_mod = pytest.importorskip("correo.store")
    open_store = getattr(store_mod, "open_store", None)
    if open_store is None:
        pytest.skip("correo.store.open_store not written yet")
    settings = Settings(path=tmp_path / "correo.toml", data_dir=tmp_path, auth=CHEAP)
    store = await open_store(settings)
    try:
        await store.add_domain("example.test")
        await store.add_account("alice@example.test", hash_password(PASSWORD, CHEAP))
        auth = Authenticator(settings)
        ok = await auth.authenticate(store, "ALICE@example.test", PASSWORD, "192.0.2.1")
        assert ok.ok and ok.account is not None and ok.account.address == "alice@example.test"
        bad = await auth.authenticate(store, "alice@example.test", "nope", "192.0.2.1")
        assert bad.reason is AuthReason.BAD_CREDENTIALS
        odd = await auth.authenticate(store, " alice@Example.test. ", PASSWORD, "192.0.2.1")
        assert odd.ok
        for name in ("nobody", "", "@example.test", "alice@", "a b@example.test"):
            res = await auth.authenticate(store, name, PASSWORD, "192.0.2.9")
            assert res.reason in (AuthReason.BAD_CREDENTIALS, AuthReason.RATE_LIMITED)
        await store.set_disabled("alice@example.test", True)
        off = await auth.authenticate(store, "alice@example.test", PASSWORD, "192.0.2.2")
        assert off.reason is AuthReason.DISABLED
        auth.close()
    finally:
        await store.close()


async def test_huge_username_logged_truncated(caplog: pytest.LogCaptureFixture) -> None:
    auth = Authenticator(CHEAP)
    caplog.set_level(logging.INFO)
    res = await auth.authenticate(OneMethodStore(), "a" * 70000, "pw", "192.0.2.1")
    auth.close()
    assert res.reason is AuthReason.BAD_CREDENTIALS
    assert all(len(r.getMessage()) < 1000 for r in caplog.records)
