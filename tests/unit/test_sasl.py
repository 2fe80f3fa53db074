"""Sans-I/O SASL PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login) exchanges."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from correo.auth.sasl import (
    DEFAULT_MAX_RESPONSE,
    Challenge,
    Credentials,
    SaslError,
    SaslErrorKind,
    SaslExchange,
    SaslStateError,
    decode_base64,
    encode_base64,
)


def b64(data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data)


def kind(outcome: object) -> SaslErrorKind:
    assert isinstance(outcome, SaslError), outcome
    return outcome.kind


# ------------------------------------------------------------------ PLAIN


def test_plain_with_initial_response() -> None:
    ex = SaslExchange()
    out = ex.start("PLAIN", b64("\0tim@example.test\0tanstaaftanstaaf"))
    assert out == Credentials("tim@example.test", "tanstaaftanstaaf", "")
    assert ex.done and ex.mechanism == "PLAIN"


def test_plain_rfc4616_example() -> None:
    # RFC 4616 §4: authzid "Ursel", authcid "Kurt" is a proxy request: refused here.
    out = SaslExchange().start("PLAIN", b64("Ursel\0Kurt\0xipj3plmq"))
    assert kind(out) is SaslErrorKind.AUTHZ_DENIED


def test_plain_authzid_equal_to_authcid_is_accepted() -> None:
    out = SaslExchange().start("PLAIN", b64("Tim@Example.test\0tim@example.test\0pw"))
    assert out == Credentials("tim@example.test", "pw", "Tim@Example.test")


def test_plain_without_initial_response_gets_empty_challenge() -> None:
    ex = SaslExchange()
    assert ex.start("plain", None) == Challenge(b"")
    assert not ex.done
    out = ex.step(b64("\0tim@example.test\0pw") + b"\r\n")
    assert out == Credentials("tim@example.test", "pw", "")


def test_plain_utf8() -> None:
    out = SaslExchange().start("PLAIN", b64("\0jösé@exämple.test\0pässwörd☃"))
    assert out == Credentials("jösé@exämple.test", "pässwörd☃", "")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\0",
        b"\0\0",
        b"\0user\0",  # empty password
        b"\0\0password",  # empty authcid
        b"user\0password",  # one NUL
        b"\0user\0pass\0extra",  # three NULs
        b"\0us\xffer\0pw",  # bad UTF-8 in authcid
        b"\0user\0p\xc3",  # truncated UTF-8 in password
        b"\xff\0user\0pw",  # bad UTF-8 in authzid
    ],
)
def test_plain_invalid_messages(message: bytes) -> None:
    assert kind(SaslExchange().start("PLAIN", b64(message))) is SaslErrorKind.INVALID


def test_equals_is_an_empty_initial_response() -> None:
    # RFC 4954 §4: "=" means present but empty; an empty PLAIN message is invalid...
    assert kind(SaslExchange().start("PLAIN", b"=")) is SaslErrorKind.INVALID
    # ...and for LOGIN it is an empty username, equally invalid.
    assert kind(SaslExchange().start("LOGIN", b"=")) is SaslErrorKind.INVALID


def test_equals_in_a_continuation_is_malformed() -> None:
    ex = SaslExchange()
    ex.start("PLAIN")
    assert kind(ex.step(b"=")) is SaslErrorKind.MALFORMED


# ------------------------------------------------------------------ LOGIN


def test_login_exchange() -> None:
    # draft-murchison-sasl-login §2.3, with the "Username:"/"Password:" prompts of §2.2
    ex = SaslExchange()
    first = ex.start("LOGIN", None)
    assert first == Challenge(b"VXNlcm5hbWU6")
    assert base64.b64decode(first.data) == b"Username:"
    second = ex.step(b"dGlt\r\n")
    assert second == Challenge(b"UGFzc3dvcmQ6")
    assert base64.b64decode(second.data) == b"Password:"
    assert ex.step(b"dGFuc3RhYWZ0YW5zdGFhZg==") == Credentials("tim", "tanstaaftanstaaf", "")
    assert ex.done


def test_login_with_initial_response_username() -> None:
    ex = SaslExchange()
    assert ex.start("LOGIN", b64("tim@example.test")) == Challenge(b"UGFzc3dvcmQ6")
    assert ex.step(b64("pw")) == Credentials("tim@example.test", "pw", "")


@pytest.mark.parametrize("password", [b"", b"a\0b", b"a\rb", b"a\nb", b"\xff"])
def test_login_invalid_password(password: bytes) -> None:
    ex = SaslExchange()
    ex.start("LOGIN")
    ex.step(b64("tim"))
    assert kind(ex.step(b64(password))) is SaslErrorKind.INVALID


@pytest.mark.parametrize("username", [b"", b"a\0b", b"\xff"])
def test_login_invalid_username(username: bytes) -> None:
    ex = SaslExchange()
    ex.start("LOGIN")
    assert kind(ex.step(b64(username))) is SaslErrorKind.INVALID
    assert ex.done


# ------------------------------------------------------------------ shared rules


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("line", [b"*", b"*\r\n", b"*\n"])
def test_cancel(mechanism: str, line: bytes) -> None:
    # RFC 4954 §4 (501), RFC 3501 §6.2.2 (BAD), RFC 5034 §4 (-ERR)
    ex = SaslExchange()
    ex.start(mechanism)
    assert kind(ex.step(line)) is SaslErrorKind.CANCELLED
    assert ex.done


def test_cancel_at_login_password_prompt() -> None:
    ex = SaslExchange()
    ex.start("LOGIN", b64("tim"))
    assert kind(ex.step(b"*")) is SaslErrorKind.CANCELLED


def test_star_as_initial_response_is_malformed() -> None:
    assert kind(SaslExchange().start("PLAIN", b"*")) is SaslErrorKind.MALFORMED


@pytest.mark.parametrize(
    "line",
    [
        b"=AAA",  # RFC 4954 §4 examples
        b"AAA=BBB",
        b"AAA",  # bad length
        b"A===",
        b"dGlt dGlt",
        b"dGlt\x00",
        b"\xff\xfe",
        b"dG-t",  # URL-safe alphabet is not base64
        b"dGl_",
        b" dGlt",
        b"dGlt=",
        b"dGltdGltdA==dGlt",
    ],
)
def test_malformed_base64(line: bytes) -> None:
    ex = SaslExchange()
    ex.start("PLAIN")
    err = ex.step(line)
    assert kind(err) is SaslErrorKind.MALFORMED
    assert isinstance(err, SaslError) and "base64" in err.message
    assert kind(SaslExchange().start("PLAIN", line)) is SaslErrorKind.MALFORMED


def test_unknown_mechanism() -> None:
    ex = SaslExchange()
    assert kind(ex.start("CRAM-MD5", None)) is SaslErrorKind.UNKNOWN_MECHANISM
    assert ex.done and ex.mechanism is None
    assert kind(SaslExchange().start("", None)) is SaslErrorKind.UNKNOWN_MECHANISM


def test_only_offered_mechanisms() -> None:
    assert kind(SaslExchange(["PLAIN"]).start("LOGIN")) is SaslErrorKind.UNKNOWN_MECHANISM
    assert kind(SaslExchange([]).start("PLAIN")) is SaslErrorKind.UNKNOWN_MECHANISM
    # a mechanism we do not implement cannot be offered by accident
    assert SaslExchange(["PLAIN", "XOAUTH2"]).mechanisms == {"PLAIN"}


def test_max_response_length() -> None:
    # RFC 4954 §4: 12288 octets; longer → 500 5.5.6
    pw = "x" * 9000
    fits = b64("\0tim\0" + pw)
    assert len(fits) <= DEFAULT_MAX_RESPONSE
    assert isinstance(SaslExchange().start("PLAIN", fits), Credentials)
    exact = b"A" * DEFAULT_MAX_RESPONSE
    ex = SaslExchange()
    ex.start("PLAIN")
    assert kind(ex.step(exact)) is SaslErrorKind.INVALID  # decoded, then not PLAIN
    too_long = b"A" * (DEFAULT_MAX_RESPONSE + 4)
    ex = SaslExchange()
    ex.start("PLAIN")
    assert kind(ex.step(too_long)) is SaslErrorKind.TOO_LONG
    assert kind(SaslExchange().start("PLAIN", too_long)) is SaslErrorKind.TOO_LONG


def test_configurable_max_response() -> None:
    ex = SaslExchange(max_response=8)
    ex.start("LOGIN")
    assert kind(ex.step(b"dGltdGltdA==")) is SaslErrorKind.TOO_LONG


def test_state_errors_are_ours() -> None:
    ex = SaslExchange()
    with pytest.raises(SaslStateError):
        ex.step(b"dGlt")
    ex.start("PLAIN", b64("\0a\0b"))
    with pytest.raises(SaslStateError):
        ex.step(b"dGlt")
    with pytest.raises(SaslStateError):
        ex.start("PLAIN")


def test_credentials_repr_hides_password() -> None:
    c = Credentials("tim@example.test", "hunter2-secret", "")
    assert "hunter2-secret" not in repr(c)
    assert "hunter2-secret" not in str(c)
    assert "tim@example.test" in repr(c)


def test_error_messages_never_echo_client_data() -> None:
    secret = "topsecret-pw"
    ex = SaslExchange()
    ex.start("LOGIN", b64("tim"))
    err = ex.step(b64(secret + "\n"))
    assert isinstance(err, SaslError) and secret not in repr(err)


def test_base64_helpers() -> None:
    assert encode_base64(b"Username:") == b"VXNlcm5hbWU6"
    assert decode_base64(b"") == b""
    assert isinstance(decode_base64(b"=="), SaslError)


# ------------------------------------------------------------------ properties

_text = st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]))


@given(st.text(max_size=20), st.one_of(st.none(), st.binary(max_size=200)))
def test_start_never_raises(mechanism: str, initial: bytes | None) -> None:
    out = SaslExchange().start(mechanism, initial)
    assert isinstance(out, Challenge | Credentials | SaslError)


@given(
    st.sampled_from(["PLAIN", "LOGIN"]),
    st.lists(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(b64)), max_size=4),
)
def test_steps_never_raise(mechanism: str, lines: list[bytes]) -> None:
    ex = SaslExchange()
    out = ex.start(mechanism, None)
    for line in lines:
        if ex.done:
            break
        out = ex.step(line)
        assert isinstance(out, Challenge | Credentials | SaslError)
        assert ex.done == (not isinstance(out, Challenge))


@given(_text.filter(bool), _text.filter(bool))
def test_plain_round_trip(username: str, password: str) -> None:
    message = b"\0" + username.encode() + b"\0" + password.encode()
    assert SaslExchange().start("PLAIN", b64(message)) == Credentials(username, password, "")


@given(
    _text.filter(lambda s: bool(s) and "\r" not in s and "\n" not in s),
    _text.filter(lambda s: bool(s) and "\r" not in s and "\n" not in s),
)
def test_login_round_trip(username: str, password: str) -> None:
    ex = SaslExchange()
    ex.start("LOGIN")
    ex.step(b64(username))
    assert ex.step(b64(password)) == Credentials(username, password, "")


@given(st.binary(max_size=100))
def test_decode_matches_stdlib_for_valid_input(data: bytes) -> None:
    assert decode_base64(base64.b64encode(data)) == data
