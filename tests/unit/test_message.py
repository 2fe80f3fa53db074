"""Parse-once metadata: ENVELOPE, BODYSTRUCTURE, sections, header index (correo.mail)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correo.mail.envelope import (
    MAX_ADDRESSES,
    MAX_FIELD_CHARS,
    MISSING_DOMAIN,
    parse_address_list,
)
from correo.mail.headers import (
    decode_words,
    encode_words,
    imap_text,
    parse_date,
    parse_params,
    split_header_block,
)
from correo.mail.message import (
    HEADER_INDEX_LIMIT,
    MessageMeta,
    bodystructure,
    envelope_structure,
    normalize_crlf,
    parse,
    prepare,
    section_range,
)
from correo.mail.mime import MAX_DEPTH, MAX_PARTS, BodyPart
from correo.store.base import IncomingMessage

CORPUS = Path(__file__).parent / "corpus"


def load(name: str) -> tuple[bytes, MessageMeta]:
    inc = prepare((CORPUS / name).read_bytes())
    return inc.data, MessageMeta.from_json(inc.meta)


def section(data: bytes, meta: MessageMeta, part: tuple[int, ...], kind: str = "") -> bytes | None:
    r = section_range(meta, part, kind)
    return None if r is None else data[r[0] : r[1]]


US_ASCII = ["CHARSET", "us-ascii"]


def text_part(subtype: str, size: int, lines: int, params: list[str] | None = None) -> list[Any]:
    return ["TEXT", subtype, params or US_ASCII, None, None, "7BIT", size, lines]


def ext(
    part: list[Any], md5: Any = None, dsp: Any = None, lang: Any = None, loc: Any = None
) -> list[Any]:
    return [*part, md5, dsp, lang, loc]


def addr(
    mailbox: str, host: str | None, name: str | None = None, adl: str | None = None
) -> list[str | None]:
    return [name, adl, mailbox, host]


# --------------------------------------------------------------------------- the corpus


def test_corpus_has_enough_messages() -> None:
    assert len(list(CORPUS.glob("*.eml"))) >= 10


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.eml")), ids=lambda p: p.name)
def test_corpus_roundtrip_and_ranges(path: Path) -> None:
    inc = prepare(path.read_bytes())
    meta = MessageMeta.from_json(inc.meta)
    assert meta.to_json() == inc.meta  # stable, lossless
    assert meta.size == len(inc.data)
    assert inc.sha256 == hashlib.sha256(inc.data).hexdigest()
    for utf8 in (True, False):
        bodystructure(meta, True, utf8)
        bodystructure(meta, False, utf8)
        envelope_structure(meta, utf8)
    assert_ranges_valid(meta)


def test_bare_lf_message() -> None:
    data, meta = load("01-bare-lf.eml")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert envelope_structure(meta, True) == [
        "Tue, 03 Nov 2026 09:30:00 +0100",
        "plain, LF line ends",
        [addr("alice", "example.org", "Alice")],
        [addr("alice", "example.org", "Alice")],
        [addr("alice", "example.org", "Alice")],
        [addr("bob", "example.net")],
        None,
        None,
        None,
        "<lf-1@example.org>",
    ]
    assert bodystructure(meta, False, True) == text_part("PLAIN", 22, 2)
    assert section(data, meta, (), "TEXT") == b"Line one.\r\nLine two.\r\n"
    assert section(data, meta, (1,)) == b"Line one.\r\nLine two.\r\n"
    assert section(data, meta, (1,), "MIME") == section(data, meta, (), "HEADER")
    assert section(data, meta, (), "HEADER").endswith(b"\r\n\r\n")  # type: ignore[union-attr]
    assert section(data, meta, (2,)) is None
    assert section(data, meta, (1, 1)) is None
    assert section(data, meta, (1,), "HEADER") is None  # not message/rfc822
    assert meta.date == 1793694600
    assert not meta.has_8bit_headers and not meta.body_8bit


def test_nested_message_rfc822() -> None:
    data, meta = load("02-nested-rfc822.eml")
    inner_env = [
        "Mon, 02 Nov 2026 08:00:00 -0500",
        "report",
        [addr("carol", "example.com", "Carol")],
        [addr("carol", "example.com", "Carol")],
        [addr("carol", "example.com", "Carol")],
        [addr("fwd", "example.org", "Fwd")],
        None,
        None,
        None,
        "<inner@example.com>",
    ]
    assert bodystructure(meta, True, True) == [
        ext(text_part("PLAIN", 13, 1, ["CHARSET", "utf-8"])),
        ext(
            [
                "MESSAGE",
                "RFC822",
                None,
                None,
                "forwarded message",
                "7BIT",
                372,
                inner_env,
                [
                    ext(text_part("PLAIN", 8, 1)),
                    ext(text_part("HTML", 15, 1)),
                    "ALTERNATIVE",
                    ["BOUNDARY", "inner"],
                    None,
                    None,
                    None,
                ],
                17,
            ]
        ),
        "MIXED",
        ["BOUNDARY", "outer"],
        None,
        None,
        None,
    ]
    # BODY (non-extended) drops extension data at every level, inner message included.
    assert bodystructure(meta, False, True) == [
        text_part("PLAIN", 13, 1, ["CHARSET", "utf-8"]),
        [
            "MESSAGE",
            "RFC822",
            None,
            None,
            "forwarded message",
            "7BIT",
            372,
            inner_env,
            [text_part("PLAIN", 8, 1), text_part("HTML", 15, 1), "ALTERNATIVE"],
            17,
        ],
        "MIXED",
    ]
    # RFC 3501 §6.4.5 section numbering.
    assert section(data, meta, (1,)) == b"See attached."
    assert section(data, meta, (1,), "MIME") == b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    whole = section(data, meta, (2,))
    assert (
        whole is not None and whole.startswith(b"From: Carol") and whole.endswith(b"--inner--\r\n")
    )
    assert len(whole) == 372
    assert section(data, meta, (2,), "MIME") == (
        b"Content-Type: message/rfc822\r\nContent-Description: forwarded message\r\n\r\n"
    )
    header = section(data, meta, (2,), "HEADER")
    assert header is not None and header.startswith(b"From: Carol") and header.endswith(b"\r\n\r\n")
    text = section(data, meta, (2,), "TEXT")
    assert text is not None and text.startswith(b"--inner\r\n")
    assert header + text == whole
    assert section(data, meta, (2, 1)) == b"Numbers."
    assert section(data, meta, (2, 2)) == b"<p>Numbers.</p>"
    assert (
        section(data, meta, (2, 2), "MIME") == b"Content-Type: text/html; charset=us-ascii\r\n\r\n"
    )
    assert section(data, meta, (2, 3)) is None
    assert section(data, meta, (3,)) is None
    assert section(data, meta, (0,)) is None
    assert section(data, meta, (), "MIME") is None
    assert section(data, meta, (1,), "TEXT") is None
    assert section(data, meta, (), "BOGUS") is None
    assert section(data, meta, ()) == data


def test_alternative_inside_mixed_with_extension_fields() -> None:
    data, meta = load("03-alternative-in-mixed.eml")
    utf8 = ["CHARSET", "UTF-8"]
    qp = "QUOTED-PRINTABLE"
    assert bodystructure(meta, True, True) == [
        [
            ["TEXT", "PLAIN", utf8, None, None, qp, 19, 1, None, None, None, None],
            ["TEXT", "HTML", utf8, None, None, qp, 26, 1, None, None, None, None],
            "ALTERNATIVE",
            ["BOUNDARY", "==alt=="],
            None,
            None,
            None,
        ],
        [
            "APPLICATION",
            "PDF",
            ["NAME", "invoice.pdf"],
            "<pdf@example.com>",
            None,
            "BASE64",
            12,
            None,
            ["ATTACHMENT", ["FILENAME", "invoice.pdf", "SIZE", "12"]],
            ["en", "de"],
            "http://example.com/invoice.pdf",
        ],
        "MIXED",
        ["BOUNDARY", "==mixed=="],
        None,
        None,
        None,
    ]
    assert section(data, meta, (1, 1)) == b"Total: 10 =E2=82=AC"
    assert section(data, meta, (1, 2)) == b"<b>Total: 10 =E2=82=AC</b>"
    assert section(data, meta, (2,)) == b"JVBERi0xLjQK"
    assert section(data, meta, (1, 3)) is None
    assert section(data, meta, (1,), "MIME") == (
        b'Content-Type: multipart/alternative; boundary="==alt=="\r\n\r\n'
    )
    # A folded Content-Type parameter is found.
    assert meta.body.param("boundary") == "==mixed=="


def test_encoded_words_kept_raw_in_envelope_decoded_in_index() -> None:
    _, meta = load("04-encoded-words.eml")
    env = envelope_structure(meta, False)
    assert env[1] == (
        "=?utf-8?b?w4Bww6lyaXRpZg==?= =?utf-8?q?_et_fromage?= =?iso-8859-1?q?_=E0_volont=E9?="
    )
    assert env[2] == [addr("joerg", "example.de", "=?utf-8?q?J=C3=B6rg_M=C3=BCller?=")]
    # Group syntax: start (NIL NIL name NIL), end (NIL NIL NIL NIL) — RFC 3501 §7.4.2.
    assert env[5] == [[None, None, "Undisclosed recipients", None], [None, None, None, None]]
    assert env[6] == [
        addr("andre", "example.fr", "=?iso-8859-1?q?Andr=E9?="),
        addr("jane", "example.com", "Doe, Jane"),
    ]
    assert meta.header_values("Subject") == ("Àpéritif et fromage à volonté",)
    assert meta.header_values("FROM") == ("Jörg Müller <joerg@example.de>",)
    assert meta.header_values("cc") == ('André <andre@example.fr>, "Doe, Jane" <jane@example.com>',)
    assert meta.header_values("x-missing") == ()


def test_rfc2231_parameters() -> None:
    _, meta = load("05-rfc2231.eml")
    att, txt = meta.body.parts
    assert att.params == (("name", "€ rates for 2026.txt"),)
    assert att.disposition == "attachment"
    assert att.disposition_params == (("filename", "résumé.txt"),)
    assert txt.params == (("charset", "us-ascii"), ("title", "long title"), ("format", "Flowed"))
    assert bodystructure(meta, True, True)[0] == [
        "APPLICATION",
        "OCTET-STREAM",
        ["NAME", "€ rates for 2026.txt"],
        None,
        None,
        "BASE64",
        4,
        None,
        ["ATTACHMENT", ["FILENAME", "résumé.txt"]],
        None,
        None,
    ]
    # Without UTF8=ACCEPT the values go back to RFC 2231 form (RFC 6857).
    down = bodystructure(meta, True, False)[0]
    assert down[2] == ["NAME*", "utf-8''%E2%82%AC%20rates%20for%202026.txt"]
    assert down[8] == ["ATTACHMENT", ["FILENAME*", "utf-8''r%C3%A9sum%C3%A9.txt"]]


def test_missing_headers_and_no_trailing_crlf() -> None:
    data, meta = load("06-missing-headers.eml")
    assert envelope_structure(meta, True) == [None] * 10
    assert meta.date is None
    assert bodystructure(meta, True, True) == ext(text_part("PLAIN", 40, 2))
    assert section(data, meta, (), "TEXT") == b"Just a body\r\nwithout a trailing line end"


def test_8bit_headers_utf8_and_downgrade() -> None:
    _, meta = load("07-8bit-headers.eml")
    assert meta.has_8bit_headers and meta.body_8bit
    env = envelope_structure(meta, True)
    assert env[1] == "Grüße aus Köln"
    assert env[2] == [addr("jörg", "bücher.example", "Jörg")]
    assert env[5] == [addr("zoe", "example.net", "Zoë")]
    down = envelope_structure(meta, False)
    assert down[1] == "=?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?="
    assert decode_words(down[1]) == "Grüße aus Köln"
    # A UTF-8 local part cannot be downgraded: it becomes an empty group (RFC 6857).
    assert down[2][1] == [None, None, None, None]
    assert down[2][0][3] is None
    assert decode_words(down[2][0][2]) == "Jörg <jörg@bücher.example>"
    assert down[5] == [addr("zoe", "example.net", "=?utf-8?b?Wm/Dqw==?=")]
    assert bodystructure(meta, False, False) == [
        "TEXT",
        "PLAIN",
        ["CHARSET", "utf-8"],
        None,
        None,
        "8BIT",
        18,
        1,
    ]
    for v in flatten(down):
        assert v is None or isinstance(v, int) or (isinstance(v, str) and v.isascii())


def test_unterminated_multipart() -> None:
    data, meta = load("08-no-trailing-crlf.eml")
    assert bodystructure(meta, False, True) == [
        text_part("PLAIN", 5, 1),
        text_part("PLAIN", 44, 1),
        "MIXED",
    ]
    assert section(data, meta, (1,)) == b"first"
    assert section(data, meta, (2,)) == b"second, no close delimiter and no final CRLF"
    assert not data.endswith(b"\r\n")


def test_empty_body_and_headers_only() -> None:
    data, meta = load("09-empty-body.eml")
    assert meta.header_end == meta.size == len(data)
    assert bodystructure(meta, False, True) == text_part("PLAIN", 0, 0)
    assert section(data, meta, (), "TEXT") == b""
    data, meta = load("10-headers-only.eml")
    assert meta.header_end == meta.size
    assert section(data, meta, (), "HEADER") == data
    assert envelope_structure(meta, True)[1] == "no blank line, no body"


def test_digest_defaults_to_message_rfc822() -> None:
    data, meta = load("11-digest.eml")
    bs = bodystructure(meta, False, True)
    assert bs[0][:7] == ["MESSAGE", "RFC822", None, None, None, "7BIT", 42]
    assert bs[0][7][1] == "first"
    assert bs[0][8] == text_part("PLAIN", 3, 1)
    assert bs[0][9] == 4
    assert bs[1] == text_part("PLAIN", 13, 1)
    assert bs[2] == "DIGEST"
    assert section(data, meta, (1,), "HEADER") == b"From: a@example.org\r\nSubject: first\r\n\r\n"
    assert section(data, meta, (1, 1)) == b"one"
    assert section(data, meta, (1,), "MIME") == b"\r\n"


def test_groups_routes_comments() -> None:
    _, meta = load("12-groups-routes.eml")
    env = envelope_structure(meta, True)
    assert env[2] == [
        addr("jqp", "example.com", "John Q. Public", "@relay1.example,@relay2.example")
    ]
    assert env[3] == [addr("secretary", "example.com", "The Secretary")]
    assert env[4] == [
        [None, None, "Team", None],
        addr("ann", "example.com"),
        addr("bob", "example.com", "Bob B"),
        [None, None, None, None],
        addr('"quoted local"', "example.com"),
    ]
    assert env[5] == [addr("root", MISSING_DOMAIN)]
    assert env[7] is None  # empty Bcc:
    assert env[8] == "<a@example.com>"
    assert env[9] == "<m@example.com>"


def test_raw_latin1_headers() -> None:
    _, meta = load("13-latin1-raw.eml")
    assert meta.has_8bit_headers
    env = envelope_structure(meta, True)
    assert env[1] == b"caf\xe9 cr\xe8me"  # not UTF-8: the original octets
    assert env[2] == [[b"Ren\xe9", None, "rene", "example.fr"]]
    down = envelope_structure(meta, False)
    assert decode_words(down[1]) == "café crème"
    assert meta.header_values("subject") == ("café crème",)


def test_three_level_nesting() -> None:
    data, meta = load("14-nested-depth.eml")
    bs = bodystructure(meta, False, True)
    assert bs == [
        [
            [text_part("PLAIN", 9, 1), text_part("HTML", 11, 1), "ALTERNATIVE"],
            ["IMAGE", "PNG", None, "<img1>", None, "BASE64", 12],
            "RELATED",
        ],
        "MIXED",
    ]
    assert section(data, meta, (1, 1, 2)) == b"<i>deep</i>"
    assert section(data, meta, (1, 2), "MIME") == (
        b"Content-Type: image/png\r\nContent-ID: <img1>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    assert section(data, meta, (1, 1, 3)) is None
    assert section(data, meta, (1, 1, 1, 1)) is None


def test_boundary_edge_cases() -> None:
    data, meta = load("15-boundary-tricks.eml")
    assert len(meta.body.parts) == 1
    assert section(data, meta, (1,)) == b"after padded delimiter"


def test_adjacent_delimiters_give_an_empty_part() -> None:
    # Regression (found by Hypothesis): the end offset came before the start.
    data = b"Content-Type: multipart/a; boundary=b\r\n\r\n--b\r\n--b\r\nx\r\n--b--"
    meta = parse(data)
    assert [section(data, meta, (i,)) for i in (1, 2)] == [b"", b""]
    assert section(data, meta, (2,), "MIME") == b"x"  # no blank line: all header
    assert_ranges_valid(meta)


def test_multipart_without_boundary_is_text() -> None:
    _, meta = load("16-no-boundary.eml")
    assert bodystructure(meta, False, True) == text_part("PLAIN", 44, 5)


def test_message_global() -> None:
    data, meta = load("17-message-global.eml")
    bs = bodystructure(meta, False, True)
    assert bs[:2] == ["MESSAGE", "GLOBAL"]
    assert bs[7][1] == "¿Qué?"
    assert bs[7][2] == [addr("manana", "example.es", "Mañana")]
    assert meta.has_8bit_headers
    assert section(data, meta, (1,), "TEXT") == b"cuerpo\r\n"
    assert section(data, meta, (1, 1)) == b"cuerpo\r\n"


# --------------------------------------------------------------------------- prepare


def test_normalize_crlf() -> None:
    crlf = b"a\r\nb\r\n"
    assert normalize_crlf(crlf) is crlf
    assert normalize_crlf(b"a\nb\n") == b"a\r\nb\r\n"
    assert normalize_crlf(b"a\r\nb\nc\r\n") == b"a\r\nb\r\nc\r\n"
    assert normalize_crlf(b"lone\rcr") == b"lone\rcr"
    assert normalize_crlf(b"") == b""


def test_json_format_is_stable() -> None:
    # The stored format: changing it needs META_VERSION bumped (and old rows re-parsed).
    meta = parse(
        b"From: A <a@b>\r\nSubject: hi\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\nbody\r\n"
    )
    assert meta.to_json() == (
        b'{"v":1,"size":74,"hend":68,"date":760686745,"h8":false,"b8":false,'
        b'"env":["Mon, 7 Feb 1994 21:52:25 -0800","hi",[["A",null,"a","b"]],'
        b'[["A",null,"a","b"]],[["A",null,"a","b"]],null,null,null,null,null],'
        b'"body":["text","plain",[["charset","us-ascii"]],null,null,"7bit",6,1,null,null,'
        b"[],[],null,0,68,74,[],null,null],"
        b'"hdrs":{"from":["A <a@b>"],"subject":["hi"],"date":["Mon, 7 Feb 1994 21:52:25 -0800"]}}'
    )
    with pytest.raises(ValueError, match="version"):
        MessageMeta.from_json(meta.to_json().replace(b'"v":1', b'"v":0'))
    with pytest.raises(ValueError):
        MessageMeta.from_json(b"[]")


def test_prepare_hash_and_data() -> None:
    inc = prepare(b"Subject: x\n\nbody\n")
    assert inc.data == b"Subject: x\r\n\r\nbody\r\n"
    assert inc.sha256 == hashlib.sha256(inc.data).hexdigest()
    assert MessageMeta.from_json(inc.meta).header_end == 14


def test_the_blob_name_is_derived_never_given() -> None:
    """The digest naming a content-addressed body cannot disagree with the body: it is
    computed from the data, and no caller can pass one (so stores need not re-hash)."""
    msg = IncomingMessage(b"body\r\n", b"{}")
    assert msg.sha256 == hashlib.sha256(b"body\r\n").hexdigest()
    with pytest.raises(TypeError):
        IncomingMessage(b"body\r\n", b"{}", "0" * 64)  # type: ignore[call-arg]


def test_sender_and_reply_to_default_to_from() -> None:
    meta = parse(b"From: a@b\r\nSender:\r\nReply-To: r@b\r\n\r\n")
    env = envelope_structure(meta, True)
    assert env[3] == [addr("a", "b")]
    assert env[4] == [addr("r", "b")]
    meta = parse(b"Subject: no from\r\n\r\n")
    assert envelope_structure(meta, True)[2:5] == [None, None, None]


def test_present_but_empty_fields_are_empty_strings() -> None:
    # RFC 3501 §7.4.2: absent → NIL, present but empty → "".
    meta = parse(b"Subject:\r\nMessage-ID: \r\nDate:\r\n\r\n")
    env = envelope_structure(meta, True)
    assert (env[0], env[1], env[8], env[9]) == ("", "", None, "")
    assert meta.date is None


def test_first_header_wins_and_index_keeps_all() -> None:
    meta = parse(b"Subject: one\r\nSubject: two\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert envelope_structure(meta, True)[1] == "one"
    assert meta.header_values("subject") == ("one", "two")
    assert meta.header_values("X-A") == ("1", "2")


def test_folded_header_unfolded() -> None:
    meta = parse(b"Subject: a\r\n  long\r\n\tsubject\r\n\r\n")
    assert envelope_structure(meta, True)[1] == "a  long\tsubject"
    assert meta.header_values("subject") == ("a  long\tsubject",)


def test_header_index_is_bounded() -> None:
    big = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"v" * 100) for i in range(2000))
    meta = parse(big + b"Subject: late\r\n\r\nbody")
    total = sum(len(k) + sum(len(v) for v in vs) for k, vs in meta.headers.items())
    assert total <= HEADER_INDEX_LIMIT
    assert meta.header_values("subject") == ()
    assert envelope_structure(meta, True)[1] == "late"  # the envelope is not bounded by it


def test_huge_address_header_is_bounded() -> None:
    to = b"To: " + b", ".join(b"u%d@example.org" % i for i in range(30_000)) + b"\r\n"
    group = b"Cc: g: " + b"a@b, " * 30_000 + b";\r\n"
    meta = parse(b"Subject: " + b"s" * 200_000 + b"\r\n" + to + group + b"\r\nbody")
    env = envelope_structure(meta, True)
    assert len(env[1]) == MAX_FIELD_CHARS
    assert 0 < len(env[5]) <= MAX_ADDRESSES
    assert 0 < len(env[6]) <= MAX_ADDRESSES + 1


def test_content_type_edge_cases() -> None:
    def ct(value: bytes) -> BodyPart:
        return parse(b"Content-Type: " + value + b"\r\n\r\nx").body

    assert (ct(b"TEXT/HTML").type, ct(b"TEXT/HTML").subtype) == ("text", "html")
    assert ct(b"TEXT/HTML").params == (("charset", "us-ascii"),)
    assert ct(b"garbage").type == "text"  # RFC 2045 §5.2
    assert ct(b"image/").subtype == "plain"
    assert ct(b"image/png (a comment)").subtype == "png"
    assert ct(b'text/plain; charset="utf-8"; charset=latin1').params == (("charset", "utf-8"),)
    p = parse(b"Content-Transfer-Encoding: BASE64\r\n\r\nx").body
    assert p.encoding == "base64"
    assert parse(b"\r\nbody").header_end == 2


def test_language_single_and_multiple() -> None:
    one = parse(b"Content-Language: en\r\n\r\nx")
    assert bodystructure(one, True, True)[-2] == "en"
    two = parse(b"Content-Language: en, fr\r\n\r\nx")
    assert bodystructure(two, True, True)[-2] == ["en", "fr"]


def test_depth_is_capped() -> None:
    n = MAX_DEPTH + 20
    head = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(n)
    )
    tail = b"".join(b"\r\n--b%d--" % i for i in range(n, -1, -1))
    data = (
        b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
        + head
        + b"--b%d\r\n\r\nleaf" % n
        + tail
    )
    meta = parse(data)
    depth, part = 0, meta.body
    while part.parts:
        part = part.parts[0]
        depth += 1
    assert depth == MAX_DEPTH
    assert (part.type, part.subtype) == ("application", "octet-stream")
    assert_ranges_valid(meta)
    MessageMeta.from_json(meta.to_json())
    bodystructure(meta, True, True)


def test_part_count_is_capped() -> None:
    n = MAX_PARTS + 500
    data = (
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
        + b"--x\r\n\r\np\r\n" * n
        + b"--x--\r\n"
    )
    meta = parse(data)
    assert len(meta.body.parts) == MAX_PARTS - 1
    assert section_range(meta, (MAX_PARTS,), "") is None


def test_deeply_nested_message_rfc822_is_capped() -> None:
    data = b"x"
    for _ in range(MAX_DEPTH + 10):
        data = b"Content-Type: message/rfc822\r\n\r\n" + data
    meta = parse(data)
    bodystructure(meta, True, False)
    assert_ranges_valid(meta)


# --------------------------------------------------------------------------- header helpers


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("=?utf-8?q?caf=C3=A9?=", "café"),
        ("=?UTF-8?B?Y2Fmw6k=?=", "café"),
        ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # RFC 2047 §6.2 whitespace between words
        ("=?utf-8?q?a?=\r\n =?utf-8?q?b?=", "ab"),
        ("x =?utf-8?q?a?= y", "x a y"),
        ("=?utf-8?q?a_b?=", "a b"),
        ("=?utf-8?b?w6k?=", "é"),  # missing padding
        ("=?utf-8?q?=C3?= =?utf-8?q?=A9?=", "é"),  # character split across two words
        ("=?iso-8859-1?q?caf=E9?= =?utf-8?q?=C3=A9?=", "caféé"),
        ("=?utf-8*en?q?hi?=", "hi"),  # RFC 2231 §5 language
        ("=?x-unknown-cs?q?hi?=", "=?x-unknown-cs?q?hi?="),
        ("=?utf-8?q?bad=FF?=", "bad\ufffd"),
        ("no words", "no words"),
        ("=?utf-8?x?nope?=", "=?utf-8?x?nope?="),
    ],
)
def test_decode_words(raw: str, decoded: str) -> None:
    assert decode_words(raw) == decoded


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_encode_words_roundtrip(text: str) -> None:
    encoded = encode_words(text)
    assert encoded.isascii()
    if text.isascii():
        assert encoded == text
    else:
        assert all(len(w) <= 75 for w in encoded.split(" "))
        assert decode_words(encoded) == text


def test_encode_words_non_ascii_roundtrip() -> None:
    text = "Grüße " * 30
    assert decode_words(encode_words(text)) == text


def test_imap_text() -> None:
    assert imap_text("plain", False) == "plain"
    assert imap_text("é", True) == "é"
    assert imap_text("é", False) == "=?utf-8?b?w6k=?="
    assert imap_text("\udce9", True) == b"\xe9"


@pytest.mark.parametrize(
    ("value", "main", "params"),
    [
        ("text/plain", "text/plain", []),
        ('Text/Plain; Charset="UTF-8"', "text/plain", [("charset", "UTF-8")]),
        ("a/b; x=1;y=2 ;z = 3", "a/b", [("x", "1"), ("y", "2"), ("z", "3")]),
        ('a/b; q="with \\"quote\\" and ;"', "a/b", [("q", 'with "quote" and ;')]),
        ('a/b; u="unterminated', "a/b", [("u", "unterminated")]),
        ("a/b; name*=''plain%20text", "a/b", [("name", "plain text")]),
        ("a/b; n*1=b; n*0=a; n*2=c", "a/b", [("n", "abc")]),  # out of order sections
        ("a/b; n=plain; n*=utf-8''%C3%A9", "a/b", [("n", "é")]),
        ("a/b; n*=bogus-cs''%41", "a/b", [("n", "A")]),
        ("a/b; n*=''%ZZ%41", "a/b", [("n", "%ZZA")]),  # regression: bad escape raised
        ("a/b; ; ;", "a/b", []),
        ("attachment", "attachment", []),
    ],
)
def test_parse_params(value: str, main: str, params: list[tuple[str, str]]) -> None:
    assert parse_params(value) == (main, params)


def test_parse_date() -> None:
    assert parse_date("Mon, 7 Feb 1994 21:52:25 -0800") == 760686745
    assert parse_date("7 Feb 1994 21:52:25 GMT") == 760657945
    assert parse_date("not a date") is None
    assert parse_date("") is None
    assert parse_date("Mon, 99 Foo 99999999999 99:99:99 +9999") is None


def test_split_header_block() -> None:
    block = b"From mbox line\r\n cont\r\nA: 1\r\n 2\r\nbad line\r\nB :x\r\nC:\r\n"
    assert split_header_block(block) == [(b"A", b"1\r\n 2"), (b"B", b"x"), (b"C", b"")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a@b", [(None, None, "a", "b")]),
        ("A <a@b>, c@d", [("A", None, "a", "b"), (None, None, "c", "d")]),
        ('"A, B" <a@b>', [("A, B", None, "a", "b")]),
        ('"A \\"Q\\"" <a@b>', [('A "Q"', None, "a", "b")]),
        ("A  B <a@b>", [("A B", None, "a", "b")]),
        ("a@b (Comment (nested))", [("Comment (nested)", None, "a", "b")]),
        ("<@x,@y:a@b>", [(None, "@x,@y", "a", "b")]),
        ("g:;", [(None, None, "g", None), (None, None, None, None)]),
        ("g: a@b;", [(None, None, "g", None), (None, None, "a", "b"), (None, None, None, None)]),
        ("user", [(None, None, "user", MISSING_DOMAIN)]),
        ('"a b"@c', [(None, None, '"a b"', "c")]),
        ('"ab"@c', [(None, None, "ab", "c")]),
        ("a@[1.2.3.4]", [(None, None, "a", "[1.2.3.4]")]),
        ("", []),
        (" , ,", []),
        ("a@b,, c@d", [(None, None, "a", "b"), (None, None, "c", "d")]),
        ("John Q. Public <j@q>", [("John Q. Public", None, "j", "q")]),
    ],
)
def test_parse_address_list(value: str, expected: list[tuple[Any, ...]]) -> None:
    assert [tuple(a.to_list()) for a in parse_address_list(value)] == expected


# --------------------------------------------------------------------------- properties


def flatten(obj: Any) -> list[Any]:
    if isinstance(obj, list):
        return [y for x in obj for y in flatten(x)]
    return [obj]


def all_parts(meta: MessageMeta) -> list[tuple[tuple[int, ...], BodyPart]]:
    """Every addressable (section path, part) pair."""
    out: list[tuple[tuple[int, ...], BodyPart]] = []

    def walk(prefix: tuple[int, ...], entity: BodyPart) -> None:
        if entity.parts:
            for i, child in enumerate(entity.parts, 1):
                out.append(((*prefix, i), child))
                if child.parts:
                    walk((*prefix, i), child)
                elif child.message is not None:
                    walk((*prefix, i), child.message)
        else:
            out.append(((*prefix, 1), entity))
            if entity.message is not None and not prefix:
                walk((1,), entity.message)

    walk((), meta.body)
    return out


def assert_ranges_valid(meta: MessageMeta) -> None:
    for kind in ("", "HEADER", "TEXT"):
        r = section_range(meta, (), kind)
        assert r is not None and 0 <= r[0] <= r[1] <= meta.size
    for path, _part in all_parts(meta)[:500]:
        for kind in ("", "HEADER", "TEXT", "MIME"):
            r = section_range(meta, path, kind)
            if r is not None:
                assert 0 <= r[0] <= r[1] <= meta.size, (path, kind, r)


mime_like = st.lists(
    st.sampled_from(
        [
            b"Content-Type: multipart/mixed; boundary=a\r\n",
            b'Content-Type: multipart/alternative; boundary="b"\r\n',
            b"Content-Type: message/rfc822\r\n",
            b"Content-Type: multipart/digest; boundary=a\r\n",
            b"Content-Type: text/plain; name*0*=utf-8''%E2; name*1=x\r\n",
            b"Subject: =?utf-8?q?x?=\r\n",
            b"From: a <b@c>, d:e@f;\r\n",
            b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n",
            b"--a\r\n",
            b"--a--\r\n",
            b"--b\r\n",
            b"--b--\r\n",
            b"\r\n",
            b"\n",
            b"text\r\n",
            b" folded\r\n",
            b"\xc3\xa9\xff\r\n",
            b"Subject: nul\x00here\r\nFrom: a\x00b@\x00c\r\n",
            b"Cc: <@a,:>;;::<<>>@@\r\n",
            b'To: "\\\r\n',
            b"Content-Transfer-Encoding: \xc3\xa9\r\n",
            b"Content-Disposition: \xff; filename*0*=a%ZZ\r\n",
            b"Content-Language: ,,\xff\r\n",
            b"Content-Type: \xc3\xa9/\xff\r\n",
        ]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=2000), mime_like))
def test_prepare_never_raises_and_ranges_are_inside(data: bytes) -> None:
    # parse() itself, not only prepare(): prepare's safety net must never be needed.
    parse(normalize_crlf(data))
    inc = prepare(data)
    meta = MessageMeta.from_json(inc.meta)
    assert meta.size == len(inc.data)
    assert meta.to_json() == inc.meta
    assert_ranges_valid(meta)
    for utf8 in (True, False):
        env = envelope_structure(meta, utf8)
        assert len(env) == 10
        values = flatten(env) + flatten(bodystructure(meta, True, utf8))
        values += flatten(bodystructure(meta, False, utf8))
        for v in values:
            assert v is None or isinstance(v, int | str | bytes)
            if isinstance(v, str | bytes):
                assert len(v) == 0 or min(v.encode() if isinstance(v, str) else v) > 0  # no NUL
            if not utf8:
                assert not isinstance(v, bytes) and (not isinstance(v, str) or v.isascii())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_address_list_never_raises(value: str) -> None:
    for a in parse_address_list(value):
        assert a.mailbox is not None or a.host is None


def test_bare_angle_address_regression() -> None:
    """``From: <a@b>`` (no display name) once crashed the fast path (smtp-source sends it)."""
    from correo.mail.envelope import parse_address_list

    (a,) = parse_address_list("<alice@example.test>")
    assert (a.name, a.mailbox, a.host) == (None, "alice", "example.test")
    (b, c) = parse_address_list('<x@y>, "" <z@w>')
    assert (b.mailbox, c.mailbox, c.name) == ("x", "z", None)
    meta = parse(b"From: <alice@example.test>\r\nSubject: s\r\n\r\nbody\r\n")
    assert meta.envelope.from_[0].mailbox == "alice"
