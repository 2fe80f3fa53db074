"""Header field helpers: splitting, unfolding, RFC 2047 encoded-words, MIME parameters.

Header text is handled as ``str`` decoded from UTF-8 with ``surrogateescape``: raw 8-bit
UTF-8 (RFC 6532) comes through as itself and any other octet ``0xNN`` as the lone
surrogate ``U+DCNN``, so the original bytes can always be recovered
(:func:`text_to_bytes`) and nothing here ever raises on malformed input.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import codecs
import email.utils
import re
from urllib.parse import quote as _pct_quote

__all__ = [
    "decode_words",
    "encode_param_2231",
    "encode_words",
    "has_surrogates",
    "imap_text",
    "parse_date",
    "parse_params",
    "readable",
    "split_header_block",
    "strip_crlf",
    "text_to_bytes",
    "to_text",
    "unfold",
]

_FOLD_RE = re.compile(rb"\r?\n(?=[ \t])")
_CRLF_RE = re.compile(r"[\r\n]")
_SURROGATE_RE = re.compile("[\udc80-\udcff]")
_NON_ASCII_RE = re.compile("[^\x00-\x7f]")


def to_text(value: bytes) -> str:
    """Bytes → str: ASCII fast path, else UTF-8 with surrogateescape (lossless)."""
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return value.decode("utf-8", "surrogateescape")


def text_to_bytes(text: str) -> bytes:
    """Inverse of :func:`to_text`: the original octets."""
    return text.encode("utf-8", "surrogateescape")


def has_surrogates(text: str) -> bool:
    return _SURROGATE_RE.search(text) is not None


def _latin1_surrogates(text: str) -> str:
    """Undecodable octets (lone surrogates) read as ISO-8859-1 characters."""
    return _SURROGATE_RE.sub(lambda m: chr(ord(m.group()) - 0xDC00), text)


def readable(text: str) -> str:
    """Text safe to encode as UTF-8 (search index, encoded-word downgrade)."""
    return _latin1_surrogates(text) if has_surrogates(text) else text


def unfold(value: bytes) -> bytes:
    """RFC 5322 §2.2.3: remove the CRLF of folded lines (the WSP stays)."""
    if b"\n" not in value:
        return value
    return _FOLD_RE.sub(b"", value).replace(b"\r", b"").replace(b"\n", b"")


# RFC 5322 §2.2: field = field-name ":" unstructured CRLF, with folded continuation lines.
_FIELD_RE = re.compile(rb"^([^:\s][^:\r\n]*):[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.M)


def split_header_block(block: bytes) -> list[tuple[bytes, bytes]]:
    """Split a header block (CRLF lines, no blank line) into (name, raw value).

    RFC 5322 §2.2: a field is ``name ":" value CRLF`` with continuation lines beginning
    with WSP. The raw value keeps its folding but loses the leading WSP after the colon
    and the final CRLF. Lines that are not fields (no colon, a leading ``From `` mbox line,
    a continuation before any field) are skipped, as most servers do; a name with
    trailing WSP (``Subject :``, RFC 5322 §4.5 obs-optional) is trimmed.
    """
    fields: list[tuple[bytes, bytes]] = _FIELD_RE.findall(block)
    if b" :" not in block and b"\t:" not in block:
        return fields  # no name can end with WSP (the usual case)
    for i, (name, value) in enumerate(fields):
        if name[-1] in b" \t":
            fields[i] = (name.rstrip(b" \t"), value)
    return fields


# --------------------------------------------------------------------------- RFC 2047

# RFC 2047 §2: encoded-word = "=?" charset "?" encoding "?" encoded-text "?="
# (RFC 2231 §5 adds "*language" after the charset.)
_EW_RE = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_WS_ONLY_RE = re.compile(r"[ \t\r\n]*\Z")


def _ew_bytes(enc: str, text: str) -> bytes:
    """Octets of an encoded-text: "B" (RFC 2047 §4.1, lenient padding) or "Q" (§4.2)."""
    raw = text.encode("ascii", "ignore")
    if enc in "bB":
        try:
            return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))
        except binascii.Error:
            # A stray extra character: decode the whole quanta that are there.
            try:
                return binascii.a2b_base64(raw.rstrip(b"=")[: len(raw.rstrip(b"=")) // 4 * 4])
            except binascii.Error:
                return b""
    return binascii.a2b_qp(raw, header=True)


def _decode_charset(raw: bytes, charset: str) -> str | None:
    try:
        codecs.lookup(charset)
    except (LookupError, ValueError):
        if charset.lower() in ("unknown-8bit", "x-unknown"):
            return raw.decode("utf-8", "replace")
        return None
    try:
        return raw.decode(charset, "replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return None


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded-words anywhere in ``text``.

    Whitespace between adjacent encoded-words is dropped (RFC 2047 §6.2); adjacent words
    in the same charset are joined before decoding, so a multi-octet character split
    across two words (a common sender bug) still decodes. Unknown charsets leave the word
    as it was; bad octets become U+FFFD. Never raises.
    """
    if "=?" not in text:
        return text
    out: list[str] = []
    pos = 0
    run: list[bytes] = []
    run_charset = ""
    run_start = 0
    for m in _EW_RE.finditer(text):
        gap = text[pos : m.start()]
        charset = m.group(1).lower()
        joinable = bool(run) and _WS_ONLY_RE.match(gap) is not None
        if joinable and charset == run_charset:
            run.append(_ew_bytes(m.group(2), m.group(3)))
            pos = m.end()
            continue
        if run:
            decoded = _decode_charset(b"".join(run), run_charset)
            out.append(decoded if decoded is not None else text[run_start:pos])
        if not joinable:
            out.append(gap)
        run_charset, run_start = charset, m.start()
        run = [_ew_bytes(m.group(2), m.group(3))]
        pos = m.end()
    if run:
        decoded = _decode_charset(b"".join(run), run_charset)
        out.append(decoded if decoded is not None else text[run_start:pos])
    out.append(text[pos:])
    return "".join(out)


