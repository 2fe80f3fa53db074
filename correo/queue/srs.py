"""Sender Rewriting Scheme for forwarded mail, and Delivered-To loop detection.

When an alias forwards a message to another domain, the envelope sender is rewritten
to an address of ours so the destination's SPF check (RFC 7208) looks at our IP
against our domain, and bounces still find their way back (Shevek's SRS, as in
libsrs2/postsrsd):

* ``alice@example.org`` forwarded by ``fwd.test`` →
  ``SRS0=HHHH=TT=example.org=alice@fwd.test``
* an SRS0 address of another forwarder ``SRS0=HHHH=TT=example.org=alice@first.test``
  forwarded again → ``SRS1=GGGG=first.test==HHHH=TT=example.org=alice@fwd.test``
  (the first forwarder still undoes its own part).

``TT`` is the day number (days since the epoch, mod 1024) in two base32 characters;
``HHHH`` is the first four base64 characters of HMAC-SHA1 over the rest, keyed with
``[relay] srs_secret``. :func:`reverse` checks both (a stale or forged address is
refused) so we cannot be used as an open bounce relay.

A forwarded copy carries ``Delivered-To: <alias>``; seeing our own alias in a message
we are asked to forward again means a forwarding loop (:func:`is_loop`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
MAX_AGE_DAYS = 21
"""Bounces to an SRS address older than this are refused (libsrs2's default)."""
_SEP = "=+-"


class SrsError(ValueError):
    """Not a valid SRS address of ours (bad hash, too old, malformed)."""


def _day(now: float) -> int:
    return int(now // 86400) % 1024


def _timestamp(now: float) -> str:
    day = _day(now)
    return _B32[day >> 5] + _B32[day & 31]


def _hash(secret: str, *parts: str) -> str:
    mac = hmac.new(secret.encode(), "".join(parts).lower().encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()[:4]


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise SrsError(f"not an address: {address!r}")
    return local, domain


def forward(sender: str, forwarder: str, secret: str, now: float | None = None) -> str:
    """The envelope sender to use when ``forwarder`` (our domain) forwards the mail.

    The null sender stays null; a sender already in ``forwarder`` is kept.
    """
    if not sender:
        return sender
    if not secret:
        raise SrsError("[relay] srs_secret is not set")
    local, domain = _split(sender)
    if domain.lower() == forwarder.lower():
        return sender
    prefix = local[:4].upper()
    if prefix in ("SRS0", "SRS1") and len(local) > 5 and local[4] in _SEP:
        rest = local[5:]
        if prefix == "SRS1":
            # SRS1=HHHH=first==rest: keep the first hop, re-sign for us
            fields = rest.split("=", 2)
            if len(fields) < 3:
                raise SrsError(f"malformed SRS1 address: {sender!r}")
            first, tail = fields[1], fields[2]
        else:
            first, tail = domain, local[4:]
            tail = tail.lstrip(_SEP)
            tail = "=" + tail
        return f"SRS1={_hash(secret, first, tail)}={first}={tail}@{forwarder}"
    ts = _timestamp(time.time() if now is None else now)
    return f"SRS0={_hash(secret, ts, domain, local)}={ts}={domain}={local}@{forwarder}"


def is_srs(address: str) -> bool:
    local = address.rpartition("@")[0]
    return local[:4].upper() in ("SRS0", "SRS1") and len(local) > 5 and local[4] in _SEP


def reverse(address: str, secret: str, now: float | None = None) -> str:
    """The address a bounce to our SRS ``address`` must go to; :class:`SrsError` when it
    is not one of ours, forged or older than :data:`MAX_AGE_DAYS`."""
    local, _domain = _split(address)
    if not is_srs(address):
        raise SrsError(f"not an SRS address: {address!r}")
    kind, rest = local[:4].upper(), local[5:]
    if kind == "SRS1":
        m = re.fullmatch(r"([^=]{4})=([^=]+)=(.*)", rest)
        if m is None:
            raise SrsError(f"malformed SRS1 address: {address!r}")
        hash_, first, tail = m.groups()
        if not hmac.compare_digest(hash_.lower(), _hash(secret, first, tail).lower()):
            raise SrsError("SRS1 hash does not match")
        return f"SRS0{tail}@{first}"
    m = re.fullmatch(r"([^=]{4})=([^=]{2})=([^=]+)=(.+)", rest)
    if m is None:
        raise SrsError(f"malformed SRS0 address: {address!r}")
    hash_, ts, domain, orig = m.groups()
    if not hmac.compare_digest(hash_.lower(), _hash(secret, ts, domain, orig).lower()):
        raise SrsError("SRS0 hash does not match")
    try:
        then = _B32.index(ts[0].upper()) * 32 + _B32.index(ts[1].upper())
    except ValueError:
        raise SrsError("bad SRS0 timestamp") from None
    age = (_day(time.time() if now is None else now) - then) % 1024
    # 1023 is "made tomorrow": another node whose clock is a little ahead (libsrs2
    # accepts future stamps too); anything else past MAX_AGE_DAYS is stale
    if MAX_AGE_DAYS < age < 1023:
        raise SrsError(f"SRS0 address is {age} days old")
    return f"{orig}@{domain}"


_DELIVERED_TO_RE = re.compile(rb"^delivered-to:[ \t]*(.*?)\r?$", re.IGNORECASE | re.MULTILINE)


def delivered_to(message: bytes) -> set[str]:
    """Lower-cased addresses of every ``Delivered-To:`` field in the message header."""
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    return {
        m.group(1).decode("utf-8", "replace").strip().strip("<>").lower()
        for m in _DELIVERED_TO_RE.finditer(head)
    }


def is_loop(message: bytes, address: str) -> bool:
    """True when ``message`` already went through ``address`` (a forwarding loop)."""
    return address.lower() in delivered_to(message)


def forward_prefix(alias: str) -> bytes:
    """The header line a forwarded copy gets, so a loop through us is seen next time."""
    return f"Delivered-To: {alias}\r\n".encode()
