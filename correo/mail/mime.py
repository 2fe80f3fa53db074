"""The MIME tree of a message: a light boundary scanner and BODYSTRUCTURE rendering.

One pass over the CRLF-normalised message records, for every entity, the offsets of its
header and body (so any ``BODY[section]`` is a slice of the stored blob) and the fields
RFC 3501 §7.4.2 / RFC 9051 §7.5.2 report. Work is bounded: nesting deeper than
:data:`MAX_DEPTH` or more than :data:`MAX_PARTS` entities end the descent (the rest is
reported as opaque ``application/octet-stream``), so hostile input costs at most
``MAX_DEPTH`` scans of the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from correo.mail.envelope import Envelope, build_envelope, render_envelope
from correo.mail.headers import (
    encode_param_2231,
    encode_words,
    imap_text,
    parse_params,
    split_header_block,
    strip_crlf,
    to_text,
    unfold,
)

__all__ = ["MAX_DEPTH", "MAX_PARTS", "BodyPart", "parse_entity", "render_body"]

MAX_DEPTH = 50
"""Deepest multipart / message nesting followed (RFC 2046 sets none; we bound the work)."""
MAX_PARTS = 10_000
"""Most entities recorded per message."""

Param = tuple[str, str]
_DEFAULT_PARAMS: tuple[Param, ...] = (("charset", "us-ascii"),)


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One MIME entity (RFC 2045 §2.4) with its byte offsets in the message.

    ``header_start``..``body_start`` is the header including the blank line
    (``BODY[n.MIME]``), ``body_start``..``body_end`` the body (``BODY[n]``). A multipart
    has ``parts``; a message/rfc822 (or message/global) has ``message`` (the encapsulated
    message as an entity, its header starting at this part's ``body_start``) and
    ``envelope``.
    """

    type: str
    subtype: str
    params: tuple[Param, ...]
    id: str | None
    description: str | None
    encoding: str
    """Lower-cased Content-Transfer-Encoding, "7bit" by default (RFC 2045 §6.1)."""
    size: int
    lines: int | None
    """Text lines of the body, for text/* and message/rfc822|global; None otherwise."""
    md5: str | None
    disposition: str | None
    disposition_params: tuple[Param, ...]
    language: tuple[str, ...]
    location: str | None
    header_start: int
    body_start: int
    body_end: int
    parts: tuple[BodyPart, ...] = ()
    message: BodyPart | None = None
    envelope: Envelope | None = None

    @property
    def is_multipart(self) -> bool:
        return bool(self.parts)

    @property
    def is_message(self) -> bool:
        return self.message is not None

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return None

    # Compact JSON form: a positional list (see ``correo.mail.message``).
    def to_obj(self) -> list[Any]:
        return [
            self.type,
            self.subtype,
            [list(p) for p in self.params],
            self.id,
            self.description,
            self.encoding,
            self.size,
            self.lines,
            self.md5,
            self.disposition,
            [list(p) for p in self.disposition_params],
            list(self.language),
            self.location,
            self.header_start,
            self.body_start,
            self.body_end,
            [p.to_obj() for p in self.parts],
            None if self.message is None else self.message.to_obj(),
            None if self.envelope is None else self.envelope.to_obj(),
        ]

    @classmethod
    def from_obj(cls, o: Sequence[Any]) -> BodyPart:
        return cls(
            o[0],
            o[1],
            tuple((str(k), str(v)) for k, v in o[2]),
            o[3],
            o[4],
            o[5],
            o[6],
            o[7],
            o[8],
            o[9],
            tuple((str(k), str(v)) for k, v in o[10]),
            tuple(o[11]),
            o[12],
            o[13],
            o[14],
            o[15],
            tuple(cls.from_obj(p) for p in o[16]),
            None if o[17] is None else cls.from_obj(o[17]),
            None if o[18] is None else Envelope.from_obj(o[18]),
        )


# --------------------------------------------------------------------------- scanning


class ParseState:
    """Per-message scanning state: the data, the entity budget, 8-bit header flag."""

    __slots__ = ("data", "header_8bit", "parts")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.parts = 0
        self.header_8bit = False


_INTEREST = frozenset(
    (
        b"content-type",
        b"content-transfer-encoding",
        b"content-id",
        b"content-description",
        b"content-disposition",
        b"content-language",
        b"content-location",
        b"content-md5",
    )
)
_OPTIONAL = frozenset(
    (
        b"content-id",
        b"content-description",
        b"content-language",
        b"content-location",
        b"content-md5",
    )
)
_MESSAGE_SUBTYPES = frozenset(("rfc822", "global"))


