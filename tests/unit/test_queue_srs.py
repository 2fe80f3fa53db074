"""SRS rewriting of forwarded senders and Delivered-To loop detection."""

from __future__ import annotations

import pytest

from correo.queue import srs

SECRET = "s3cret"
NOW = 1_780_000_000.0


def test_srs0_round_trip() -> None:
    fwd = srs.forward("Alice@Example.org", "fwd.test", SECRET, NOW)
    assert fwd.startswith("SRS0=") and fwd.endswith("=Example.org=Alice@fwd.test")
    assert srs.reverse(fwd, SECRET, NOW + 86400) == "Alice@Example.org"


def test_srs_keeps_null_and_own_senders() -> None:
    assert srs.forward("", "fwd.test", SECRET, NOW) == ""
    assert srs.forward("bob@FWD.test", "fwd.test", SECRET, NOW) == "bob@FWD.test"


def test_forged_or_stale_addresses_are_refused() -> None:
    fwd = srs.forward("alice@example.org", "fwd.test", SECRET, NOW)
    with pytest.raises(srs.SrsError, match="hash"):
        srs.reverse(fwd, "other-secret", NOW)
    forged = fwd.replace("alice@", "mallory@")
    with pytest.raises(srs.SrsError):
        srs.reverse(forged, SECRET, NOW)
    with pytest.raises(srs.SrsError, match="days old"):
        srs.reverse(fwd, SECRET, NOW + 30 * 86400)
    with pytest.raises(srs.SrsError):
        srs.reverse("plain@fwd.test", SECRET, NOW)


def test_second_forwarder_makes_srs1_that_unwinds_to_the_first() -> None:
    first = srs.forward("alice@example.org", "first.test", "first-secret", NOW)
    second = srs.forward(first, "second.test", SECRET, NOW)
    assert second.startswith("SRS1=") and "=first.test==" in second
    assert srs.reverse(second, SECRET, NOW) == first
    assert srs.reverse(first, "first-secret", NOW) == "alice@example.org"
    third = srs.forward(second, "third.test", "third-secret", NOW)
    assert "=first.test==" in third
    assert srs.reverse(third, "third-secret", NOW) == first


def test_no_secret_is_an_error() -> None:
    with pytest.raises(srs.SrsError, match="srs_secret"):
        srs.forward("a@b.test", "fwd.test", "", NOW)


def test_delivered_to_loop() -> None:
    msg = (
        b"Delivered-To: List@Fwd.test\r\nDelivered-To: <other@x.test>\r\nSubject: s\r\n\r\n"
        b"Delivered-To: body@not.header\r\n"
    )
    assert srs.delivered_to(msg) == {"list@fwd.test", "other@x.test"}
    assert srs.is_loop(msg, "list@fwd.test")
    assert not srs.is_loop(msg, "body@not.header")
    assert srs.forward_prefix("list@fwd.test") == b"Delivered-To: list@fwd.test\r\n"
