"""MAIL/RCPT paths and parameters (RFC 5321 §4.1.2, RFC 1870, 3461, 4954, 6152, 6531)."""

from __future__ import annotations

import pytest

from correo.smtp import replies
from correo.smtp.commands import (
    Mail,
    Rcpt,
    parse_auth,
    parse_bdat,
    parse_helo,
    parse_mail,
    parse_rcpt,
    xtext_decode,
)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("<alice@Example.TEST>", "alice@example.test"),
        ("<@relay.test,@other.test:alice@example.test>", "alice@example.test"),  # App. C
        ('<"alice"@example.test>', "alice@example.test"),
        ('<"john doe"@example.test>', '"john doe"@example.test'),
        ('<"a\\"b"@example.test>', '"a\\"b"@example.test'),
        ("<user%other.test@example.test>", "user%other.test@example.test"),
        ("<a!b@example.test>", "a!b@example.test"),
        ("<x@[192.0.2.1]>", "x@[192.0.2.1]"),
        ("<first.last+tag@sub.example.test>", "first.last+tag@sub.example.test"),
    ],
)
def test_valid_paths(text: str, address: str) -> None:
    assert parse_rcpt(text, False) == Rcpt(address)


@pytest.mark.parametrize(
    "text",
    [
        "alice@example.test",
        "<alice>",
        "<@example.test>",
        "<a..b@example.test>",
        "<.a@example.test>",
        "<a@-bad.test>",
        "<a@b_c.test>",
        "<a b@example.test>",
        "<" + "x" * 65 + "@example.test>",
        "<a@example.test",
        "<a@example.test>>",
        "<>",
    ],
)
def test_invalid_paths(text: str) -> None:
    reply = parse_rcpt(text, False)
    assert isinstance(reply, replies.Reply) and reply.code == 501, reply


def test_null_postmaster_and_utf8() -> None:
    assert parse_mail("<>", 0) == Mail("")
    assert parse_rcpt("<PostMaster>", False) == Rcpt("postmaster")
    assert parse_rcpt("<>", False) == replies.Reply(501, "5.1.3", ("null path not allowed here",))
    assert parse_rcpt("<jöran@example.test>", False) == replies.R553_SMTPUTF8_REQUIRED
    assert parse_mail("<jöran@example.test>", 0) == replies.R553_SMTPUTF8_REQUIRED
    assert parse_rcpt("<jöran@bücher.test>", True) == Rcpt("jöran@bücher.test")
    assert parse_mail("<jöran@bücher.test> SMTPUTF8", 0) == Mail("jöran@bücher.test", smtputf8=True)
    bad = parse_mail("<a b@x.test>", 0)
    assert isinstance(bad, replies.Reply) and (bad.code, bad.enhanced) == (501, "5.1.7")


def test_mail_parameters() -> None:
    mail = parse_mail(
        " <a@b.test> SIZE=1000 BODY=8bitmime RET=hdrs ENVID=x+2By AUTH=<> SMTPUTF8", 10_000
    )
    assert mail == Mail(
        "a@b.test", size=1000, body="8BITMIME", smtputf8=True, ret="HDRS", envid="x+y", auth="<>"
    )
    assert parse_mail("<a@b.test> SIZE=20000", 10_000) == replies.R552_MESSAGE_TOO_BIG
    assert parse_mail("<a@b.test> BODY=BINARYMIME", 0) == replies.R555_PARAMETER
    assert parse_mail("<a@b.test> FOO=bar", 0) == replies.R555_PARAMETER
    assert parse_mail("<a@b.test> SIZE=1 SIZE=2", 0) == replies.R501_SYNTAX
    assert parse_mail("<a@b.test> ENVID=bad+zz", 0) == replies.R501_SYNTAX
    assert parse_mail("<a@b.test>SIZE=1", 0).code == 501  # type: ignore[union-attr]
    assert parse_mail('<"a>b"@b.test> SIZE=1', 0) == Mail('"a>b"@b.test', size=1)


def test_rcpt_parameters() -> None:
    assert parse_rcpt("<c@d.test> NOTIFY=success,DELAY ORCPT=rfc822;c+40d.test", False) == Rcpt(
        "c@d.test", notify=frozenset({"SUCCESS", "DELAY"}), orcpt="rfc822;c@d.test"
    )
    assert parse_rcpt("<c@d.test> NOTIFY=NEVER,SUCCESS", False) == replies.R501_SYNTAX
    assert parse_rcpt("<c@d.test> ORCPT=c@d.test", False) == replies.R501_SYNTAX
    assert parse_rcpt("<c@d.test> SIZE=1", False) == replies.R555_PARAMETER


def test_xtext_bdat_helo_auth() -> None:
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
    with pytest.raises(ValueError):
        xtext_decode("a+2b")
    assert parse_bdat("100 LAST") == (100, True)
    assert parse_bdat("0") == (0, False)
    assert parse_bdat("-1") is None and parse_bdat("1 FIRST") is None
    assert parse_helo(" [192.0.2.1]", True).domain == "[192.0.2.1]"  # type: ignore[union-attr]
    assert parse_helo("", False) == replies.R501_HELO
    auth = parse_auth("plain dGVzdA==")
    assert not isinstance(auth, replies.Reply)
    assert (auth.mechanism, auth.initial) == ("PLAIN", "dGVzdA==")
    assert parse_auth("PLAIN a b") == replies.R501_SYNTAX
