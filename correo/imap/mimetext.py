"""Byte-level MIME helpers shared by FETCH and SEARCH: header fields, encoded words,
transfer encodings and charsets.

Pure functions on bytes; no store, no ``email`` package policy objects (DESIGN.md
principle 3: the message was parsed once at delivery; these helpers only cut and decode
the ranges that metadata points at).

* Header fields (RFC 5322 §2.2, §2.2.3 folding) for ``BODY[HEADER.FIELDS (...)]``
  (RFC 3501 §6.4.5) and SEARCH HEADER (RFC 3501 §6.4.4).
* Encoded words (RFC 2047 §2-§6; RFC 2231 §5 language suffix tolerated).
* Content-Transfer-Encoding base64 / quoted-printable (RFC 2045 §6.7, §6.8), both whole
  and incremental so large parts are decoded in chunks.
* Charsets: any Python codec; unknown labels fall back to UTF-8 with replacement.
"""

from __future__ import annotations

import binascii
import codecs
import re
from collections.abc import Iterable
from dataclasses import dataclass

from correo.mail.headers import decode_words, readable, to_text

# --------------------------------------------------------------------------- header fields


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field with its original bytes (folded lines and line ends kept)."""

    name: bytes
    """The field name as written (no colon); a malformed line without a colon has its
    whole text here and never matches a field name."""
    raw: bytes
    """The field's lines exactly as in the message, including every line end."""

    @property
    def value(self) -> bytes:
        """The unfolded value (RFC 5322 §2.2.3): line ends inside removed, ends trimmed."""
        colon = self.raw.find(b":")
        if colon < 0:
            return b""
        body = self.raw[colon + 1 :]
        return _FOLD.sub(b"", body).strip(b" \t\r\n")


_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_LINE = re.compile(rb"[^\n]*(?:\n|$)")


def header_fields(header: bytes) -> list[HeaderField]:
    """Split a header block into fields; stops at the first empty line.

    A continuation line (starting with SP or HTAB) belongs to the field before it; a
    continuation before any field is kept as a field of its own so nothing is lost."""
    fields: list[HeaderField] = []
    name = b""
    lines: list[bytes] = []
    for m in _LINE.finditer(header):
        line = m.group()
        if not line:
            break
        if line in (b"\r\n", b"\n"):
            break
        if line[0] in b" \t" and lines:
            lines.append(line)
            continue
        if lines:
            fields.append(HeaderField(name, b"".join(lines)))
        colon = line.find(b":")
        name = line[:colon].rstrip(b" \t") if colon >= 0 else line.rstrip(b"\r\n")
        lines = [line]
    if lines:
        fields.append(HeaderField(name, b"".join(lines)))
    return fields


def header_has_blank_line(header: bytes) -> bool:
    """Whether a header block ends with the empty line separating it from the body."""
    return header.endswith(b"\n\n") or header.endswith(b"\r\n\r\n") or header in (b"\r\n", b"\n")


def select_fields(header: bytes, names: Iterable[str], *, exclude: bool) -> bytes:
    """``HEADER.FIELDS`` / ``HEADER.FIELDS.NOT`` subsetting (RFC 3501 §6.4.5).

    Field names match case-insensitively but otherwise exactly; the selected fields keep
    their original lines (folding included) and the delimiting blank line is appended
    unless the header had none (a message with no body and no blank line)."""
    wanted = {n.lower().encode("ascii", "replace") for n in names}
    out = [
        f.raw
        for f in header_fields(header)
        if (f.name.lower() in wanted and b":" in f.raw) != exclude
    ]
    if out and not out[-1].endswith(b"\n"):
        out.append(b"\r\n")
    if header_has_blank_line(header):
        out.append(b"\r\n")
    return b"".join(out)


# --------------------------------------------------------------------------- encoded words