def encode_words(text: str) -> str:
    """RFC 2047 §4.1 "B" encoded-words (UTF-8) for text that is not ASCII.

    Used for the RFC 6857 downgrade when a client has not enabled UTF8=ACCEPT. Each
    word stays within 75 characters (RFC 2047 §2) and never splits a character.
    """
    if not _NON_ASCII_RE.search(text):
        return text
    text = readable(text)
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    # 75 - len("=?utf-8?b??=") = 63 base64 chars → 45 octets per word (48 b64 chars).
    for ch in text:
        n = len(ch.encode("utf-8"))
        if size + n > 45:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(ch)
        size += n
    if chunk:
        words.append("".join(chunk))
    return " ".join(
        "=?utf-8?b?" + base64.b64encode(w.encode("utf-8")).decode("ascii") + "?=" for w in words
    )


def imap_text(text: str, utf8: bool) -> str | bytes:
    """A header-derived string for the IMAP encoder.

    With ``utf8`` (RFC 9051 / UTF8=ACCEPT, RFC 6855) raw UTF-8 is kept; undecodable
    octets come back as the original ``bytes``. Without it, non-ASCII text becomes
    RFC 2047 encoded-words (RFC 6857 §3 downgrade). NUL, which no IMAP string may
    carry (RFC 3501 §9 CHAR8), is dropped.
    """
    if "\x00" in text:
        text = text.replace("\x00", "")
    if text.isascii():
        return text
    if utf8:
        return text_to_bytes(text) if has_surrogates(text) else text
    return encode_words(text)


# --------------------------------------------------------------------------- parameters

# RFC 2045 §5.1: parameter := attribute "=" value, value := token / quoted-string.
_PARAM_RE = re.compile(r';\s*([^\s=;"]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"?|[^;]*))?', re.S)
_QP_RE = re.compile(r"\\(.)", re.S)
_SECTION_RE = re.compile(r"^(.*?)\*(\d+)(\*?)$|^(.*?)(\*)$")
_PCT_SPLIT_RE = re.compile(r"(%[0-9A-Fa-f]{2})")
_COMMENT_RE = re.compile(r"\([^()]*\)")


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"'):
        value = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
        return _QP_RE.sub(r"\1", value) if "\\" in value else value
    return value


def _pct_decode(value: str) -> bytes:
    """RFC 2231 §4 ``%XX`` octets; anything else (including a bad ``%ZZ``) kept as is."""
    out = bytearray()
    for i, piece in enumerate(_PCT_SPLIT_RE.split(value)):
        if i % 2:
            out.append(int(piece[1:], 16))
        elif piece:
            out += text_to_bytes(piece)
    return bytes(out)


