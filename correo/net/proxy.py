"""PROXY protocol v1 and v2 headers (HAProxy's spec, "The PROXY protocol", 2020-03-05).

A TCP load balancer in front of several correo nodes prepends a header that names the
real client. Sans-I/O: :func:`parse` looks at the bytes received so far and answers with
the header and its length, ``None`` when more bytes are needed, or raises
:class:`ProxyHeaderError`. The runner accepts a header only from the networks in
``[listen] proxy_protocol_from``; from anyone else the bytes are ordinary protocol input.

Limits: a v1 header is at most 107 octets (spec §2.1); a v2 header's address block is at
most :data:`MAX_V2_LENGTH` octets here (TLVs are skipped, not interpreted).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107
MAX_V2_LENGTH = 1024


class ProxyHeaderError(ValueError):
    """The balancer sent something that is not a valid PROXY header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    length: int
    """Octets the header occupies at the start of the stream."""
    source: tuple[str, int] | None
    """The real client (address, port); None for v1 UNKNOWN / v2 LOCAL (health checks)."""
    destination: tuple[str, int] | None = None


def parse(data: bytes) -> ProxyHeader | None:
    """Parse a header at the start of ``data``; None if incomplete."""
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    if not data:
        return None
    raise ProxyHeaderError("no PROXY header from a configured balancer")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    if not b"PROXY "[: len(data)].startswith(data[:6]):
        raise ProxyHeaderError("not a PROXY v1 header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("PROXY v1 header longer than 107 octets")
        return None
    try:
        parts = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header is not ASCII") from None
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(end + 2, None)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 header")
    _, family, src, dst, sport, dport = parts
    try:
        s_ip, d_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        s_port, d_port = int(sport), int(dport)
    except ValueError:
        raise ProxyHeaderError("bad address or port in PROXY v1 header") from None
    if (family == "TCP4") != (s_ip.version == 4) or s_ip.version != d_ip.version:
        raise ProxyHeaderError("PROXY v1 address family mismatch")
    if not (0 < s_port < 65536 and 0 < d_port < 65536):
        raise ProxyHeaderError("PROXY v1 port out of range")
    return ProxyHeader(end + 2, (str(s_ip), s_port), (str(d_ip), d_port))


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyHeaderError("not a PROXY v2 header")
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("not a PROXY v2 header")
    ver_cmd, fam, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError("unsupported PROXY version")
    if length > MAX_V2_LENGTH:
        raise ProxyHeaderError("PROXY v2 header too long")
    total = 16 + length
    if len(data) < total:
        return None
    command = ver_cmd & 0x0F
    if command == 0:  # LOCAL: the balancer's own connection (health check)
        return ProxyHeader(total, None)
    if command != 1:
        raise ProxyHeaderError("unknown PROXY v2 command")
    body = data[16:total]
    if fam == 0x11:  # TCP over IPv4
        if length < 12:
            raise ProxyHeaderError("short PROXY v2 IPv4 block")
        src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
    elif fam == 0x21:  # TCP over IPv6
        if length < 36:
            raise ProxyHeaderError("short PROXY v2 IPv6 block")
        src6, dst6 = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
        src4 = src6.ipv4_mapped
        return ProxyHeader(total, (str(src4 or src6), sport), (str(dst6), dport))
    elif fam == 0x00:  # UNSPEC
        return ProxyHeader(total, None)
    else:
        raise ProxyHeaderError("PROXY v2: only TCP over IPv4/IPv6 is accepted")
    return ProxyHeader(total, (str(src), sport), (str(dst), dport))


def build_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 header (used by tests and benchmarks that play the balancer)."""
    fam = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {fam} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def build_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    s, d = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    fam = 0x11 if s.version == 4 else 0x21
    body = s.packed + d.packed + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body
