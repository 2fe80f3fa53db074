"""PROXY protocol v1/v2 header parsing (sans-I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from correo.net.proxy import (
    V2_SIGNATURE,
    ProxyHeaderError,
    build_v1,
    build_v2,
    parse,
)


def test_v1_tcp4_and_rest_untouched() -> None:
    data = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\nEHLO x\r\n"
    h = parse(data)
    assert h is not None
    assert h.source == ("192.0.2.7", 51234)
    assert h.destination == ("198.51.100.1", 25)
    assert data[h.length :] == b"EHLO x\r\n"


def test_v1_tcp6_unknown_and_incomplete() -> None:
    h = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 143\r\n")
    assert h is not None and h.source == ("2001:db8::1", 1000)
    assert parse(b"PROXY UNKNOWN\r\n") is not None
    assert parse(b"PROXY UNKNOWN\r\n").source is None  # type: ignore[union-attr]
    assert parse(b"PROXY TCP4 1.2.3.4") is None
    assert parse(b"PRO") is None
    assert parse(b"") is None


@pytest.mark.parametrize(
    "bad",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 0 25\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 25\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
        b"PROXY " + b"x" * 120,
        b"EHLO example.org\r\n",
        b"PROXX TCP4\r\n",
        V2_SIGNATURE[:11] + b"X" + b"\x21\x11\x00\x0c" + b"\x00" * 12,
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,
        V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,
        V2_SIGNATURE + b"\x21\x11\xff\xff",
        V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12,
    ],
)
def test_invalid_headers_are_refused(bad: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(bad)


def test_v2_ipv4_ipv6_local() -> None:
    h = parse(build_v2(("203.0.113.9", 4444), ("10.0.0.1", 993)) + b"\x16\x03\x01")
    assert h is not None and h.source == ("203.0.113.9", 4444)
    assert h.length == 16 + 12
    h6 = parse(build_v2(("2001:db8::9", 1), ("2001:db8::1", 25)))
    assert h6 is not None and h6.source == ("2001:db8::9", 1)
    local = parse(V2_SIGNATURE + b"\x20\x00\x00\x00")
    assert local is not None and local.source is None and local.length == 16
    assert parse(build_v2(("203.0.113.9", 4444), ("10.0.0.1", 993))[:20]) is None


@given(st.binary(max_size=300))
def test_parse_never_raises_anything_else(data: bytes) -> None:
    try:
        h = parse(data)
    except ProxyHeaderError:
        return
    if h is not None:
        assert 0 < h.length <= len(data)


@given(
    st.ip_addresses(v=4).map(str),
    st.integers(1, 65535),
)
def test_roundtrip_v1_v2(ip: str, port: int) -> None:
    for build in (build_v1, build_v2):
        h = parse(build((ip, port), ("192.0.2.1", 25)))
        assert h is not None and h.source == (ip, port)
