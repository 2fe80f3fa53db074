"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3): examples, strictness, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from correo.imap.utf7 import decode, encode


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("INBOX", "INBOX"),
        ("a&b", "a&-b"),
        ("&", "&-"),
        # RFC 3501 §5.1.3 example
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("Été", "&AMk-t&AOk-"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("😀", "&2D3eAA-"),  # a surrogate pair
        ("", ""),
        ("tab\there", "tab&AAk-here"),
    ],
)
def test_examples(text: str, wire: str) -> None:
    assert encode(text) == wire
    assert decode(wire) == text
    assert decode(wire.encode()) == text


@pytest.mark.parametrize(
    "wire",
    [
        "&Jjo!",  # unterminated
        "&U,BTFw-&ZeVnLIqe-",  # adjacent shifted runs must be one (RFC 3501 §5.1.3)
        "&AGE-",  # "a" base64-encoded: printable ASCII must be literal
        "&AMk",  # unterminated
        "&AM-",  # 12 bits: odd octet count
        "&AMl-",  # non-zero padding bits
        "&2D0-",  # lone high surrogate
        "&U/BTFw-",  # '/' instead of ','
        "&U,BTFw=-",  # padding
        "caf\xe9",  # raw 8-bit
        "a\x01b",  # control character
    ],
)
def test_invalid_names_are_refused(wire: str) -> None:
    with pytest.raises(ValueError):
        decode(wire)


def test_invalid_utf8_bytes_are_refused() -> None:
    with pytest.raises(ValueError):
        decode(b"caf\xc3\xa9")


@given(st.text(st.characters(exclude_categories=("Cs",))))
def test_round_trip(text: str) -> None:
    wire = encode(text)
    assert wire.isascii() and all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert decode(wire) == text
    assert encode(decode(wire)) == wire


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30))
def test_accepted_names_have_one_spelling(wire: str) -> None:
    try:
        text = decode(wire)
    except ValueError:
        return
    assert encode(text) == wire
