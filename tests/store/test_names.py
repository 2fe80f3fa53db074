"""Mailbox name rules (``correo.store.names``), shared by every backend."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from correo.store import names
from correo.store.base import InvalidName


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("inbox", "INBOX"),
        ("InBoX/Sub", "INBOX/Sub"),
        ("a/b/", "a/b"),
        ("Lists/Débats", "Lists/Débats"),
        ("INBOXes", "INBOXes"),
    ],
)
def test_names_normalize(raw: str, norm: str) -> None:
    assert names.normalize(raw) == norm


@pytest.mark.parametrize(
    "bad", ["", "/", "a//b", "/a", "a/./b", "..", "a\x00b", "a\tb", "x\x7f", "a*", "%"]
)
def test_names_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        names.normalize(bad)


def test_names_parents() -> None:
    assert list(names.parents("a/b/c")) == ["a", "a/b"]
    assert names.is_descendant("a/b", "a") and not names.is_descendant("ab", "a")


@given(st.text(max_size=60))
def test_normalize_is_idempotent_or_refuses(raw: str) -> None:
    try:
        once = names.normalize(raw)
    except InvalidName:
        return
    assert names.normalize(once) == once
    assert not once.endswith("/") and "//" not in once
    assert all(level not in (".", "..") for level in once.split("/"))
