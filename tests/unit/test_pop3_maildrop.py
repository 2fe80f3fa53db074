"""Maildrop bookkeeping: stable numbers, DELE marks, RSET, UIDL, what UPDATE removes."""

from __future__ import annotations

import pytest

from correo.pop3.maildrop import Maildrop, MaildropError
from correo.store.base import MessageInfo


def info(uid: int, size: int) -> MessageInfo:
    return MessageInfo(uid=uid, modseq=1, flags=frozenset(), internaldate=0.0, size=size)


@pytest.fixture
def drop() -> Maildrop:
    return Maildrop(7, 1700000000, [info(3, 100), info(5, 250), info(9, 40)])


def test_numbers_sizes_and_stat(drop: Maildrop) -> None:
    assert len(drop) == 3
    assert [(e.number, e.uid, e.size) for e in drop.live()] == [
        (1, 3, 100),
        (2, 5, 250),
        (3, 9, 40),
    ]
    assert drop.stat() == (3, 390)


def test_unique_ids_are_uidvalidity_dot_uid(drop: Maildrop) -> None:
    ids = [drop.unique_id(e) for e in drop.live()]
    assert ids == ["1700000000.3", "1700000000.5", "1700000000.9"]
    assert all(0 < len(i) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in i) for i in ids)


@pytest.mark.parametrize("number", [0, 4, 10**9])
def test_out_of_range(drop: Maildrop, number: int) -> None:
    with pytest.raises(MaildropError, match=f"no message {number}"):
        drop.get(number)
    with pytest.raises(MaildropError):
        drop.delete(number)


def test_dele_marks_without_renumbering_and_rset_unmarks(drop: Maildrop) -> None:
    drop.delete(2)
    assert drop.stat() == (2, 140)
    assert [e.number for e in drop.live()] == [1, 3]
    assert drop.get(3).uid == 9  # numbers never shift (RFC 1939 §5)
    with pytest.raises(MaildropError, match="message 2 is deleted"):
        drop.get(2)
    with pytest.raises(MaildropError, match="message 2 is deleted"):
        drop.delete(2)
    assert drop.uids_to_expunge() == [5]
    drop.reset()
    assert drop.stat() == (3, 390)
    assert drop.uids_to_expunge() == []


def test_expire_zero_adds_retrieved_messages(drop: Maildrop) -> None:
    drop.retrieved(1)
    drop.delete(3)
    assert drop.uids_to_expunge() == [9]
    assert drop.uids_to_expunge(expire_retrieved=True) == [3, 9]


def test_empty_maildrop() -> None:
    drop = Maildrop(1, 1, [])
    assert drop.stat() == (0, 0)
    assert list(drop.live()) == []
    with pytest.raises(MaildropError):
        drop.get(1)