def parse_params(value: str) -> tuple[str, list[tuple[str, str]]]:
    """Parse ``main; a=b; c="d"`` (Content-Type, Content-Disposition).

    RFC 2045 §5.1 syntax; RFC 2231 §3-4 continuations (``name*0``, ``name*1*``) and
    charset/language (``name*=utf-8'en'%E2%82%AC``) are decoded into a plain value under
    the plain name. Names are lower-cased; values keep their case; order is that of first
    appearance. Returns the lower-cased main value and the parameters.
    """
    semi = value.find(";")
    if semi < 0:
        main, rest = value, ""
    else:
        main, rest = value[:semi], value[semi:]
    if "(" in main:
        main = _COMMENT_RE.sub("", main)
    main = main.strip().lower()
    if not rest:
        return main, []
    plain: dict[str, str] = {}
    order: list[str] = []
    sections: dict[str, list[tuple[int, bool, str]]] = {}
    for m in _PARAM_RE.finditer(rest):
        name = m.group(1).lower()
        raw = m.group(2) or ""
        if "*" not in name:
            if name not in plain:
                plain[name] = _unquote(raw)
                if name not in sections:
                    order.append(name)
            continue
        sm = _SECTION_RE.match(name)
        if sm is None:
            continue
        if sm.group(1) is not None:
            base, num, ext = sm.group(1), int(sm.group(2)), bool(sm.group(3))
        else:
            base, num, ext = sm.group(4), 0, True
        if not base:
            continue
        if base not in sections and base not in plain:
            order.append(base)
        sections.setdefault(base, []).append((num, ext, _unquote(raw)))
    params: list[tuple[str, str]] = []
    for name in order:
        if name in sections:
            params.append((name, _join_sections(sections[name])))
        else:
            params.append((name, plain[name]))
    return main, params


def _join_sections(secs: list[tuple[int, bool, str]]) -> str:
    """RFC 2231 §3-4: join numbered sections; the first extended one names the charset."""
    secs.sort(key=lambda s: s[0])
    charset = ""
    out = bytearray()
    for i, (_num, ext, val) in enumerate(secs):
        if ext:
            if i == 0:
                pieces = val.split("'", 2)
                if len(pieces) == 3:
                    charset, _lang, val = pieces
            out += _pct_decode(val)
        else:
            out += text_to_bytes(val)
    if charset:
        decoded = _decode_charset(bytes(out), charset)
        if decoded is not None:
            return decoded
    return to_text(bytes(out))


def encode_param_2231(value: str) -> str:
    """RFC 2231 §4 ``utf-8''%XX`` form of a non-ASCII parameter value (downgrade)."""
    return "utf-8''" + _pct_quote(readable(value).encode("utf-8"), safe="")


# --------------------------------------------------------------------------- dates


# RFC 5322 §3.3 date-time as virtually every client writes it, e.g.
# "Fri, 27 Nov 2026 09:27:46 +0000 (UTC)": [day-of-week ","] day month year
# hour ":" minute ":" second zone, single spaces, anything after the zone ignored.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {name: number for number, name in enumerate(_MONTHS, 1)}
_DATE_RE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?([0-9]{1,2}) ("
    + "|".join(_MONTHS)
    + r") ([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})(?= |\Z)"
)


def _parse_common_date(value: str) -> int | None:
    """:func:`parse_date` for the common form above, computed as ``email.utils`` would
    (``parsedate_tz`` then ``mktime_tz``), or None when ``value`` is not in that form."""
    m = _DATE_RE.match(value)
    if m is None:
        return None
    day, month, year, hour, minute, second, sign, zh, zm = m.groups()
    yy = int(year)
    if yy < 100:  # parsedate_tz's two-digit years, kept for the same answer
        yy += 1900 if yy > 68 else 2000
    offset = int(zh) * 3600 + int(zm) * 60
    if sign == "-":
        offset = -offset
    stamp = calendar.timegm(
        (yy, _MONTH_NUMBER[month], int(day), int(hour), int(minute), int(second))
    )
    return stamp - offset


def parse_date(value: str) -> int | None:
    """RFC 5322 §3.3 date-time (and obsolete forms) → seconds since the epoch, or None."""
    if not value:
        return None
    try:
        common = _parse_common_date(value)
        if common is not None:
            return common
        parsed = email.utils.parsedate_tz(readable(value))
        if parsed is None:
            return None
        return int(email.utils.mktime_tz(parsed))
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def strip_crlf(text: str) -> str:
    """Remove stray CR/LF characters (values given to IMAP must be single-line)."""
    return _CRLF_RE.sub("", text) if ("\r" in text or "\n" in text) else text