def _value(raw: bytes) -> str:
    return strip_crlf(to_text(unfold(raw))).strip()


def _count_lines(data: bytes, start: int, end: int) -> int:
    if end <= start:
        return 0
    n = data.count(b"\n", start, end)
    return n if data[end - 1] == 0x0A else n + 1


def _split_multipart(data: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """RFC 2046 §5.1.1: body-part ranges between ``--boundary`` delimiter lines.

    The CRLF before a delimiter belongs to the delimiter; a delimiter line may carry
    trailing whitespace (transport padding) and nothing else. A missing close delimiter
    ends the last part at the end of the body.
    """
    delim = b"--" + boundary
    ranges: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    while True:
        idx = data.find(delim, pos, end)
        if idx < 0:
            break
        if idx != start and (idx - 2 < start or data[idx - 2 : idx] != b"\r\n"):
            pos = idx + 1
            continue
        after = idx + len(delim)
        close = data.startswith(b"--", after) and after + 2 <= end
        if close:
            after += 2
        eol = data.find(b"\r\n", after, end)
        line_end = end if eol < 0 else eol
        if data[after:line_end].strip(b" \t"):
            pos = idx + 1
            continue
        if part_start >= 0:
            # Adjacent delimiter lines share one CRLF: the part between them is empty.
            ranges.append((part_start, max(part_start, idx - 2)))
        if close:
            return ranges
        part_start = end if eol < 0 else eol + 2
        pos = part_start
    if part_start >= 0:
        ranges.append((part_start, end))
    return ranges


def parse_entity(
    st: ParseState,
    start: int,
    end: int,
    depth: int = 0,
    in_digest: bool = False,
    no_header: bool = False,
) -> tuple[BodyPart, list[tuple[bytes, bytes]]]:
    """Parse the entity in ``data[start:end]``: its header fields and body tree.

    Returns the part and the raw header fields (for the envelope and header index).
    RFC 2045 §5.2: a missing or invalid Content-Type is text/plain; charset=us-ascii,
    except inside multipart/digest where it is message/rfc822 (RFC 2046 §5.1.5).
    """
    data = st.data
    st.parts += 1
    if no_header:
        body_start = start
        fields: list[tuple[bytes, bytes]] = []
    else:
        if data.startswith(b"\r\n", start) and start + 2 <= end:
            body_start = start + 2
            block = b""
        else:
            blank = data.find(b"\r\n\r\n", start, end)
            if blank < 0:
                body_start = end
                block = data[start:end]
            else:
                body_start = blank + 4
                block = data[start : blank + 2]
        if not block.isascii():
            st.header_8bit = True
        fields = split_header_block(block) if block else []

    found: dict[bytes, bytes] = {}
    for name, raw in fields:
        if len(name) > 9 and name[7] == 0x2D:  # "content-..."
            key = name.lower()
            if key in _INTEREST and key not in found:
                found[key] = raw

    ctype: str
    subtype: str
    params: tuple[Param, ...]
    raw_ct = found.get(b"content-type")
    main, plist = ("", []) if raw_ct is None else parse_params(_value(raw_ct))
    slash = main.find("/")
    if raw_ct is not None and 0 < slash < len(main) - 1 and " " not in main:
        ctype, subtype, params = main[:slash], main[slash + 1 :], tuple(plist)
        if ctype == "text" and not any(k == "charset" for k, _ in params):
            params = (*params, *_DEFAULT_PARAMS)
    elif in_digest:
        ctype, subtype, params = "message", "rfc822", ()
    else:
        ctype, subtype, params = "text", "plain", _DEFAULT_PARAMS

    raw_cte = found.get(b"content-transfer-encoding")
    encoding = _value(raw_cte).lower() if raw_cte is not None else ""
    if not encoding or " " in encoding:
        encoding = "7bit"

    rest = {k: _value(v) for k, v in found.items() if k in _OPTIONAL}
    disposition: str | None = None
    disposition_params: tuple[Param, ...] = ()
    raw_cd = found.get(b"content-disposition")
    if raw_cd is not None:
        dmain, dparams = parse_params(_value(raw_cd))
        if dmain:
            disposition, disposition_params = dmain, tuple(dparams)
    lang = rest.get(b"content-language")
    language = tuple(x.strip() for x in lang.split(",") if x.strip()) if lang else ()

    children: tuple[BodyPart, ...] = ()
    message: BodyPart | None = None
    envelope: Envelope | None = None
    if ctype == "multipart":
        boundary = next((v for k, v in params if k == "boundary"), "")
        if not boundary:
            # RFC 2046 §5.1.1 requires a boundary; without one there is no structure.
            ctype, subtype, params = "text", "plain", _DEFAULT_PARAMS
        elif depth >= MAX_DEPTH or st.parts >= MAX_PARTS:
            ctype, subtype, params = "application", "octet-stream", ()
        else:
            kids: list[BodyPart] = []
            bnd = boundary.encode("utf-8", "surrogateescape")
            digest = subtype == "digest"
            for cs, ce in _split_multipart(data, body_start, end, bnd):
                if st.parts >= MAX_PARTS:
                    break
                kids.append(parse_entity(st, cs, ce, depth + 1, digest)[0])
            if not kids:
                # No delimiter at all: the whole body as one header-less text part.
                kids.append(parse_entity(st, body_start, end, depth + 1, no_header=True)[0])
            children = tuple(kids)
    elif ctype == "message" and subtype in _MESSAGE_SUBTYPES:
        if depth >= MAX_DEPTH or st.parts >= MAX_PARTS:
            ctype, subtype, params = "application", "octet-stream", ()
        else:
            message, inner_fields = parse_entity(st, body_start, end, depth + 1)
            envelope = build_envelope(inner_fields)

    lines = None
    if ctype == "text" or message is not None:
        lines = _count_lines(data, body_start, end)

    part = BodyPart(
        type=ctype,
        subtype=subtype,
        params=params,
        id=rest.get(b"content-id"),
        description=rest.get(b"content-description"),
        encoding=encoding,
        size=end - body_start,
        lines=lines,
        md5=rest.get(b"content-md5"),
        disposition=disposition,
        disposition_params=disposition_params,
        language=language,
        location=rest.get(b"content-location"),
        header_start=start,
        body_start=body_start,
        body_end=end,
        parts=children,
        message=message,
        envelope=envelope,
    )
    return part, fields


# --------------------------------------------------------------------------- rendering


def _params(params: tuple[Param, ...], utf8: bool) -> list[str | bytes] | None:
    """body-fld-param (RFC 3501 §9): NIL or (name value ...). Without UTF-8, a non-ASCII
    value is sent in RFC 2231 §4 form under ``name*`` (RFC 6857 §3.2)."""
    if not params:
        return None
    out: list[str | bytes] = []
    for name, value in params:
        if value.isascii() or utf8:
            out.append(imap_text(name.upper(), utf8))
            out.append(imap_text(value, True))
        else:
            out.append(encode_words(name.upper()) + "*")
            out.append(encode_param_2231(value))
    return out


def _extension(part: BodyPart, utf8: bool) -> list[Any]:
    """body-fld-dsp, body-fld-lang, body-fld-loc (RFC 3501 §7.4.2)."""
    dsp = (
        None
        if part.disposition is None
        else [imap_text(part.disposition.upper(), utf8), _params(part.disposition_params, utf8)]
    )
    lang: Any
    if not part.language:
        lang = None
    elif len(part.language) == 1:
        lang = imap_text(part.language[0], utf8)
    else:
        lang = [imap_text(x, utf8) for x in part.language]
    loc = None if part.location is None else imap_text(part.location, utf8)
    return [dsp, lang, loc]


def render_body(part: BodyPart, extended: bool, utf8: bool) -> list[Any]:
    """BODY (``extended`` False) or BODYSTRUCTURE (RFC 3501 §7.4.2, RFC 9051 §7.5.2)."""
    if part.parts:
        out: list[Any] = [render_body(p, extended, utf8) for p in part.parts]
        out.append(imap_text(part.subtype.upper(), utf8))
        if extended:
            out.append(_params(part.params, utf8))
            out.extend(_extension(part, utf8))
        return out
    opt = imap_text
    out = [
        opt(part.type.upper(), utf8),
        opt(part.subtype.upper(), utf8),
        _params(part.params, utf8),
        None if part.id is None else opt(part.id, utf8),
        None if part.description is None else opt(part.description, utf8),
        opt(part.encoding.upper(), utf8),
        part.size,
    ]
    if part.message is not None and part.envelope is not None:
        out.append(render_envelope(part.envelope, utf8))
        out.append(render_body(part.message, extended, utf8))
        out.append(part.lines or 0)
    elif part.type == "text":
        out.append(part.lines or 0)
    if extended:
        out.append(None if part.md5 is None else opt(part.md5, utf8))
        out.extend(_extension(part, utf8))
    return out
