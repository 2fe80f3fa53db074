"""The selected-mailbox view as a pure diff (RFC 3501 §7.4.1, §7.3.1, §2.3.2)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from correo.imap.spec import SequenceSet
from correo.imap.view import Exists, Expunged, FlagsChanged, Keywords, MailboxView, Recent
from correo.store.base import Change, ChangeKind

A, F, X = ChangeKind.ADDED, ChangeKind.FLAGS, ChangeKind.EXPUNGED


def view(uids: list[int], **kw: object) -> MailboxView:
    return MailboxView(1, 7, uids, 10, **kw)  # type: ignore[arg-type]


def S(*ranges: tuple[int | None, int | None]) -> SequenceSet:
    return SequenceSet(tuple(ranges))


def test_compact_storage_and_lookup() -> None:
    v = view([3, 5, 9])
    assert v.uids.typecode == "I" and v.uids.itemsize == 4
    assert [v.seq_of(u) for u in (3, 5, 9, 4, 10)] == [1, 2, 3, None, None]


def test_resolve_sequence_numbers() -> None:
    v = view([3, 5, 9, 12])
    assert v.resolve(S((2, None)), uid=False) == [(2, 5), (3, 9), (4, 12)]
    assert v.resolve(S((3, 1), (2, 2)), uid=False) == [(1, 3), (2, 5), (3, 9)]
    assert v.resolve(S((None, None)), uid=False) == [(4, 12)]
    assert v.resolve(S((5, 5)), uid=False) is None  # no message 5: BAD


def test_resolve_uids() -> None:
    v = view([3, 5, 9, 12])
    assert v.resolve(S((4, 10)), uid=True) == [(2, 5), (3, 9)]
    assert v.resolve(S((100, None)), uid=True) == [(4, 12)]  # n:* includes the largest
    assert v.resolve(S((13, 20)), uid=True) == []
    assert v.resolve(S((1, None), (5, 5)), uid=True) == [(1, 3), (2, 5), (3, 9), (4, 12)]


def test_resolve_empty_mailbox() -> None:
    v = view([])
    assert v.resolve(S((1, None)), uid=True) == []
    assert v.resolve(S((None, None)), uid=False) == []
    assert v.resolve(S((1, 1)), uid=False) is None


def test_new_messages_exists_and_recent() -> None:
    v = view([1, 2])
    ups = v.apply([Change(A, 3, 11), Change(A, 4, 12)], allow_expunge=True, recent_from=4)
    assert ups == [Exists(4), Recent(1)]
    assert v.recent == {4} and v.modseq == 12
    assert v.apply([Change(A, 4, 12)], allow_expunge=True) == []  # already known


def test_expunge_held_back_during_fetch_store_search() -> None:
    v = view([1, 2, 3, 4])
    ups = v.apply([Change(X, 2, 11), Change(A, 5, 12)], allow_expunge=False)
    assert ups == [Exists(5)]  # EXISTS may go out, EXPUNGE may not
    assert v.seq_of(2) == 2 and v.is_expunged(2)  # old numbers stay valid
    assert v.apply([Change(F, 2, 13, frozenset({"\\Seen"}))], allow_expunge=False) == []
    assert v.apply([], allow_expunge=True) == [Expunged(2)]
    assert list(v.uids) == [1, 3, 4, 5]


def test_several_expunges_are_numbered_as_read() -> None:
    v = view([10, 20, 30, 40, 50, 60])
    ups = v.apply([Change(X, u, 11 + i) for i, u in enumerate((20, 30, 50))], allow_expunge=True)
    # RFC 3501 §7.4.1: each number is valid when the client reads it
    assert ups == [Expunged(2), Expunged(2), Expunged(3)]
    assert list(v.uids) == [10, 40, 60]


def test_exists_never_decreases_without_expunge() -> None:
    v = view([1, 2])
    v.apply([Change(X, 1, 11), Change(X, 2, 12)], allow_expunge=False)
    ups = v.apply([Change(A, 3, 13)], allow_expunge=False)
    assert ups == [Exists(3)]
    ups = v.flush_expunges()
    assert ups == [Expunged(1), Expunged(1)]
    assert v.apply([Change(A, 4, 14)], allow_expunge=True) == [Exists(2)]


def test_flag_changes_and_own_changes() -> None:
    v = view([1, 2, 3])
    v.own_flags(2, 12)
    ups = v.apply(
        [
            Change(F, 1, 11, frozenset({"\\Seen"})),
            Change(F, 2, 12, frozenset({"\\Flagged"})),
            Change(F, 3, 13, frozenset({"$Work"})),
            Change(F, 1, 14, frozenset()),
        ],
        allow_expunge=True,
    )
    assert ups == [
        Keywords(("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "$Work")),
        FlagsChanged(1, 1, frozenset()),
        FlagsChanged(3, 3, frozenset({"$Work"})),
    ]
    # a later change by someone else to our message is reported
    assert v.apply([Change(F, 2, 15, frozenset())], allow_expunge=True) == [
        FlagsChanged(2, 2, frozenset())
    ]


def test_unknown_and_expunged_uids_are_ignored() -> None:
    v = view([5])
    assert v.apply([Change(X, 4, 11), Change(F, 9, 12, frozenset())], allow_expunge=True) == []


def test_added_then_expunged_in_one_batch() -> None:
    v = view([1])
    # never announced, so never expunged either: nothing to say
    assert v.apply([Change(A, 2, 11), Change(X, 2, 12)], allow_expunge=True) == []
    assert list(v.uids) == [1]
    # announced while expunges were held back, then expunged: reported
    v.apply([Change(A, 3, 13)], allow_expunge=False)
    assert v.apply([Change(X, 3, 14)], allow_expunge=True) == [Expunged(2)]


def test_expunged_here_reports_own_expunges() -> None:
    v = view([1, 2, 3], recent=[3])
    assert v.expunged_here([3, 1, 99]) == [Expunged(1), Expunged(2)]
    assert list(v.uids) == [2] and v.recent == set()
    # the store's change rows for them later are no-ops
    assert v.apply([Change(X, 1, 11), Change(X, 3, 12)], allow_expunge=True) == [Recent(0)]


@given(
    st.lists(st.sampled_from(["add", "exp", "expnew", "flag", "flush"]), max_size=40),
    st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_client_model_stays_in_sync(ops: list[str], allow: list[bool]) -> None:
    """A client applying the updates as RFC 3501 says ends with the server's view."""
    v = view([1, 2, 3])
    client = [1, 2, 3]  # what the client believes, by sequence number
    store = {1, 2, 3}
    nxt, modseq = 4, 10
    for op, ok in zip(ops, allow, strict=False):
        modseq += 1
        changes = []
        if op == "add":
            store.add(nxt)
            changes.append(Change(A, nxt, modseq))
            nxt += 1
        elif op == "exp" and store:
            u = min(store)
            store.discard(u)
            changes.append(Change(X, u, modseq))
        elif op == "expnew" and store:
            u = max(store)
            store.discard(u)
            changes.append(Change(X, u, modseq))
        elif op == "flag" and store:
            changes.append(Change(F, max(store), modseq, frozenset({"\\Seen"})))
        for up in v.apply(changes, allow_expunge=ok):
            if isinstance(up, Expunged):
                assert 1 <= up.seq <= len(client)
                del client[up.seq - 1]
            elif isinstance(up, Exists):
                assert up.count >= len(client)
                client += [None] * (up.count - len(client))  # type: ignore[list-item]
            elif isinstance(up, FlagsChanged):
                assert client[up.seq - 1] in (up.uid, None)
        assert len(client) == len(v)
    for up in v.flush_expunges():
        assert isinstance(up, Expunged)
        del client[up.seq - 1]
    assert len(client) == len(v)
    assert list(v.uids) == sorted(store)