def decode_header_value(raw: bytes | str) -> str:
    """Decode a header value for search: 8-bit octets as UTF-8 (RFC 6532) or, where they
    are not UTF-8, as ISO-8859-1 (as the delivery-time header index does), encoded words
    (RFC 2047, via ``correo.mail.headers.decode_words``: adjacent words joined, §6.2),
    folding removed. Never raises."""
    text = raw if isinstance(raw, str) else readable(to_text(raw))
    if "\n" in text:
        text = _UNFOLD_TEXT.sub("", text)
    if "=?" not in text:
        return text
    return decode_words(text)


_UNFOLD_TEXT = re.compile(r"\r?\n(?=[ \t])")


# --------------------------------------------------------------------------- charsets

_ALIASES = {
    "us-ascii": "utf-8",  # 8-bit octets in "ASCII" parts are nearly always UTF-8
    "ascii": "utf-8",
    "unknown-8bit": "utf-8",
    "x-unknown": "utf-8",
    "iso-8859-8-i": "iso-8859-8",
    "gb2312": "gb18030",  # a superset; senders labelled GBK/GB18030 text as GB2312
    "gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
}


def codec_for(charset: str | None) -> str:
    """A Python codec name for a MIME charset label; UTF-8 when unknown or absent."""
    if not charset:
        return "utf-8"
    label = charset.strip().strip('"').lower()
    label = _ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return "utf-8"


def decode_charset(data: bytes, charset: str | None) -> str:
    """Decode text in ``charset``, replacing undecodable octets (never raises)."""
    try:
        return data.decode(codec_for(charset), "replace")
    except (LookupError, UnicodeError):  # codecs with odd failure modes (utf-7)
        return data.decode("utf-8", "replace")


# --------------------------------------------------------------------------- transfer encodings


def transfer_decode(data: bytes, cte: str | None) -> bytes:
    """Undo a Content-Transfer-Encoding (RFC 2045 §6); identity for 7bit/8bit/binary and
    unknown encodings. Malformed base64 is decoded as far as possible."""
    enc = (cte or "").strip().lower()
    if enc == "base64":
        return _b64(_B64_JUNK.sub(b"", data))
    if enc == "quoted-printable":
        return binascii.a2b_qp(data)
    return data


_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")


def _b64(data: bytes, *, final: bool = True) -> bytes:
    """Lenient base64 (RFC 2045 §6.8: characters outside the alphabet are ignored; a
    truncated final quantum is decoded as far as it goes). ``data`` is already clean."""
    whole = len(data) - len(data) % 4
    out = binascii.a2b_base64(data[:whole]) if whole else b""
    rest = data[whole:]
    if final and len(rest) >= 2:
        out += binascii.a2b_base64(rest + b"=" * (4 - len(rest)))
    return out


class TransferDecoder:
    """Incremental :func:`transfer_decode` for parts read in chunks."""

    def __init__(self, cte: str | None) -> None:
        self.encoding = (cte or "").strip().lower()
        self._pending = b""

    def feed(self, chunk: bytes, final: bool = False) -> bytes:
        if self.encoding == "base64":
            data = self._pending + _B64_JUNK.sub(b"", chunk)
            cut = len(data) if final else len(data) - len(data) % 4
            self._pending = data[cut:]
            return _b64(data[:cut], final=final)
        if self.encoding == "quoted-printable":
            data = self._pending + chunk
            cut = len(data) if final else data.rfind(b"\n") + 1
            self._pending = data[cut:]
            return binascii.a2b_qp(data[:cut]) if cut else b""
        return chunk


class TextDecoder:
    """A part's body to text, chunk by chunk: transfer decoding then charset decoding,
    both incremental (a base64 quantum or a multi-octet character may straddle chunks)."""

    def __init__(self, cte: str | None, charset: str | None) -> None:
        self._transfer = TransferDecoder(cte)
        self._charset = codecs.getincrementaldecoder(codec_for(charset))("replace")

    def feed(self, chunk: bytes, final: bool = False) -> str:
        return self._charset.decode(self._transfer.feed(chunk, final), final)
