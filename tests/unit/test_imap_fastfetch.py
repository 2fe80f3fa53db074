"""The fast paths of FETCH and SEARCH give exactly the general paths' answers:
ENVELOPE rendered from the stored JSON (RFC 3501 §7.4.2), the envelope cache, and the
raw-octet "quick miss" of SEARCH BODY/TEXT (RFC 3501 §6.4.4)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correo.imap import encoder
from correo.imap.fastfetch import ENTRY_OVERHEAD, EnvelopeCache, envelope_bytes
from correo.imap.textsearch import quick_miss, scan_message, segments
from correo.mail.envelope import render_envelope
from correo.mail.message import MessageMeta, envelope_json, parse, prepare

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.eml"))


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


SAMPLES = [
    crlf("From: a@b.c\nSubject: plain\n\nbody\n"),
    crlf('From: "Doe, John" <j@x.y>\nTo: undisclosed-recipients:;\nSubject: a "q" \\ b\n\nx\n'),
    crlf("From: =?utf-8?q?J=C3=B6rg?= <j@x.y>\nSubject: =?utf-8?b?w6l0w6k=?=\n\nx\n"),
    crlf("From: Jörg <jörg@exämple.de>\nSubject: Grüße\nCc: a@b.c, Group: x@y.z, w@v.u;\n\nx\n"),
    crlf("Subject: " + "long " * 400 + "\nFrom: root\n\nx\n"),
    crlf("From: <>\nTo: ,\nSubject:\nMessage-ID: <a@b>\nIn-Reply-To: <c@d>\n\nx\n"),
    crlf("Subject: ctl \x7f del\nFrom: A (comment) <a@b.c>\n\nx\n"),
    b"",
]


def general(meta: bytes, utf8: bool) -> bytes:
    """What ``fetch.py`` sends for ENVELOPE."""
    out: list[encoder.Piece] = []
    encoder.render(render_envelope(MessageMeta.from_json(meta).envelope, utf8), out, utf8=utf8)
    return b"".join(p for p in out if isinstance(p, bytes))


@pytest.mark.parametrize("utf8", [False, True])
@pytest.mark.parametrize("data", SAMPLES + [p.read_bytes() for p in CORPUS])
def test_envelope_bytes_equals_general_path(data: bytes, utf8: bool) -> None:
    meta = prepare(data).meta
    assert envelope_bytes(meta, utf8) == general(meta, utf8)


@settings(max_examples=300, deadline=None)
@given(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=60),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=60),
    st.booleans(),
)
def test_envelope_bytes_equals_general_path_fuzzed(subject: str, name: str, utf8: bool) -> None:
    clean = subject.replace("\r", " ").replace("\n", " ")
    who = name.replace("\r", " ").replace("\n", " ")
    data = f"Subject: {clean}\r\nFrom: {who} <a@b.c>\r\nTo: x@y.z\r\n\r\nbody\r\n".encode()
    meta = prepare(data).meta
    assert envelope_bytes(meta, utf8) == general(meta, utf8)


def test_envelope_json_is_the_env_member() -> None:
    meta = prepare(crlf('Subject: x, "body":[1]\nFrom: a@b.c\n\nx\n')).meta
    raw = envelope_json(meta)
    assert raw is not None
    assert json.loads(raw) == json.loads(meta)["env"]


def test_envelope_json_refuses_other_layouts() -> None:
    assert envelope_json(b'{"size": 3}') is None
    assert envelope_json(b"not json") is None
    assert envelope_json(b'{"v":2,"env":[],"body":[]}') is None
    assert envelope_bytes(b'{"size": 3}', False) is None


def test_envelope_cache_is_bounded() -> None:
    per_entry = 100 + ENTRY_OVERHEAD
    cache = EnvelopeCache(max_bytes=6 * per_entry + 10)
    for i in range(100):
        cache.put((f"{i:064x}", False), b"x" * 100)
    assert cache.size <= cache.max_bytes and len(cache) == 6
    assert cache.get((f"{99:064x}", False)) == b"x" * 100
    assert cache.get((f"{93:064x}", False)) is None  # the oldest went first
    cache.put((f"{99:064x}", False), b"y")
    assert cache.get((f"{99:064x}", False)) == b"y" and len(cache) == 6


# --------------------------------------------------------------------------- quick miss


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, start: int, end: int) -> bytes:
        return self.data[start:end]

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        yield self.data[start:end]


async def scan(data: bytes, needles: set[str]) -> set[str]:
    body, text = await scan_message(_Reader(data), segments(parse(data).body), needles, needles)
    return body | text


QUICK = crlf(
    "From: a@b.c\nSubject: folded\n line\nContent-Type: text/plain; charset=us-ascii\n\n"
    "Hello World\n"
)


@pytest.mark.parametrize(
    ("data", "needle", "miss"),
    [
        (QUICK, "absent", True),
        (QUICK, "WORLD", False),
        (QUICK, "folded line", False),  # matches across the header fold
        (QUICK, "foldedline", True),  # unfolding keeps the space: no match there
        (QUICK, "d\tl", True),
        (crlf("Subject: x\nContent-Transfer-Encoding: base64\n\nd29yZA==\n"), "word", False),
        (crlf("Subject: =?us-ascii?q?wo=72d?=\n\nx\n"), "word", False),
        (crlf("Subject: x\nContent-Type: text/plain; charset=utf-7\n\n+AHc-ord\n"), "w", False),
        (crlf("Subject: x\nContent-Type: text/plain; charset*=utf-8''x\n\nx\n"), "q", False),
        (crlf("Subject: x\nContent-Type: text/plain; charset=(c) utf-7\n\nx\n"), "q", False),
        (crlf("Subject: x\n\nsm\xf6rg\xe5sbord\n"), "zz", False),  # not ASCII
        (QUICK, "caf\xe9", False),  # needle not ASCII
        (QUICK, "a\r\nb", False),
        (crlf("Subject: x\nContent-Type: text/plain; charset=iso-8859-1\n\nabc\n"), "q", True),
    ],
)
async def test_quick_miss_cases(data: bytes, needle: str, miss: bool) -> None:
    assert quick_miss(data, [needle]) is miss
    if miss:
        assert await scan(data, {needle}) == set()


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
async def test_quick_miss_is_sound_on_the_corpus(path: Path) -> None:
    data = prepare(path.read_bytes()).data
    text = data.decode("ascii", "replace").lower()
    words = {w for w in text.replace("\r\n", " ").split() if w.isalnum()}
    for needle in [*sorted(words)[:40], "zzzq", "alpha beta"]:
        if quick_miss(data, [needle]):
            assert await scan(data, {needle}) == set(), needle


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcAB \n", max_size=80), st.text(alphabet="abAB ", min_size=1, max_size=4))
async def test_quick_miss_is_sound_fuzzed(body: str, needle: str) -> None:
    data = crlf("Subject: s\n x " + body[:10] + "\n\n" + body + "\n")
    if quick_miss(data, [needle]):
        assert await scan(data, {needle}) == set()
