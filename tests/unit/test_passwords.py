"""argon2id hashes and the async, cached verifier (correo.auth.passwords)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import threading
from pathlib import Path

import pytest

from correo.auth.passwords import (
    PasswordVerifier,
    hash_password,
    is_valid_hash,
    needs_rehash,
    verify,
)
from correo.config import AuthSettings, Settings

CHEAP = AuthSettings(argon2_time_cost=1, argon2_memory_cost=8, argon2_parallelism=1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hash_is_argon2id_with_configured_parameters() -> None:
    h = hash_password("s3cret", CHEAP)
    assert h.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert verify(h, "s3cret")
    assert not verify(h, "s3cret ")
    assert not verify(h, "")


def test_salted() -> None:
    assert hash_password("same", CHEAP) != hash_password("same", CHEAP)


def test_accepts_whole_settings() -> None:
    settings = Settings(path=Path("correo.toml"), auth=CHEAP)
    assert hash_password("x", settings).startswith("$argon2id$v=19$m=8,t=1,p=1$")


def test_unicode_password() -> None:
    h = hash_password("pässwörd☃", CHEAP)
    assert verify(h, "pässwörd☃")
    assert not verify(h, "passwörd☃")


@pytest.mark.parametrize("bad", ["", "!", "*locked*", "$argon2id$garbage", "{SHA}abc", "$1$x$y"])
def test_verify_never_raises_on_bad_hash(bad: str) -> None:
    assert verify(bad, "anything") is False


def test_needs_rehash() -> None:
    h = hash_password("pw", CHEAP)
    assert not needs_rehash(h, CHEAP)
    stronger = dataclasses.replace(CHEAP, argon2_time_cost=2)
    assert needs_rehash(h, stronger)
    assert needs_rehash("not a hash", CHEAP)


def test_is_valid_hash() -> None:
    assert is_valid_hash(hash_password("pw", CHEAP))
    assert not is_valid_hash("!")


async def test_verifier_round_trip() -> None:
    v = PasswordVerifier(CHEAP)
    h = await v.hash("pw")
    assert verify(h, "pw")
    assert await v.verify(h, "pw", address="a@example.test")
    assert not await v.verify(h, "nope", address="a@example.test")
    v.close()


async def test_verification_runs_in_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import correo.auth.passwords as mod

    threads: list[str] = []
    real = mod.verify

    def recording(h: str, pw: str) -> bool:
        threads.append(threading.current_thread().name)
        return real(h, pw)

    monkeypatch.setattr(mod, "verify", recording)
    v = PasswordVerifier(CHEAP)
    h = hash_password("pw", CHEAP)
    assert await v.verify(h, "pw")
    await v.verify_dummy("pw")
    assert threads and all(t.startswith("correo-argon2") for t in threads)
    assert threading.current_thread().name not in threads
    v.close()


async def test_cache_hits_skip_argon2_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    import correo.auth.passwords as mod

    calls = 0
    real = mod.verify

    def counting(h: str, pw: str) -> bool:
        nonlocal calls
        calls += 1
        return real(h, pw)

    monkeypatch.setattr(mod, "verify", counting)
    clock = FakeClock()
    v = PasswordVerifier(dataclasses.replace(CHEAP, cache_ttl=60), clock=clock)
    h = hash_password("pw", CHEAP)
    assert await v.verify(h, "pw", address="a@example.test")
    assert await v.verify(h, "pw", address="a@example.test")
    assert calls == 1 and v.cached == 1
    # another address, another password, another hash: all misses
    assert await v.verify(h, "pw", address="b@example.test")
    assert not await v.verify(h, "PW", address="a@example.test")
    h2 = hash_password("pw", CHEAP)
    assert await v.verify(h2, "pw", address="a@example.test")
    assert calls == 4
    clock.now += 61
    assert await v.verify(h, "pw", address="a@example.test")
    assert calls == 5
    v.close()


async def test_failures_are_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    v = PasswordVerifier(CHEAP)
    h = hash_password("pw", CHEAP)
    assert not await v.verify(h, "wrong", address="a@example.test")
    assert v.cached == 0
    v.close()


async def test_changed_hash_invalidates_cached_password() -> None:
    v = PasswordVerifier(CHEAP)
    old = hash_password("old", CHEAP)
    assert await v.verify(old, "old", address="a@example.test")
    new = hash_password("new", CHEAP)
    assert not await v.verify(new, "old", address="a@example.test")
    v.close()


async def test_cache_is_bounded_and_keyed_by_hmac() -> None:
    password = "correct horse battery staple"
    v = PasswordVerifier(CHEAP, cache_size=3)
    h = hash_password(password, CHEAP)
    for i in range(10):
        assert await v.verify(h, password, address=f"u{i}@example.test")
    assert v.cached == 3
    # keys are 32-byte MACs under a per-process secret: neither the password nor the
    # address is stored, and another process's keys for the same login differ (a short
    # needle like b"pw" would appear in a random 32-byte key once in a few hundred runs)
    other = PasswordVerifier(CHEAP)
    for key in v._cache:
        assert isinstance(key, bytes) and len(key) == 32
        assert password.encode() not in key and b"@example.test" not in key
    assert v._key("u9@example.test", password, h) in v._cache
    assert other._key("u9@example.test", password, h) not in v._cache
    other.close()
    v.close()


async def test_zero_ttl_disables_cache() -> None:
    v = PasswordVerifier(dataclasses.replace(CHEAP, cache_ttl=0))
    h = hash_password("pw", CHEAP)
    assert await v.verify(h, "pw", address="a@example.test")
    assert v.cached == 0
    v.close()


async def test_password_not_kept_in_cache_memory() -> None:
    marker = "Zq9-unique-password-marker"
    v = PasswordVerifier(CHEAP)
    h = hash_password(marker, CHEAP)
    assert await v.verify(h, marker, address="a@example.test")
    gc.collect()
    blob = repr(v.__dict__) + repr(list(v._cache.items()))
    assert marker not in blob
    v.close()


async def test_dummy_hash_uses_same_parameters() -> None:
    v = PasswordVerifier(CHEAP)
    assert v._dummy_hash.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    await v.verify_dummy("anything")
    v.close()


async def test_non_argon2_hash_costs_a_dummy_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    import correo.auth.passwords as mod

    hashes: list[str] = []
    real = mod.verify

    def recording(h: str, pw: str) -> bool:
        hashes.append(h)
        return real(h, pw)

    monkeypatch.setattr(mod, "verify", recording)
    v = PasswordVerifier(CHEAP)
    assert not await v.verify("!", "pw", address="locked@example.test")
    assert hashes == [v._dummy_hash]
    v.close()


async def test_concurrent_verifications() -> None:
    v = PasswordVerifier(dataclasses.replace(CHEAP, workers=2, cache_ttl=0))
    h = hash_password("pw", CHEAP)
    results = await asyncio.gather(
        *(v.verify(h, "pw" if i % 2 else "no", address="a@example.test") for i in range(20))
    )
    assert results == [bool(i % 2) for i in range(20)]
    v.close()


async def test_needs_rehash_method() -> None:
    v = PasswordVerifier(CHEAP)
    assert not v.needs_rehash(hash_password("pw", CHEAP))
    assert v.needs_rehash(hash_password("pw", dataclasses.replace(CHEAP, argon2_time_cost=2)))
    v.close()


def test_undecodable_password_octets_round_trip() -> None:
    # A protocol layer that kept non-UTF-8 octets as surrogateescape code points.
    raw = b"caf\xe9"
    pw = raw.decode("utf-8", "surrogateescape")
    h = hash_password(pw, CHEAP)
    assert verify(h, pw)
    assert not verify(h, "café")
    assert verify(hash_password("x", CHEAP), "\udcff") is False  # never raises
