"""Modified UTF-7 for IMAP mailbox names (RFC 3501 §5.1.3).

Printable US-ASCII (0x20-0x7e) stands for itself except ``&``, written ``&-``; any other
run of characters is UTF-16BE, base64 with ``,`` in place of ``/`` and no padding,
between ``&`` and ``-``. :func:`decode` is strict: it refuses what RFC 3501 says an
encoder "MUST NOT" produce (printable ASCII inside a shifted run, two adjacent shifted
runs, non-zero padding bits, lone surrogates), so every name has exactly one spelling
and ``encode(decode(s)) == s`` for every accepted ``s``.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode", "encode"]


def _flush(run: list[str], out: list[str]) -> None:
    if run:
        raw = "".join(run).encode("utf-16-be")
        out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
        run.clear()


def encode(name: str) -> str:
    """The modified UTF-7 spelling of ``name`` (RFC 3501 §5.1.3)."""
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            _flush(run, out)
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    _flush(run, out)
    return "".join(out)


def _decode_run(b64: str) -> str:
    if not b64:
        raise ValueError("empty shifted sequence (use '&-' for '&')")
    if "=" in b64 or "/" in b64:
        raise ValueError("'/' or '=' inside a modified base64 run")
    pad = -len(b64) % 4
    if pad == 3:
        raise ValueError("truncated modified base64 run")
    try:
        raw = base64.b64decode(b64.replace(",", "/") + "=" * pad, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad modified base64: {exc}") from None
    if len(raw) % 2:
        raise ValueError("odd number of UTF-16 octets")
    # Reject non-zero padding bits: re-encoding must give the same text back.
    if base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") != b64:
        raise ValueError("non-zero padding bits in modified base64")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError:
        raise ValueError("invalid UTF-16 (lone surrogate)") from None
    if any(0x20 <= ord(c) <= 0x7E for c in text):
        raise ValueError("printable US-ASCII must not be base64-encoded")
    return text


def decode(name: str | bytes) -> str:
    """The Unicode name for a modified UTF-7 ``name``; ValueError if it is not valid."""
    if isinstance(name, bytes):
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("8-bit octet in a modified UTF-7 name") from None
    out: list[str] = []
    i, n = 0, len(name)
    last_run_end = -1
    while i < n:
        ch = name[i]
        if not 0x20 <= ord(ch) <= 0x7E:
            raise ValueError(f"character {ord(ch):#x} must be encoded")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated '&' shifted sequence")
        if end == i + 1:
            out.append("&")
        else:
            if last_run_end == i:
                raise ValueError("adjacent shifted sequences must be merged")
            out.append(_decode_run(name[i + 1 : end]))
            last_run_end = end + 1
        i = end + 1
    return "".join(out)
