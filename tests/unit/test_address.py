"""RFC 5321 path parsing (correo.mail.address)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correo.mail.address import (
    MAX_PATH,
    AddressError,
    Path,
    normalize_domain,
    parse_mailbox,
    parse_path,
    parse_path_prefix,
    split_subaddress,
)


@pytest.mark.parametrize(
    ("text", "local", "domain"),
    [
        ("<a@b.example>", "a", "b.example"),
        ("<User.Name@Example.ORG>", "User.Name", "example.org"),  # domain lower-cased only
        ("<a+tag@b>", "a+tag", "b"),
        ("<!#$%&'*+-/=?^_`{|}~@b>", "!#$%&'*+-/=?^_`{|}~", "b"),
        ('<"john doe"@b>', '"john doe"', "b"),
        ('<"plain"@b>', "plain", "b"),  # needless quotes dropped (RFC 5321 §4.1.2)
        ('<"a\\"b"@b>', '"a\\"b"', "b"),
        ('<"a\\x"@b>', "ax", "b"),  # quoted-pair of an ordinary char
        ('<"a@b"@c>', '"a@b"', "c"),
        ('<""@b>', '""', "b"),
        ("<a@[192.0.2.1]>", "a", "[192.0.2.1]"),
        ("<a@[IPv6:2001:DB8::1]>", "a", "[IPv6:2001:db8::1]"),
        ("<a@[ipv6:::1]>", "a", "[IPv6:::1]"),
        ("<a@[x-tag:stuff]>", "a", "[x-tag:stuff]"),
        ("<a@b-c.d1>", "a", "b-c.d1"),
        ("<@r1.example,@r2.example:a@b>", "a", "b"),  # source route ignored
        ("<a@" + "x" * 63 + ".com>", "a", "x" * 63 + ".com"),
    ],
)
def test_good_paths(text: str, local: str, domain: str) -> None:
    path = parse_path(text)
    assert (path.local, path.domain) == (local, domain)
    assert str(path) == f"<{local}@{domain}>"


def test_source_route_kept_for_logging() -> None:
    path = parse_path("<@R1.example,@r2.example:a@b>")
    assert path.route == ("r1.example", "r2.example")
    assert path.address == "a@b"


def test_null_path() -> None:
    path = parse_path("<>")
    assert path.is_null and path.address == "" and str(path) == "<>"
    with pytest.raises(AddressError):
        parse_path("<>", allow_null=False)


def test_postmaster() -> None:
    path = parse_path("<Postmaster>")
    assert path.is_postmaster and path.address == "Postmaster" and path.key() == "postmaster"
    assert parse_path("<POSTMASTER>").is_postmaster
    with pytest.raises(AddressError):
        parse_path("<Postmaster>", allow_postmaster=False)
    with pytest.raises(AddressError):
        parse_path("<@r:Postmaster>")
    full = parse_path("<postmaster@Example.org>")
    assert not full.is_postmaster and full.address == "postmaster@example.org"


def test_key_lowercases_local_part() -> None:
    path = parse_path("<John.Smith@Example.COM>")
    assert path.address == "John.Smith@example.com"
    assert path.key() == "john.smith@example.com"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a@b", "enclosed"),
        ("<a@b", "not closed"),
        ("<a>", "missing @domain"),
        ("<@b>", "invalid source route"),
        ("<a@>", "missing domain"),
        ("<a..b@c>", "invalid local part"),
        ("<.a@c>", "invalid local part"),
        ("<a.@c>", "invalid local part"),
        ("<a b@c>", "invalid local part"),
        ("<a(b)@c>", "invalid local part"),
        ('<"unterminated@c>', "not closed"),
        ('<"a"b@c>', "missing @domain"),
        ("<a@b..c>", "invalid domain"),
        ("<a@-b.c>", "invalid domain"),
        ("<a@b-.c>", "invalid domain"),
        ("<a@b_c.d>", "invalid domain"),
        ("<a@b.>", "invalid domain"),
        ("<a@" + "x" * 64 + ".com>", "invalid domain"),  # label > 63
        ("<a@[300.1.1.1]>", "IPv4"),
        ("<a@[IPv6:zz::1]>", "IPv6"),
        ("<a@[1.2.3.4>", "address literal"),
        ("<a@[:x]>", "address literal"),
        ("<@x:>", "missing @domain"),
        ("<@x a@b>", "source route"),
        ("<x,@y:a@b>", "invalid local part"),
        ("<a@b> junk", "junk after path"),
        ("<a@b>junk", "junk after path"),
        ("<" + "a" * 65 + "@b>", "local part too long"),
        ("<" + "a" * 60 + "@" + ".".join(["x" * 60] * 4) + ">", "path too long"),
    ],
)
def test_bad_paths(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_path(text)
    assert reason in exc.value.reason
    assert exc.value.code in (501, 553)
    assert exc.value.reply().startswith(f"{exc.value.code} 5.")


def test_path_length_limit_counts_brackets() -> None:
    # RFC 5321 §4.5.3.1.3: 256 octets including "<" and ">".
    domain = ".".join(["d" * 63, "d" * 63, "d" * 63, "d" * 57])  # 249 octets
    ok = "<a" * 1 + "bcd@" + domain + ">"
    assert len(ok) == MAX_PATH
    parse_path(ok)
    with pytest.raises(AddressError, match="path too long"):
        parse_path("<abcde@" + domain + ">")


def test_utf8_requires_smtputf8() -> None:
    with pytest.raises(AddressError) as exc:
        parse_path("<jörg@example.de>")
    assert (exc.value.code, exc.value.status) == (553, "5.6.7")
    with pytest.raises(AddressError) as exc:
        parse_path("<a@bücher.example>")
    assert exc.value.code == 553
    path = parse_path("<Jörg@Bücher.Example>", smtputf8=True)
    assert path.local == "Jörg" and path.domain == "bücher.example" and path.is_utf8
    assert parse_path('<"ö ö"@x>', smtputf8=True).local == '"ö ö"'
    assert parse_path("<jörg@example.de>".encode(), smtputf8=True).local == "jörg"
    with pytest.raises(AddressError):
        parse_path(b"<\xff@x>", smtputf8=True)


def test_utf8_local_part_length_in_octets() -> None:
    parse_path("<" + "é" * 32 + "@x>", smtputf8=True)  # 64 octets
    with pytest.raises(AddressError, match="too long"):
        parse_path("<" + "é" * 33 + "@x>", smtputf8=True)


def test_parse_path_prefix_returns_parameters() -> None:
    path, rest = parse_path_prefix("<a@b> SIZE=100 BODY=8BITMIME")
    assert path.address == "a@b" and rest == "SIZE=100 BODY=8BITMIME"
    path, rest = parse_path_prefix('<"x > y"@b> RET=HDRS')
    assert path.local == '"x > y"' and rest == "RET=HDRS"
    path, rest = parse_path_prefix("<> SIZE=1")
    assert path.is_null and rest == "SIZE=1"
    with pytest.raises(AddressError):
        parse_path_prefix("a@b SIZE=1")
    path, rest = parse_path_prefix("a@b SIZE=1", lenient=True)
    assert path.address == "a@b" and rest == "SIZE=1"


def test_relay_hack_detection() -> None:
    assert parse_path("<user%other.example@relay.example>").has_percent_hack
    assert parse_path("<host!user@relay.example>").has_bang_path
    plain = parse_path("<user@relay.example>")
    assert not plain.has_percent_hack and not plain.has_bang_path
    assert parse_path("<a@[192.0.2.1]>").is_domain_literal


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("user+tag@d", ("user@d", "tag")),
        ("user+a+b@d", ("user@d", "a+b")),
        ("user+@d", ("user@d", "")),
        ("user@d", ("user@d", None)),
        ("+tag@d", ("+tag@d", None)),
        ('"a+b"@d', ('"a+b"@d', None)),
        ("user+tag", ("user", "tag")),
    ],
)
def test_split_subaddress(address: str, expected: tuple[str, str | None]) -> None:
    assert split_subaddress(address) == expected


def test_split_subaddress_other_separator() -> None:
    assert split_subaddress("user-tag@d", "-") == ("user@d", "tag")


def test_parse_mailbox_and_domain() -> None:
    assert parse_mailbox("a@B") == Path("a", "b")
    assert normalize_domain("Example.COM") == "example.com"
    with pytest.raises(AddressError):
        normalize_domain("")
    with pytest.raises(AddressError, match="domain too long"):
        normalize_domain(".".join(["x" * 60] * 5))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.booleans())
def test_parse_path_only_raises_address_error(text: str, utf8: bool) -> None:
    for candidate in (text, "<" + text + ">"):
        try:
            path = parse_path(candidate, smtputf8=utf8)
        except AddressError as exc:
            assert exc.code in (501, 553)
            continue
        assert len(str(path).encode()) <= MAX_PATH
        # A parsed path re-parses to itself.
        if not path.is_postmaster:
            assert parse_path(str(path), smtputf8=utf8).address == path.address


@given(
    st.from_regex(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[a-z0-9-]{1,10}){0,2}", fullmatch=True),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6}){1,2}", fullmatch=True),
)
def test_generated_valid_paths_parse(local: str, domain: str) -> None:
    path = parse_path(f"<{local}@{domain}>")
    assert path.address == f"{local}@{domain}"
